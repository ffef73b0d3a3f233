"""``python -m gateway.receive``: only the storage SCP, until SIGTERM/SIGINT.

For operators who run the SCP apart from the worker, and for the crash test.
Reads the same configuration as ``ecg-gateway`` (``ECG_GATEWAY_CONFIG`` and
``ECG_GATEWAY_<SECTION>__<KEY>``); applies migrations first.
"""

from __future__ import annotations

import signal
import sys
import threading


def main() -> int:
    from gateway.config import ConfigError, load_config
    from gateway.logs import setup_logging
    from gateway.receive.scp import start_scp
    from gateway.store.db import make_engine, make_sessionmaker, upgrade

    try:
        cfg = load_config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level)
    upgrade(cfg.storage.database_url, spool_dir=cfg.storage.spool_dir)
    engine = make_engine(cfg.storage.database_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scp = start_scp(cfg.dicom, cfg.storage, make_sessionmaker(engine))
    print(f"listening on {' '.join(map(str, scp.ports))}", flush=True)
    stop.wait()
    scp.shutdown()
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
