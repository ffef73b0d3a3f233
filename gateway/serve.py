"""``ecg-gateway serve``: every stage in one process, stopped cleanly by a signal.

Start-up happens in three phases, so a gateway that cannot run changes nothing:

1. refuse (no model file, admin bound beyond loopback without a token);
2. bind every listener (DICOM, DICOM TLS, admin HTTP) without accepting: a
   port in use ends the program here with one line naming host:port, exit 1,
   before anything is written;
3. database (migrated) -> model -> recovery -> worker -> HL7 and PACS senders -> admin
   web -> DICOM SCP accepting.  This follows the data's way backwards, so
   nothing is accepted before it can be handled.

Stop order is the reverse: the SCP stops accepting first, the worker finishes
its batch, then the sender and the web stop.

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
from typing import Any

from gateway.config import AdminConfig, Config
from gateway.logs import setup_logging

log = logging.getLogger("gateway.serve")

COMPONENTS = ("scp", "worker", "hl7", "pacs", "admin")

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


def _status_summary(session_factory: Any) -> str:
    from sqlalchemy import func, select

    from gateway.store.models import EcgInstance, Hl7Message

    with session_factory() as s:
        ecg = dict(s.execute(select(EcgInstance.status, func.count()).group_by(EcgInstance.status)).all())
        hl7 = dict(s.execute(select(Hl7Message.status, func.count()).group_by(Hl7Message.status)).all())
    fmt = lambda d: " ".join(f"{k}={v}" for k, v in sorted(d.items())) or "none"  # noqa: E731
    return f"ECGs: {fmt(ecg)}; HL7: {fmt(hl7)}"


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

    scp: Any = None  # gateway.receive.scp.ScpServer: bound, accepting once started
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


def run(cfg: Config, components: tuple[str, ...] = COMPONENTS,
        on_started: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code.

    ``on_started`` is called once every component runs (``ecg-gateway demo``
    sends its ECGs from there); it must return quickly.
    """
    problem = refusal(cfg, components)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level, cfg.logging.format)
    from gateway.receive.scp import ListenError

    try:
        listeners = bind_listeners(cfg, components)
    except ListenError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:  # TLS certificate or key unusable
        print(f"cannot start the DICOM TLS listener: {exc}", file=sys.stderr)
        return 1
    try:
        return _run_bound(cfg, components, listeners, on_started)
    finally:
        listeners.close()


def _run_bound(cfg: Config, components: tuple[str, ...], listeners: Listeners,
               on_started: Callable[[], None] | None) -> int:
    from gateway.store.db import make_engine, make_sessionmaker, upgrade

    needs_model = "worker" in components
    upgrade(cfg.storage.database_url, spool_dir=cfg.storage.spool_dir)
    engine = make_engine(cfg.storage.database_url)
    session_factory = make_sessionmaker(engine)
    Path(cfg.storage.spool_dir).mkdir(parents=True, exist_ok=True)

    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    state: dict[str, Any] = {"model_loaded": False, "scp_listening": False}
    threads: list[_Thread] = []
    started: list[str] = []
    hl7_wake = threading.Event()
    worker = None
    uvicorn_server = None
    try:
        if needs_model:
            from gateway.logs import import_tensorflow_quietly

            import_tensorflow_quietly()
            from gateway.infer.runner import load_ensemble
            from gateway.process.recovery import recover_on_start
            from gateway.process.worker import Worker

            try:
                ensemble = load_ensemble(cfg.model.files, threads=cfg.model.threads, batch_size=cfg.model.batch_size)
            except Exception as exc:  # a clear line, not a traceback: wrong file, wrong shape
                print(f"cannot load model: {exc}", file=sys.stderr)
                return 2
            state["model_loaded"] = True
            state["model"] = ensemble.identity
            if ensemble.demo:
                log.warning("UNTRAINED DEMO MODEL in use: results are meaningless; HL7 goes out with MSH-11 = D")
            recover_on_start(cfg, session_factory)
            worker = Worker(cfg, session_factory, ensemble, on_outbox=hl7_wake.set)
            worker.warm_up()
            threads.append(_Thread("worker", lambda: worker.run(stop)))
            if cfg.storage.retention_days:  # the processes that read the spool also prune it, daily
                from gateway.store.retention import run_daily

                threads.append(_Thread("retention", lambda: run_daily(
                    session_factory, cfg.storage.spool_dir, cfg.storage.retention_days, stop)))

        if "hl7" in components and cfg.hl7.enabled:
            from gateway.deliver.sender import run_sender

            threads.append(_Thread("hl7-sender", lambda: run_sender(session_factory, cfg.hl7, stop, hl7_wake)))
        elif "hl7" in components:
            log.info("HL7 sender not started: [hl7] enabled = false")
        if "pacs" in components and cfg.pacs.enabled:
            from gateway.deliver.pacs import run_pacs_sender

            threads.append(_Thread("pacs-sender", lambda: run_pacs_sender(session_factory, cfg, stop)))

        if listeners.admin is not None:
            from gateway.admin.app import create_app, make_server

            def health() -> dict[str, Any]:
                return {"scp_listening": state["scp_listening"] if "scp" in components else "not in this process",
                        "model_loaded": state["model_loaded"] if needs_model else "not in this process"}

            app = create_app(cfg, session_factory, health)
            uvicorn_server = make_server(app, cfg)  # request deadline + connection limit
            admin_socket = listeners.admin
            threads.append(_Thread("admin", lambda: uvicorn_server.run(sockets=[admin_socket])))

        for t in threads:
            t.start()
            started.append({"hl7-sender": "hl7", "pacs-sender": "pacs"}.get(t.name, t.name))
        if uvicorn_server is not None and not _wait_admin_started(uvicorn_server, threads[-1]):
            log.error("the admin web server did not start on %s; stopping", host_port(cfg.admin.host, cfg.admin.port))
            stop.set()
            started.remove("admin")

        if listeners.scp is not None and not stop.is_set():
            from gateway.receive.scp import start_scp

            start_scp(cfg.dicom, cfg.storage, session_factory,
                      on_stored=worker.wake if worker is not None else None, bound=listeners.scp)
            state["scp_listening"] = True
            started.insert(0, "scp")

        if not stop.is_set():
            log.info("%s%s", STARTED_LINE, ", ".join(started))
            if "admin" in started:
                log.info("admin web view: %s (API %sapi/, health %shealthz)", admin_url(cfg.admin),
                         admin_url(cfg.admin), admin_url(cfg.admin))
            if on_started is not None:
                on_started()
        _wait(stop, threads, session_factory)
    finally:
        if listeners.scp is not None:
            listeners.scp.shutdown()
            listeners.scp = None
            state["scp_listening"] = False
        if uvicorn_server is not None:
            uvicorn_server.should_exit = True
        stop.set()
        hl7_wake.set()
        if worker is not None:
            worker.wake()
        for t in threads:
            if t.is_alive():
                t.join(timeout=60)
        engine.dispose()
    crashed = any(t.crashed for t in threads)
    log.info("gateway stopped%s", " after a component crashed" if crashed else "")
    return 1 if crashed else 0


def _wait_admin_started(server: Any, thread: _Thread) -> bool:
    """True once uvicorn serves on its socket; False if it died or timed out."""
    deadline = time.monotonic() + ADMIN_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.started:
            return True
        if not thread.is_alive():
            return False
        time.sleep(0.02)
    return False


def _wait(stop: threading.Event, threads: list[_Thread], session_factory: Any) -> None:
    """Until a signal (or a crashed component) sets ``stop``; a status line a minute."""
    last_summary = time.monotonic()
    while not stop.wait(1.0):
        if any(t.crashed for t in threads):
            log.error("a component crashed; stopping")
            stop.set()
            break
        if time.monotonic() - last_summary >= 60:
            last_summary = time.monotonic()
            try:
                log.info("status: %s", _status_summary(session_factory))
            except Exception as exc:
                log.warning("status summary unavailable: %s", exc)
