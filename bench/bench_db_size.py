"""Database bytes per processed ECG (issue 14 §7: aim <= 8 KB).

The real path, in one process: N distinct ECGs (pydicom's Mortara sample
with new UIDs and realistic patient, order and accession values) go through
``receive.spool.store_instance`` (as ``ecg-gateway ingest`` and the SCP do),
the real worker with an untrained demo model of the published architecture
(its probabilities put all six findings above threshold: the longest ORU),
and the real HL7 sender to the npm simple-hl7 receiver (its ACKs are stored
as in production), in ``--waves`` rounds.  On PostgreSQL each round ends
with a plain VACUUM, as autovacuum would at its default thresholds, so the
dead row versions of the status updates are reused as in a running site.

Then the database is measured, minus the migrated empty database:

  SQLite      the file (page_count x page_size after a WAL checkpoint); per
              table with its indexes from ``dbstat``
  PostgreSQL  pg_total_relation_size (heap + TOAST + indexes) of the
              gateway's tables

and again compacted (SQLite VACUUM, PostgreSQL VACUUM FULL: live data only).
The spool (the original files) is not in these figures.

Usage: .venv/bin/python bench/bench_db_size.py [--ecgs 1000] [--waves 10] [--database-url URL]
       [--no-deliver] [--json]
       (default database: a temporary SQLite file; a PostgreSQL URL names a
       server: a temporary database is created there and dropped)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECEIVER_JS = ROOT / "tests" / "peers" / "hl7_receiver.js"
TABLES = ("ecg_instances", "predictions", "hl7_messages", "pacs_messages", "audit_log", "admin_sessions")
#: (table, column) whose average stored length is shown; absent columns are skipped.
COLUMNS = (
    ("ecg_instances", "report"),
    ("predictions", "normalisation"),
    ("predictions", "input_npy"),
    ("predictions", "spread"),
    ("predictions", "model_files"),
    ("hl7_messages", "payload"),
    ("hl7_messages", "ack"),
)


@contextlib.contextmanager
def scratch_database(database_url: str) -> Iterator[str]:
    """A temporary database on the PostgreSQL server named by the URL (dropped after)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(database_url)
    name = f"bench_db_size_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def ecg_files(n: int, patients: int = 700) -> Iterator[bytes]:
    """``n`` distinct instances of the sample, with per-patient values of
    realistic length, spread over ``patients`` patients."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base = dcmread(get_testdata_file("waveform_ecg.dcm"))
    for i in range(n):
        ds = base.copy()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.IssuerOfPatientID = f"MRN{4_000_000 + i % patients:08d}", "HOSPITAL-A"
        ds.PatientName = f"PATIENTNAME{i % patients:04d}^FIRSTNAME^M"
        ds.AccessionNumber = f"ACC2026{i:09d}"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        yield buf.getvalue()


def measure(engine) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Bytes per table (and "total") as the database stores them now."""
    out: dict[str, int] = {}
    with engine.connect() as conn:
        if engine.url.get_backend_name() == "sqlite":
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            out["total"] = pages * conn.exec_driver_sql("PRAGMA page_size").scalar()
            try:  # tables with their indexes (SQLite built with SQLITE_ENABLE_DBSTAT_VTAB)
                rows = conn.exec_driver_sql(
                    "SELECT coalesce(m.tbl_name, s.name), sum(s.pgsize) FROM dbstat s "
                    "LEFT JOIN sqlite_master m ON m.name = s.name GROUP BY 1"
                ).all()
                out.update({name: int(size) for name, size in rows if name in TABLES})
            except Exception:  # noqa: BLE001 - no dbstat: the total only
                pass
        else:
            for table in TABLES:
                out[table] = int(
                    conn.exec_driver_sql(  # 0 for a table this revision does not have
                        f"SELECT coalesce(pg_total_relation_size(to_regclass('{table}')), 0)"
                    ).scalar()
                )
            out["total"] = sum(out[t] for t in TABLES)
    return out


def average_lengths(engine) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Average length of the largest values as the gateway writes them (a compressed
    column counts compressed; PostgreSQL may compress large text further in TOAST)."""
    from sqlalchemy import LargeBinary, inspect

    sqlite = engine.url.get_backend_name() == "sqlite"
    out = {}
    with engine.connect() as conn:
        insp = inspect(conn)
        for table, column in COLUMNS:
            if not insp.has_table(table):
                continue
            types = {c["name"]: c["type"] for c in insp.get_columns(table)}
            if column in types:
                binary = isinstance(types[column], LargeBinary)
                expr = (
                    f"length({column})"
                    if sqlite
                    else (f"octet_length({column})" if binary else f"octet_length({column}::text)")
                )
                value = conn.exec_driver_sql(f"SELECT avg({expr}) FROM {table}").scalar()
                out[f"{table}.{column}" + (" (binary)" if binary else "")] = float(value or 0)
    return out


@contextlib.contextmanager
def hl7_receiver(port: int, log: Path) -> Iterator[None]:
    """The npm simple-hl7 receiver (answers AA), for the duration of the block."""
    proc = subprocess.Popen(["node", str(RECEIVER_JS), str(port), str(log), "AA"], stdout=subprocess.PIPE, text=True)
    try:
        if not (proc.stdout and proc.stdout.readline().startswith("listening")):
            sys.exit("bench_db_size: the HL7 receiver did not start (npm ci in tests/peers)")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def deliver_all(factory, port: int) -> None:  # type: ignore[no-untyped-def]
    """The real outbox sender, until nothing is pending."""
    from sqlalchemy import func, select

    from gateway.config import Hl7Config
    from gateway.deliver.sender import run_sender
    from gateway.store.models import Hl7Message

    stop = threading.Event()
    thread = threading.Thread(target=run_sender, args=(factory, Hl7Config(port=port), stop))
    thread.start()
    try:
        while True:
            with factory() as s:
                if not s.scalar(select(func.count()).select_from(Hl7Message).where(Hl7Message.status == "pending")):
                    return
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()


def vacuum(engine, full: bool = False) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL: VACUUM the gateway's tables (as autovacuum does), or VACUUM FULL (live data only)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in TABLES:
            if conn.exec_driver_sql(f"SELECT to_regclass('{table}')").scalar() is not None:
                conn.exec_driver_sql(f"VACUUM {'FULL ' if full else ''}{table}")


def run(url: str, n: int, waves: int, deliver: bool, spool: Path) -> dict[str, object]:
    from sqlalchemy import func, select

    from gateway.config import Config
    from gateway.infer.demo import write_demo_model
    from gateway.infer.runner import load_ensemble
    from gateway.process.worker import Worker
    from gateway.receive.spool import SUCCESS, IncomingInstance, StoreContext, store_instance
    from gateway.store.db import current_revision, make_engine, make_sessionmaker, upgrade
    from gateway.store.models import PROCESSED, EcgInstance
    from gateway.store.spool import Spool

    upgrade(url)
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    pg = engine.url.get_backend_name() == "postgresql"
    empty = measure(engine)
    model = write_demo_model(spool.parent / "demo.hdf5", seed=0)
    cfg = Config.model_validate(
        {
            "storage": {"database_url": url, "spool_dir": str(spool)},
            "model": {"files": [str(model)], "batch_size": 8, "max_wait_ms": 0},
        }
    )
    worker = Worker(cfg, factory, load_ensemble([str(model)], batch_size=8))
    port = free_port()
    files = ecg_files(n)
    timings = {"store_s": 0.0, "process_s": 0.0, "deliver_s": 0.0}
    with hl7_receiver(port, spool.parent / "hl7.log") if deliver else contextlib.nullcontext():
        for wave in range(waves):
            t = time.perf_counter()
            for raw in [next(files) for _ in range(n // waves + (wave < n % waves))]:
                out = store_instance(
                    IncomingInstance.from_file(raw, calling_ae="CART01", peer_address="10.1.2.3"),
                    StoreContext(factory, Spool(spool)),
                )
                assert out.status == SUCCESS and not out.duplicate, out
            timings["store_s"] += time.perf_counter() - t
            t = time.perf_counter()
            while worker.run_once():
                pass
            timings["process_s"] += time.perf_counter() - t
            if deliver:
                t = time.perf_counter()
                deliver_all(factory, port)
                timings["deliver_s"] += time.perf_counter() - t
            if pg:
                vacuum(engine)
    with factory() as s:
        processed = s.scalar(select(func.count()).select_from(EcgInstance).where(EcgInstance.status == PROCESSED))
    assert processed == n, f"only {processed} of {n} processed"
    full = measure(engine)
    if pg:
        vacuum(engine, full=True)
    else:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM")
    live = measure(engine)
    result: dict[str, object] = {
        "database": engine.url.get_backend_name(),
        "revision": current_revision(url),
        "ecgs": n,
        "waves": waves,
        "delivered": deliver,
        **{k: round(v, 1) for k, v in timings.items()},
        "per_ecg": {k: (full[k] - empty.get(k, 0)) / n for k in full},
        "per_ecg_compacted": {k: (live[k] - empty.get(k, 0)) / n for k in live},
        "average_length": average_lengths(engine),
    }
    engine.dispose()
    return result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ecgs", type=int, default=1000)
    parser.add_argument(
        "--waves",
        type=int,
        default=10,
        help="store, process and deliver in this many rounds; on PostgreSQL a VACUUM after each, "
        "as autovacuum does at its default thresholds (dead row versions are reused)",
    )
    parser.add_argument("--database-url", default="")
    parser.add_argument("--no-deliver", action="store_true", help="leave the HL7 messages pending (no node needed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench_db_size_") as tmp:
        spool = Path(tmp) / "spool"
        if args.database_url.startswith("postgresql"):
            with scratch_database(args.database_url) as url:
                result = run(url, args.ecgs, args.waves, not args.no_deliver, spool)
        else:
            result = run(
                args.database_url or f"sqlite:///{tmp}/gateway.db", args.ecgs, args.waves, not args.no_deliver, spool
            )
        spool_bytes = sum(f.stat().st_size for f in spool.rglob("*") if f.is_file())
    result["spool_per_ecg"] = spool_bytes / args.ecgs
    if args.json:
        print(json.dumps(result))
        return
    per, compacted = result["per_ecg"], result["per_ecg_compacted"]
    assert isinstance(per, dict) and isinstance(compacted, dict)
    print(
        f"{result['ecgs']} ECGs received, processed{' and delivered' if result['delivered'] else ''} in "
        f"{result['waves']} waves on {result['database']} (revision {result['revision']}); store "
        f"{result['store_s']} s, process {result['process_s']} s, deliver {result['deliver_s']} s"
    )
    print(
        f"database bytes per processed ECG: {per['total']:,.0f} ({per['total'] / 1024:.1f} KB); "
        f"compacted (VACUUM{' FULL' if result['database'] != 'sqlite' else ''}): {compacted['total']:,.0f}"
    )
    for table in TABLES:
        if table in per:
            print(f"  {table:<14} {per[table]:>10,.0f} {compacted.get(table, 0):>10,.0f}")
    print("average value length as written (bytes):")
    for name, value in result["average_length"].items():  # type: ignore[union-attr]
        print(f"  {name:<28} {value:>10,.0f}")
    print(f"spool bytes per ECG (the originals, not in the database): {result['spool_per_ecg']:,.0f}")


if __name__ == "__main__":
    main()
