"""docs/operations.md "Backup and restore", followed step by step on both databases.

Database first (pg_dump / SQLite's online backup), then the spool; meanwhile an
ECG arrives and retention prunes an old one.  After the restore, check-spool
names exactly those two, and the documented remedies (ingest, db prune) leave
the spool and the database agreeing, with every acknowledged ECG present.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url

import ecg_variants as v
from gateway.config import Config
from gateway.process.worker import Worker
from gateway.store import retention
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import EcgInstance
from gateway.store.spool import Spool
from test_retention import _store, encode

ROOT = Path(__file__).resolve().parents[1]


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def dump(url: str, target: Path) -> None:
    """Step 1 of the documented backup: the database."""
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(make_url(url).database)) as src, closing(sqlite3.connect(target)) as dst:
            src.backup(dst)
    else:
        subprocess.run(["pg_dump", "-Fc", "-d", _libpq(url), "-f", str(target)], check=True, timeout=120)


def restore(url: str, backup: Path, tmp: Path) -> str:
    """The documented restore, into a fresh database (the old one is gone); returns its URL."""
    if url.startswith("sqlite"):
        fresh = tmp / "restored.db"
        shutil.copyfile(backup, fresh)
        return f"sqlite:///{fresh}"
    name = f"gw_restore_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    fresh = make_url(url).set(database=name).render_as_string(hide_password=False)
    subprocess.run(
        ["pg_restore", "--clean", "--if-exists", "-d", _libpq(fresh), str(backup)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    return fresh


def _drop(url: str) -> None:
    if url.startswith("postgresql"):
        admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.slow
def test_backup_order_and_restore_as_documented(db_url, session_factory, tmp_path, sample_path, demo_ensemble):
    spool = tmp_path / "spool"
    cfg = Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(spool)},
            "model": {"files": ["unused.hdf5"], "max_wait_ms": 0},
        }
    )
    sample = dcmread(sample_path)
    kept = [_store(session_factory, spool, encode(v.new_uids(sample))) for _ in range(2)]
    old = _store(session_factory, spool, encode(v.new_uids(sample)))
    worker = Worker(cfg, session_factory, demo_ensemble)
    while worker.run_once():
        pass
    with session_factory.begin() as s:
        s.execute(
            update(EcgInstance).where(EcgInstance.id == old).values(received_at=datetime.now(UTC) - timedelta(days=400))
        )
        s.execute(text("UPDATE hl7_messages SET status = 'delivered'"))

    # 1. the database ...
    backup = tmp_path / "backup"
    backup.mkdir()
    dump(db_url, backup / "gateway.dump")
    # ... meanwhile a cart sends one more ECG, and retention removes the old one ...
    late_raw = encode(v.new_uids(sample))
    late = _store(session_factory, spool, late_raw)
    assert retention.prune(session_factory, spool, 365).ecgs == 1
    # 2. ... then the spool.
    shutil.copytree(spool, backup / "spool")

    # Disaster: both gone.  Restore as documented.
    shutil.rmtree(spool)
    restored_url = restore(db_url, backup / "gateway.dump", tmp_path)
    shutil.copytree(backup / "spool", spool)
    engine = make_engine(restored_url)
    factory = make_sessionmaker(engine)
    try:
        report = Spool(spool).check(factory)
        with factory() as s:
            assert set(s.scalars(select(EcgInstance.id))) == {*kept, old}  # the dump's rows
        # The late ECG's file has no row; the pruned ECG's row has no file: exactly those.
        assert report.rows_without_file == [old]
        assert len(report.files_without_row) == 1 and Path(report.files_without_row[0]).read_bytes() == late_raw

        env = {k: val for k, val in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
        env.update(
            {
                "ECG_GATEWAY_STORAGE__DATABASE_URL": restored_url,
                "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(spool),
                "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "0",
            }
        )

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env
            )

        late_dir = tmp_path / "late"  # moved out of the spool, then stored again
        late_dir.mkdir()
        for f in report.files_without_row:
            shutil.move(f, late_dir)
        r = cli("ingest", str(late_dir))
        assert r.returncode == 0 and "1 accepted" in r.stdout, r.stdout + r.stderr
        r = cli("db", "prune", "--older-than", "365")
        assert r.returncode == 0 and r.stdout.startswith("removed 1 ECG(s)"), r.stdout + r.stderr
        r = cli("db", "check-spool")
        assert r.returncode == 0 and "spool and database agree" in r.stdout, r.stdout
        with factory() as s:  # every acknowledged ECG inside the limit is there again
            uids = set(s.scalars(select(EcgInstance.sop_instance_uid)))
            assert len(uids) == 3 and s.get(EcgInstance, old) is None
        with session_factory() as s:
            assert uids == {s.get(EcgInstance, i).sop_instance_uid for i in (*kept, late)}
    finally:
        engine.dispose()
        _drop(restored_url)
