"""``ecg-gateway serve``: every stage in one process, stopped cleanly by a signal.

Start-up happens in three phases, so a gateway that cannot run changes nothing:

1. refuse (no model file, admin bound beyond loopback without a token);
2. bind every listener (DICOM, DICOM TLS, admin HTTP) without accepting: a
   port in use ends the program here with one line naming host:port, exit 1,
   before anything is written;
3. :class:`Serve` prepares what the components share (database migrated,
   spool, model loaded and warmed up, recovery) and then starts its
   components in order: HL7 and PACS senders -> retention -> worker -> admin
   web (with DICOMweb STOW-RS) -> DICOM SCP accepting -> watched folder.
   Consumers start before their producers, so nothing is accepted before it
   can be handled.

Stop order (SIGTERM/SIGINT, a crashed component, or a component that could
not start) is the reverse: the watched folder and the SCP stop taking ECGs
first, the web stops, the worker finishes the batches it claimed, then the senders
deliver what it queued and stop.

The refusals of phases 1 and 2 are the command's one-line error on stderr
(nothing has started, a log record's prefix would only hide the line); from
phase 3 on everything goes to the log.

A site scales out by running more ``serve --components worker,hl7`` processes
on further machines against the same PostgreSQL database and shared spool.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.config import AdminConfig, Config
from gateway.logs import setup_logging

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from gateway.process.worker import Worker
    from gateway.receive.scp import ScpServer

log = logging.getLogger("gateway.serve")

COMPONENTS = ("scp", "watch", "worker", "hl7", "pacs", "admin")

#: The order components are named in the start line (the SCP first: the door).
START_LINE_ORDER = ("scp", "watch", "worker", "retention", "hl7", "pacs", "admin")

NO_MODEL_HINT = (
    "no model file: run `ecg-gateway model fetch` "
    "(or `ecg-gateway model demo --out models/demo.hdf5` to try the pipeline with an untrained model)"
)

#: Logged once every component runs.  Listeners are bound (connections wait
#: in the backlog) from the start, so an open port alone does not mean ready:
#: tests and ``validate`` wait for this line.
STARTED_LINE = "gateway started: "

#: Seconds the admin web server may take to start serving on its bound socket.
ADMIN_START_TIMEOUT_S = 30.0

#: Seconds a component may take to stop before serve gives up on it (its
#: thread is a daemon: the process still exits).
STOP_TIMEOUT_S = 60.0

#: Seconds between two status lines in the log.
STATUS_EVERY_S = 60.0


def missing_model_files(cfg: Config) -> list[str]:
    return [f for f in cfg.model.files if not Path(f).is_file()]


def parse_components(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in COMPONENTS]
    if unknown or not parts:
        raise ValueError(f"unknown component(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(COMPONENTS)}")
    return parts


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def admin_url(admin: AdminConfig, port: int | None = None) -> str:
    """The web view's address as a browser on this machine reaches it."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(admin.host, admin.host)
    return f"http://{host_port(host, port or admin.port)}/"


# -- components ---------------------------------------------------------------------------------------------------


class StartError(Exception):
    """A component could not start (the message is the log line's reason)."""


class Component(Protocol):
    """One part of ``serve``, started and stopped by :class:`Serve` in order."""

    #: The name the start line uses.
    name: str

    def start(self) -> None:
        """Start and return once running; raises :class:`StartError`."""

    def stop(self) -> None:
        """Stop and wait (bounded) until stopped; called once, only after :meth:`start` returned."""

    @property
    def crashed(self) -> bool:
        """True when the component died on its own (serve then stops)."""


class _Thread(threading.Thread):
    """A daemon thread that logs (and does not swallow silently) a crash."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.crashed = False

    def run(self) -> None:
        try:
            self._target_fn()
        except Exception:
            self.crashed = True
            log.exception("%s thread crashed", self.name)


class LoopComponent:
    """A loop ``loop(stop)`` run on its own thread until its ``stop`` event is set.

    ``wake`` (optional) interrupts the loop's idle wait, so a stop is
    immediate.  ``thread_name`` names the thread in log records.
    """

    def __init__(
        self,
        name: str,
        loop: Callable[[threading.Event], None],
        *,
        wake: Callable[[], None] | None = None,
        thread_name: str | None = None,
    ) -> None:
        self.name = name
        self._loop = loop
        self._wake = wake
        self._stop = threading.Event()
        self._thread = _Thread(thread_name or name, lambda: self._loop(self._stop))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            self._wake()
        self._thread.join(timeout=STOP_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("%s did not stop within %.0f s", self.name, STOP_TIMEOUT_S)

    @property
    def crashed(self) -> bool:
        return self._thread.crashed


class AdminComponent:
    """The admin web server (uvicorn) on its bound socket; started once it serves."""

    name = "admin"

    def __init__(self, server: Any, sock: socket.socket, where: str) -> None:
        self._server = server  # uvicorn.Server: request deadline + connection limit (admin.app.make_server)
        self._thread = _Thread("admin", lambda: server.run(sockets=[sock]))
        self._where = where

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + ADMIN_START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() >= deadline:
                raise StartError(f"the admin web server did not start on {self._where}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=STOP_TIMEOUT_S)

    @property
    def crashed(self) -> bool:
        return self._thread.crashed


class ScpComponent:
    """The DICOM SCP accepting on the listeners bound at start-up."""

    name = "scp"

    def __init__(
        self,
        cfg: Config,
        session_factory: sessionmaker[Session],
        bound: ScpServer,
        on_stored: Callable[[int], None] | None,
    ) -> None:
        self._cfg = cfg
        self._session_factory = session_factory
        self._bound = bound
        self._on_stored = on_stored
        self.listening = False

    def start(self) -> None:
        from gateway.receive.scp import start_scp

        start_scp(
            self._cfg.dicom, self._cfg.storage, self._session_factory, on_stored=self._on_stored, bound=self._bound
        )
        self.listening = True

    def stop(self) -> None:
        self._bound.shutdown()  # stop accepting, close open associations
        self.listening = False

    @property
    def crashed(self) -> bool:
        return False  # its threads are pynetdicom's; a failed association is logged and refused there


class WatchComponent(LoopComponent):
    """The watched folder (``[ingest] watch_dir``): its folders are made at
    start (a :class:`StartError` when they cannot be), then it is polled on
    its own thread; a file being stored is finished before it stops."""

    def __init__(
        self, cfg: Config, session_factory: sessionmaker[Session], on_stored: Callable[[int], None] | None
    ) -> None:
        from gateway.receive.spool import StoreContext
        from gateway.receive.watch import WatchFolder

        self._folder = WatchFolder(
            cfg.ingest, StoreContext.from_config(cfg.dicom, cfg.storage, session_factory), on_stored
        )
        super().__init__("watch", self._folder.run)

    def start(self) -> None:
        try:
            self._folder.prepare()
        except OSError as exc:
            raise StartError(f"cannot use the watched folder {self._folder.watch_dir}: {exc.strerror or exc}") from None
        super().start()


# -- start-up phases 1 and 2 --------------------------------------------------------------------------------------


def refusal(cfg: Config, components: tuple[str, ...]) -> str | None:
    """Why ``serve`` must not start at all (one line), checked before anything
    is bound or written; None when it may."""
    missing = missing_model_files(cfg) if "worker" in components else []
    if missing:
        return f"{NO_MODEL_HINT} [missing: {', '.join(missing)}]"
    if "admin" in components:
        from gateway.admin.auth import check_admin_bind

        return check_admin_bind(cfg.admin)
    return None


@dataclass
class Listeners:
    """Every listening socket of this process, bound before anything is written."""

    scp: ScpServer | None = None  # bound, accepting once the SCP component starts
    admin: socket.socket | None = None

    def close(self) -> None:
        if self.scp is not None:
            self.scp.shutdown()
            self.scp = None
        if self.admin is not None:
            self.admin.close()
            self.admin = None


def bind_admin(admin: AdminConfig) -> socket.socket:
    """The admin HTTP listening socket (uvicorn serves on it later)."""
    from gateway.receive.scp import ListenError

    family = socket.AF_INET6 if ":" in admin.host else socket.AF_INET
    try:
        return socket.create_server((admin.host, admin.port), family=family, backlog=2048)
    except OSError as exc:
        raise ListenError("admin HTTP", admin.host, admin.port, exc) from None


def bind_listeners(cfg: Config, components: tuple[str, ...]) -> Listeners:
    """Bind the DICOM (and TLS) and admin listeners; raises ``ListenError``
    naming the first that failed, with nothing left bound."""
    listeners = Listeners()
    try:
        if "scp" in components:
            from gateway.receive.scp import bind_scp

            listeners.scp = bind_scp(cfg.dicom)
        if "admin" in components:
            listeners.admin = bind_admin(cfg.admin)
    except BaseException:
        listeners.close()
        raise
    return listeners


def _refuse(message: str, code: int) -> int:
    """A refusal before anything started: the command's one line on stderr."""
    print(message, file=sys.stderr)
    return code


def run(cfg: Config, components: tuple[str, ...] = COMPONENTS, on_started: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code.

    ``on_started`` is called once every component runs (``ecg-gateway demo``
    sends its ECGs from there); it must return quickly.
    """
    problem = refusal(cfg, components)
    if problem:
        return _refuse(problem, 2)
    setup_logging(cfg.logging.level, cfg.logging.format)
    from gateway.receive.scp import ListenError

    try:
        listeners = bind_listeners(cfg, components)
    except ListenError as exc:
        return _refuse(str(exc), 1)
    except OSError as exc:  # TLS certificate or key unusable
        return _refuse(f"cannot start the DICOM TLS listener: {exc}", 1)
    try:
        return Serve(cfg, components, listeners).run(on_started)
    finally:
        listeners.close()


# -- phase 3 ------------------------------------------------------------------------------------------------------


class Serve:
    """The running gateway: what the components share, and the components in start order."""

    def __init__(self, cfg: Config, names: tuple[str, ...], listeners: Listeners) -> None:
        self.cfg = cfg
        self.names = names
        self.listeners = listeners
        #: Set by SIGTERM/SIGINT: stop everything.
        self.stopping = threading.Event()
        self.model_loaded = False
        self.scp: ScpComponent | None = None
        self.session_factory: sessionmaker[Session] | None = None

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """Prepare, start the components in order, wait for a signal or a
        crash, stop them in reverse; returns the exit code."""
        from gateway.store.db import make_engine, make_sessionmaker, upgrade

        cfg = self.cfg
        upgrade(cfg.storage.database_url, spool_dir=cfg.storage.spool_dir)
        engine = make_engine(cfg.storage.database_url)
        try:
            self.session_factory = make_sessionmaker(engine)
            Path(cfg.storage.spool_dir).mkdir(parents=True, exist_ok=True)
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            try:
                components = self.components(self.session_factory)
            except StartError as exc:
                log.error("%s", exc)
                return 2
            return self._run_components(components, on_started)
        finally:
            engine.dispose()

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def health(self) -> dict[str, bool | str]:
        """What /healthz reports that only serve can see."""
        here = "not in this process"
        return {
            "scp_listening": self.scp.listening if self.scp is not None else here,
            "model_loaded": self.model_loaded if "worker" in self.names else here,
        }

    def components(self, session_factory: sessionmaker[Session]) -> list[Component]:
        """Load the model and recover (with the worker), then the components
        in start order; raises :class:`StartError` when the model cannot load."""
        cfg, names = self.cfg, self.names
        hl7_wake = threading.Event()
        out: list[Component] = []
        if "hl7" in names and cfg.hl7.enabled:
            from gateway.deliver.sender import run_sender

            out.append(
                LoopComponent(
                    "hl7",
                    lambda stop: run_sender(session_factory, cfg.hl7, stop, hl7_wake),
                    wake=hl7_wake.set,
                    thread_name="hl7-sender",
                )
            )
        elif "hl7" in names:
            log.info("HL7 sender not started: [hl7] enabled = false")
        if "pacs" in names and cfg.pacs.enabled:
            from gateway.deliver.pacs import run_pacs_sender

            out.append(
                LoopComponent(
                    "pacs", lambda stop: run_pacs_sender(session_factory, cfg, stop), thread_name="pacs-sender"
                )
            )
        worker = None
        if "worker" in names:
            worker = self._worker(session_factory, on_outbox=hl7_wake.set)
            if cfg.storage.retention_days:  # the processes that read the spool also prune it, daily
                from gateway.store.retention import run_daily

                out.append(
                    LoopComponent(
                        "retention",
                        lambda stop: run_daily(
                            session_factory, cfg.storage.spool_dir, cfg.storage.retention_days, stop
                        ),
                    )
                )
            out.append(LoopComponent("worker", worker.run, wake=worker.wake))
        if self.listeners.admin is not None:
            from gateway.admin.app import create_app, make_server

            server = make_server(
                create_app(cfg, session_factory, self.health, on_stored=worker.wake if worker is not None else None),
                cfg,
            )
            out.append(AdminComponent(server, self.listeners.admin, host_port(cfg.admin.host, cfg.admin.port)))
        if self.listeners.scp is not None:
            self.scp = ScpComponent(
                cfg, session_factory, self.listeners.scp, on_stored=worker.wake if worker is not None else None
            )
            out.append(self.scp)
        if "watch" in names and cfg.ingest.watch_dir:
            out.append(WatchComponent(cfg, session_factory, worker.wake if worker is not None else None))
        return out

    def _worker(self, session_factory: sessionmaker[Session], on_outbox: Callable[[], None]) -> Worker:
        """The model loaded, crashed work recovered, a warmed-up worker."""
        from gateway.logs import import_tensorflow_quietly

        import_tensorflow_quietly()
        from gateway.infer.runner import load_ensemble
        from gateway.process.recovery import recover_on_start
        from gateway.process.worker import Worker

        cfg = self.cfg
        try:
            ensemble = load_ensemble(
                cfg.model.files, threads=cfg.model.threads, batch_size=cfg.model.batch_size, warm_up=cfg.model.warm_up
            )
        except Exception as exc:  # a clear line, not a traceback: wrong file, wrong shape
            raise StartError(f"cannot load model: {exc}") from None
        self.model_loaded = True
        if ensemble.demo:
            log.warning("UNTRAINED DEMO MODEL in use: results are meaningless; HL7 goes out with MSH-11 = D")
        recover_on_start(cfg, session_factory)
        worker = Worker(cfg, session_factory, ensemble, on_outbox=on_outbox)
        worker.warm_up()
        return worker

    def _run_components(self, components: list[Component], on_started: Callable[[], None] | None) -> int:
        started: list[Component] = []
        failed = False
        try:
            for component in components:
                if self.stopping.is_set():
                    break
                try:
                    component.start()
                except StartError as exc:
                    log.error("%s; stopping", exc)
                    failed = True
                    break
                started.append(component)
            if not self.stopping.is_set() and not failed:
                names = sorted((c.name for c in started), key=START_LINE_ORDER.index)
                log.info("%s%s", STARTED_LINE, ", ".join(names))
                if "admin" in names:
                    url = admin_url(self.cfg.admin)
                    log.info("admin web view: %s (API %sapi/, health %shealthz)", url, url, url)
                if on_started is not None:
                    on_started()
                self._wait(started)
        finally:
            for component in reversed(started):
                component.stop()
        crashed = any(c.crashed for c in started)
        log.info("gateway stopped%s", " after a component crashed" if crashed else "")
        return 1 if crashed or failed else 0

    def _wait(self, running: list[Component]) -> None:
        """Until a signal (or a crashed component) sets ``stopping``; a status line a minute."""
        last_summary = time.monotonic()
        while not self.stopping.wait(1.0):
            if any(c.crashed for c in running):
                log.error("a component crashed; stopping")
                self.stopping.set()
                break
            if time.monotonic() - last_summary >= STATUS_EVERY_S and self.session_factory is not None:
                last_summary = time.monotonic()
                try:
                    log.info("status: %s", _status_summary(self.session_factory))
                except Exception as exc:
                    log.warning("status summary unavailable: %s", exc)


def _status_summary(session_factory: sessionmaker[Session]) -> str:
    from sqlalchemy import func, select

    from gateway.store.models import EcgInstance, Hl7Message

    with session_factory() as s:
        ecg = dict(s.execute(select(EcgInstance.status, func.count()).group_by(EcgInstance.status)).all())
        hl7 = dict(s.execute(select(Hl7Message.status, func.count()).group_by(Hl7Message.status)).all())

    def fmt(counts: dict[Any, Any]) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"

    return f"ECGs: {fmt(ecg)}; HL7: {fmt(hl7)}"
