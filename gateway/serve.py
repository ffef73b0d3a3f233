"""``ecg-gateway serve``: every stage in one process, stopped cleanly by a signal."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from gateway.config import Config
from gateway.logs import setup_logging

log = logging.getLogger("gateway.serve")

NO_MODEL_HINT = (
    "no model file: run `ecg-gateway model fetch` "
    "(or `ecg-gateway model demo --out models/demo.hdf5` to try the pipeline with an untrained model)"
)


def missing_model_files(cfg: Config) -> list[str]:
    return [f for f in cfg.model.files if not Path(f).is_file()]


def run(cfg: Config) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    import sys

    missing = missing_model_files(cfg)
    if missing:
        print(f"{NO_MODEL_HINT} [missing: {', '.join(missing)}]", file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level)
    from gateway.store.db import upgrade

    upgrade(cfg.storage.database_url)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("gateway started")
    stop.wait()
    log.info("gateway stopped")
    return 0
