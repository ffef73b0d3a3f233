"""``ecg-gateway serve``: every stage in one process, stopped cleanly by a signal.

Start order follows the data's way backwards, so nothing is accepted before
it can be handled: database (migrated) -> model -> worker -> HL7 sender ->
admin web -> DICOM SCP.  Stop order is the reverse: the SCP stops accepting
first, the worker finishes its batch, then the sender and the web stop.

A site scales out by running more ``serve --components worker,hl7`` processes
on further machines against the same PostgreSQL database and shared spool.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.logs import setup_logging

log = logging.getLogger("gateway.serve")

COMPONENTS = ("scp", "worker", "hl7", "admin")

NO_MODEL_HINT = (
    "no model file: run `ecg-gateway model fetch` "
    "(or `ecg-gateway model demo --out models/demo.hdf5` to try the pipeline with an untrained model)"
)


def missing_model_files(cfg: Config) -> list[str]:
    return [f for f in cfg.model.files if not Path(f).is_file()]


def parse_components(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in COMPONENTS]
    if unknown or not parts:
        raise ValueError(f"unknown component(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(COMPONENTS)}")
    return parts


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


def run(cfg: Config, components: tuple[str, ...] = COMPONENTS) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    needs_model = "worker" in components
    missing = missing_model_files(cfg) if needs_model else []
    if missing:
        print(f"{NO_MODEL_HINT} [missing: {', '.join(missing)}]", file=sys.stderr)
        return 2
    if "admin" in components:
        from gateway.admin.api import check_admin_bind

        problem = check_admin_bind(cfg.admin)
        if problem:
            print(problem, file=sys.stderr)
            return 2
    setup_logging(cfg.logging.level)
    from gateway.store.db import make_engine, make_sessionmaker, upgrade

    upgrade(cfg.storage.database_url)
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
    hl7_wake = threading.Event()
    worker = None

    if needs_model:
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

    uvicorn_server = None
    if "admin" in components:
        from gateway.admin.api import create_app, make_server

        def health() -> dict[str, Any]:
            return {"scp_listening": state["scp_listening"] if "scp" in components else "not in this process",
                    "model_loaded": state["model_loaded"] if needs_model else "not in this process"}

        app = create_app(cfg, session_factory, health)
        uvicorn_server = make_server(app, cfg)  # request deadline + connection limit
        threads.append(_Thread("admin", uvicorn_server.run))

    for t in threads:
        t.start()

    scp = None
    if "scp" in components:
        from gateway.receive.scp import start_scp

        try:
            scp = start_scp(cfg.dicom, cfg.storage, session_factory,
                            on_stored=worker.wake if worker is not None else None)
        except OSError as exc:
            log.error("cannot start the DICOM SCP: %s", exc)
            stop.set()
        else:
            state["scp_listening"] = True

    if not stop.is_set():
        log.info("gateway started: %s", ", ".join(components))
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

    if scp is not None:
        scp.shutdown()
        state["scp_listening"] = False
    if uvicorn_server is not None:
        uvicorn_server.should_exit = True
    hl7_wake.set()
    if worker is not None:
        worker.wake()
    for t in threads:
        t.join(timeout=60)
    engine.dispose()
    crashed = any(t.crashed for t in threads)
    log.info("gateway stopped%s", " after a component crashed" if crashed else "")
    return 1 if crashed else 0
