"""Issue 14 §7: results keep the input's hash, not its bytes; the report is stored once.

The migration (0003) is run up and down over real rows: inputs made by the
real normaliser from real spooled files, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from admin_helpers import model_input, seed
from gateway.normalise import input_sha256, normaliser_version
from gateway.store import db

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# The 0002 schema, as far as these rows need it.
meta = sa.MetaData()
ecg_0002 = sa.Table(
    "ecg_instances",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sop_instance_uid", sa.String),
    sa.Column("version", sa.Integer),
    sa.Column("sop_class_uid", sa.String),
    sa.Column("spool_path", sa.String),
    sa.Column("sha256", sa.String),
    sa.Column("size_bytes", sa.Integer),
    sa.Column("status", sa.String),
    sa.Column("flags", sa.JSON),
    sa.Column("attempts", sa.Integer),
    sa.Column("received_at", sa.DateTime(True)),
    sa.Column("updated_at", sa.DateTime(True)),
    sa.Column("report", sa.JSON),
)
pred_0002 = sa.Table(
    "predictions",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("ecg_id", sa.Integer),
    sa.Column("probabilities", sa.JSON),
    sa.Column("spread", sa.JSON),
    sa.Column("findings", sa.JSON),
    sa.Column("thresholds", sa.JSON),
    sa.Column("model_files", sa.JSON),
    sa.Column("model_sha256", sa.String),
    sa.Column("demo_model", sa.Boolean),
    sa.Column("normalisation", sa.JSON),
    sa.Column("quality_flags", sa.JSON),
    sa.Column("input_npy", sa.LargeBinary),
    sa.Column("gateway_version", sa.String),
    sa.Column("timings", sa.JSON),
    sa.Column("created_at", sa.DateTime(True)),
)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _rows_at_0002(url: str, spool: Path, sample_path: Path) -> dict[str, int]:
    """Four processed ECGs as the 0002 code wrote them (input bytes + the report twice):
    ``abs`` (absolute spool path), ``rel`` (relative path), ``gone`` (its file is deleted
    later), ``nobytes`` (no input bytes) and ``garbage`` (bytes that are no array)."""
    signal, report, flags = model_input(sample_path)
    data = sample_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    ids = {}
    engine = db.make_engine(url)
    with engine.begin() as conn:
        for n, name in enumerate(("abs", "rel", "gone", "nobytes", "garbage"), start=1):
            rel = Path(f"2026/01/01/{name}.dcm")
            (spool / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sample_path, spool / rel)
            ecg_id = conn.execute(
                ecg_0002.insert().returning(ecg_0002.c.id),
                dict(
                    sop_instance_uid=f"1.2.3.{n}",
                    version=1,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.1",
                    spool_path=str(rel if name == "rel" else spool / rel),
                    sha256=sha,
                    size_bytes=len(data),
                    status="processed",
                    flags=[],
                    attempts=1,
                    received_at=T0,
                    updated_at=T0,
                    report=None if name == "rel" else report,  # an old row whose report was only on the prediction
                ),
            ).scalar_one()
            conn.execute(
                pred_0002.insert(),
                dict(
                    ecg_id=ecg_id,
                    probabilities={"AF": 0.5},
                    spread={},
                    findings=[],
                    thresholds={"AF": 0.5},
                    model_files=[{"path": "m.hdf5", "sha256": "ab" * 32, "demo": False}],
                    model_sha256="ab" * 32,
                    demo_model=False,
                    normalisation=report,
                    quality_flags=flags,
                    gateway_version="0.1.0",
                    timings={},
                    created_at=T0,
                    input_npy={"nobytes": None, "garbage": b"not an array"}.get(name, npy(signal)),
                ),
            )
            ids[name] = ecg_id
    engine.dispose()
    return ids


def _predictions(url: str) -> dict[int, dict]:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        table = sa.Table("predictions", sa.MetaData(), autoload_with=conn)
        rows = {r.ecg_id: r._asdict() for r in conn.execute(sa.select(table))}
    engine.dispose()
    return rows


def _table_bytes(url: str) -> int:
    """The SQLite file, or the PostgreSQL predictions table with its TOAST and indexes."""
    engine = db.make_engine(url)
    with engine.connect() as conn:
        if engine.url.get_backend_name() == "sqlite":
            size = (
                conn.exec_driver_sql("PRAGMA page_count").scalar() * conn.exec_driver_sql("PRAGMA page_size").scalar()
            )
        else:
            size = conn.exec_driver_sql("SELECT pg_total_relation_size('predictions')").scalar()
    engine.dispose()
    return int(size)


def test_migration_0003_up_and_down_with_real_rows(empty_db_url, tmp_path, sample_path):
    from gateway.admin.exports import ExportError, model_input_array
    from gateway.store.models import EcgInstance

    spool = tmp_path / "spool"
    db.upgrade(empty_db_url, "0002")
    ids = _rows_at_0002(empty_db_url, spool, sample_path)
    signal, report, _ = model_input(sample_path)
    before = _predictions(empty_db_url)
    assert len(before[ids["abs"]]["input_npy"]) == 196_736  # the bytes issue 14 measured

    size_0002 = _table_bytes(empty_db_url)
    db.upgrade(empty_db_url)
    db.compact(empty_db_url)  # the dropped bytes go back to the disk
    # SQLite measures the whole file, which the later migrations' own tables and indexes
    # grow: measured on an empty file taken the same way, and added back.
    schema_growth = 0
    if empty_db_url.startswith("sqlite"):
        bare = f"sqlite:///{tmp_path / 'bare.db'}"
        db.upgrade(bare, "0002")
        bare_0002 = _table_bytes(bare)
        db.upgrade(bare)
        db.compact(bare)
        schema_growth = _table_bytes(bare) - bare_0002
    assert size_0002 - _table_bytes(empty_db_url) + schema_growth > 3 * 196_736
    after = _predictions(empty_db_url)
    assert "input_npy" not in after[ids["abs"]] and "normalisation" not in after[ids["abs"]]
    for name in ("abs", "rel", "gone"):
        assert after[ids[name]]["input_sha256"] == input_sha256(signal)
        assert after[ids[name]]["normaliser_version"] is None  # unknown for rows made before 0003
    assert after[ids["nobytes"]]["input_sha256"] is None and after[ids["garbage"]]["input_sha256"] is None
    engine = db.make_engine(empty_db_url)
    factory = db.make_sessionmaker(engine)
    with engine.connect() as conn:  # kept once, compressed (0007): 2.6 KB of JSON in well under 1 KB
        stored = conn.execute(sa.text("SELECT report FROM ecg_instances WHERE id = :i"), {"i": ids["abs"]}).scalar()
    assert len(json.dumps(report)) > 2500 and 300 < len(stored) < 1000
    with factory() as s:
        rel = s.get(EcgInstance, ids["rel"])
        assert rel.report == json.loads(json.dumps(report))  # copied from the prediction, kept once
        # The input is rebuilt from the spool, relative or absolute path alike.
        np.testing.assert_array_equal(model_input_array(rel, spool), signal)
        np.testing.assert_array_equal(model_input_array(s.get(EcgInstance, ids["abs"]), spool), signal)
        with pytest.raises(ExportError, match=f"ECG {ids['nobytes']} has no model input"):
            model_input_array(s.get(EcgInstance, ids["nobytes"]), spool)
    engine.dispose()

    (spool / "2026/01/01/gone.dcm").unlink()
    db.downgrade(empty_db_url, "0002", spool_dir=spool)
    down = _predictions(empty_db_url)
    assert "input_sha256" not in down[ids["abs"]] and "normaliser_version" not in down[ids["abs"]]
    for name in ("abs", "rel"):  # rebuilt from the spool, byte for byte what 0002 stored
        assert bytes(down[ids[name]]["input_npy"]) == bytes(before[ids[name]]["input_npy"])
    for name in ("gone", "nobytes", "garbage"):  # nothing to rebuild from: NULL, as documented
        assert down[ids[name]]["input_npy"] is None
    for name in ids:
        assert down[ids[name]]["normalisation"] == json.loads(json.dumps(report))

    db.upgrade(empty_db_url)  # and up again: the hashes come back from the rebuilt bytes
    again = _predictions(empty_db_url)
    assert again[ids["abs"]]["input_sha256"] == again[ids["rel"]]["input_sha256"] == input_sha256(signal)
    assert again[ids["gone"]]["input_sha256"] is None
    db.downgrade(empty_db_url, "base")


def test_export_names_both_normaliser_versions_when_the_rebuild_differs(session_factory, db_url, tmp_path, sample_path):
    """A result whose input was made by another normaliser is not silently re-made:
    the export, API and web view say so, naming the versions."""
    from gateway.admin.app import create_app
    from gateway.admin.exports import input_npy
    from gateway.config import Config
    from gateway.store.models import EcgInstance

    spool = tmp_path / "spool"
    ids = seed(session_factory, sample_path, spool)
    signal = model_input(sample_path)[0]
    with session_factory.begin() as s:
        p = s.get(EcgInstance, ids["e1"]).prediction
        p.input_sha256 = input_sha256(signal * np.float32(1.001))  # what an older normaliser gave
        p.normaliser_version = "0 (numpy 1.26.4)"
    with session_factory() as s, pytest.raises(Exception) as err:
        input_npy(s, str(ids["e1"]), spool)
    message = str(err.value)
    assert f"ECG {ids['e1']}: the model input rebuilt from the stored file does not match" in message
    assert f"normaliser 0 (numpy 1.26.4) made it, normaliser {normaliser_version()} runs now" in message

    cfg = Config.model_validate(
        {"storage": {"database_url": db_url, "spool_dir": str(spool)}, "admin": {"token": "tok"}}
    )
    client = TestClient(create_app(cfg, session_factory))
    r = client.get(f"/api/ecgs/{ids['e1']}/input.npy", headers={"Authorization": "Bearer tok"})
    assert r.status_code == 409 and "normaliser 0 (numpy 1.26.4) made it" in r.json()["detail"]
    d = client.get(f"/api/ecgs/{ids['e1']}", headers={"Authorization": "Bearer tok"}).json()
    assert d["prediction"]["normaliser_version"] == "0 (numpy 1.26.4)"
    assert d["prediction"]["normalisation"]["fit"]["pad_before"] == 48  # the report, from the ECG row
    # The unchanged e2 still exports the exact input.
    r = client.get(f"/api/ecgs/{ids['e2']}/input.npy", headers={"Authorization": "Bearer tok"})
    assert r.status_code == 200
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), signal)


def test_the_normaliser_version_is_bumped_when_its_output_changes(sample_path):
    """Pins the sample's input hash to NORMALISER_VERSION.  If this fails, normalise's
    output changed: bump NORMALISER_VERSION (stored results then name the old one
    when their input cannot be rebuilt) and update the pin."""
    from gateway.normalise import NORMALISER_VERSION

    assert (NORMALISER_VERSION, input_sha256(model_input(sample_path)[0])) == (
        "1",
        "ba086bd7524c8f6458e783187a3603a59b53bf0ffe02107c335db7e95aab6a7d",
    )


def test_sqlite_files_use_8k_pages_and_compact_converts_older_ones(tmp_path):
    """4 KB pages held one ~2 KB HL7 outbox row each; new files get 8 KB pages and
    `db compact` rewrites an older file (stays in WAL mode, keeps its rows)."""
    import sqlite3
    from contextlib import closing

    def pragmas(path: Path) -> tuple[int, str]:
        with closing(sqlite3.connect(path)) as conn:
            return (conn.execute("PRAGMA page_size").fetchone()[0], conn.execute("PRAGMA journal_mode").fetchone()[0])

    db.upgrade(f"sqlite:///{tmp_path / 'new.db'}")
    assert pragmas(tmp_path / "new.db") == (8192, "wal")

    old = tmp_path / "old.db"
    with closing(sqlite3.connect(old)) as conn:  # as every file made before: 4 KB pages, WAL
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE keep (x)")
        conn.execute("INSERT INTO keep VALUES (42)")
        conn.commit()
    url = f"sqlite:///{old}"
    db.upgrade(url)
    assert pragmas(old) == (4096, "wal")  # an existing file keeps its page size
    ran = db.compact(url)
    assert "VACUUM" in ran and pragmas(old) == (8192, "wal")
    with closing(sqlite3.connect(old)) as conn:
        assert conn.execute("SELECT x FROM keep").fetchall() == [(42,)]
    assert db.current_revision(url) is not None


def test_compact_while_the_gateway_holds_the_sqlite_file_says_to_stop_it(tmp_path):
    import os
    import sqlite3
    import subprocess
    import sys
    from contextlib import closing

    url = f"sqlite:///{tmp_path / 'g.db'}"
    db.upgrade(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    env["ECG_GATEWAY_STORAGE__DATABASE_URL"] = url
    with closing(sqlite3.connect(tmp_path / "g.db")) as other:  # a running gateway's connection
        other.execute("SELECT count(*) FROM ecg_instances").fetchall()
        r = subprocess.run(
            [sys.executable, "-m", "gateway", "db", "compact"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            timeout=120,
        )
    assert r.returncode == 1 and "database is locked (stop the gateway first)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_migration_0010_compresses_outbox_payloads_and_measurements_both_ways(empty_db_url, sample_path):
    """The ORU text (with non-ASCII) and the cart's measurements survive up, down and up
    again unchanged, and are stored compressed at head."""
    from pydicom import dcmread

    from gateway.report.measurements import extract
    from gateway.store.models import EcgInstance, Hl7Message

    cart = extract(dcmread(sample_path))
    payload = (
        "MSH|^~\\&|ECGGW|ECGGW|EHR|HOSPITAL|20260101||ORU^R01^ORU_R01|C1|P|2.5.1||||||UNICODE UTF-8\r"
        "PID|1||P1^^^H^MR||MÜLLER^JÖRG||19600101|M\r" + "".join(f"OBX|{i}|NM|X^Y^L||0.{i}||||||F\r" for i in range(40))
    )
    db.upgrade(empty_db_url, "0009_relative_spool_paths")
    engine = db.make_engine(empty_db_url)
    meta = sa.MetaData()
    with engine.begin() as conn:
        ecg = sa.Table("ecg_instances", meta, autoload_with=conn)
        hl7 = sa.Table("hl7_messages", meta, autoload_with=conn)
        ecg_id = conn.execute(
            ecg.insert().returning(ecg.c.id),
            dict(
                sop_instance_uid="1.2.3",
                version=1,
                sop_class_uid="1.2",
                spool_path="x",
                sha256="0" * 64,
                size_bytes=1,
                status="processed",
                flags=[],
                attempts=1,
                received_at=T0,
                updated_at=T0,
                measurements=cart.measurements,
                cart_statements=cart.statements,
            ),
        ).scalar_one()
        conn.execute(
            hl7.insert(),
            [
                dict(
                    ecg_id=ecg_id,
                    control_id=f"C{i}",
                    order_key="k",
                    payload=text,
                    status="delivered",
                    attempts=1,
                    next_attempt_at=T0,
                    created_at=T0,
                )
                for i, text in enumerate((payload, ""))
            ],
        )
    engine.dispose()

    def raw() -> tuple[Any, list[Any]]:
        eng = db.make_engine(empty_db_url)
        with eng.connect() as conn:
            m = conn.execute(sa.text("SELECT measurements FROM ecg_instances")).scalar()
            p = conn.execute(sa.text("SELECT payload FROM hl7_messages ORDER BY id")).scalars().all()
        eng.dispose()
        return m, p

    for _ in range(2):
        db.upgrade(empty_db_url)
        m, p = raw()
        assert isinstance(m, (bytes, memoryview)) and len(m) < 500 < len(json.dumps(cart.measurements))
        assert len(p[0]) < len(payload.encode()) / 2
        engine = db.make_engine(empty_db_url)
        with db.make_sessionmaker(engine)() as s:
            row = s.get(EcgInstance, ecg_id)
            assert (row.measurements, row.cart_statements) == (
                json.loads(json.dumps(cart.measurements)),
                cart.statements,
            )
            assert [m.payload for m in s.scalars(sa.select(Hl7Message).order_by(Hl7Message.id))] == [payload, ""]
        engine.dispose()
        db.downgrade(empty_db_url, "0009_relative_spool_paths")
        m, p = raw()
        assert p == [payload, ""]
        assert (json.loads(m) if isinstance(m, str) else m) == json.loads(json.dumps(cart.measurements))
