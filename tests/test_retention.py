"""Issue 14 §8: retention.  Old finished ECGs go with their spool files; nothing else does;
a crash in the middle leaves the spool and the database agreeing.

The ECGs are made by the real receive path and the real worker (demo model);
only their age and HL7 delivery are set in the database.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select, update

import ecg_variants as v
from gateway.config import Config
from gateway.process.worker import Worker
from gateway.receive.spool import IncomingInstance, StoreContext, store_instance
from gateway.store import retention
from gateway.store.models import (
    FAILED,
    AuditLog,
    EcgInstance,
    Hl7Message,
    Prediction,
)
from gateway.store.spool import Spool

ROOT = Path(__file__).resolve().parents[1]
OLD = timedelta(days=40)


class Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it)."""


def encode(ds) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _store(session_factory, spool: Path, raw: bytes) -> int:  # type: ignore[no-untyped-def]
    out = store_instance(
        IncomingInstance.from_file(raw, calling_ae="CART", peer_address="127.0.0.1"),
        StoreContext(session_factory, Spool(spool)),
    )
    assert out.ecg_id is not None, out
    return out.ecg_id


def build(session_factory, db_url: str, tmp_path: Path, sample_path: Path, ensemble) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Ten ECGs through the real receive path and worker; returns their ids by name.

    old_*: received 40 days ago.  Expected with a 30-day limit: the four ``old_``
    finished ones go (a processed one, one the worker rejected, one refused at
    the door with its quarantine copy, a failed one); the rest stay.
    """
    spool = tmp_path / "spool"
    cfg = Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(spool)},
            "model": {"files": ["unused.hdf5"], "batch_size": 8, "max_wait_ms": 0},
        }
    )
    sample = dcmread(sample_path)
    versioned = v.new_uids(sample)
    second = v.new_uids(sample)
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = versioned.SOPInstanceUID
    second.PatientName = "OTHER^VERSION"  # different bytes, same UID: version 2
    ct = v.new_uids(sample)
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT: refused at receive
    ids = {
        "old_processed": _store(session_factory, spool, encode(v.new_uids(sample))),
        "old_rejected": _store(session_factory, spool, encode(v.new_uids(v.with_duration(sample, 5.0)))),
        "old_refused": _store(session_factory, spool, encode(ct)),
        "old_failed": _store(session_factory, spool, encode(v.new_uids(sample))),
        "old_hl7_pending": _store(session_factory, spool, encode(v.new_uids(sample))),
        "old_waiting": _store(session_factory, spool, encode(v.new_uids(sample))),
        "old_v1": _store(session_factory, spool, encode(versioned)),
        "new_v2": None,
        "new_processed": _store(session_factory, spool, encode(v.new_uids(sample))),
    }
    with session_factory.begin() as s:  # the worker must not take this one: it stays "received"
        s.execute(update(EcgInstance).where(EcgInstance.id == ids["old_waiting"]).values(status="held"))
    worker = Worker(cfg, session_factory, ensemble)
    while worker.run_once():
        pass
    ids["new_v2"] = _store(session_factory, spool, encode(second))
    while worker.run_once():
        pass
    now = datetime.now(UTC)
    with session_factory.begin() as s:
        s.execute(update(EcgInstance).where(EcgInstance.id == ids["old_waiting"]).values(status="received"))
        s.execute(update(EcgInstance).where(EcgInstance.id == ids["old_failed"]).values(status=FAILED))
        s.execute(
            update(EcgInstance)
            .where(EcgInstance.id.in_([i for k, i in ids.items() if k.startswith("old_")]))
            .values(received_at=now - OLD)
        )
        # The EHR acknowledged everything but one.
        s.execute(update(Hl7Message).where(Hl7Message.ecg_id != ids["old_hl7_pending"]).values(status="delivered"))
        s.add(AuditLog(actor="cli:test", action="export_input", target=f"ecg:{ids['old_processed']}"))
    with session_factory() as s:
        statuses = {k: s.get(EcgInstance, i).status for k, i in ids.items()}
    assert statuses == {
        "old_processed": "processed",
        "old_rejected": "rejected",
        "old_refused": "rejected",
        "old_failed": "failed",
        "old_hl7_pending": "processed",
        "old_waiting": "received",
        "old_v1": "processed",
        "new_v2": "processed",
        "new_processed": "processed",
    }
    return ids


GONE = ("old_processed", "old_rejected", "old_refused", "old_failed")


def paths(session_factory, spool: Path) -> dict[int, Path]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return {i: Spool(spool).resolve(p) for i, p in s.execute(select(EcgInstance.id, EcgInstance.spool_path))}


def counts(session_factory) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return tuple(
            s.scalar(select(func.count()).select_from(t))  # type: ignore[return-value]
            for t in (EcgInstance, Prediction, Hl7Message, AuditLog)
        )


@pytest.fixture
def scenario(session_factory, db_url, tmp_path, sample_path, demo_ensemble):  # type: ignore[no-untyped-def]
    return build(session_factory, db_url, tmp_path, sample_path, demo_ensemble)


def test_prune_removes_old_finished_ecgs_with_their_files_and_keeps_the_rest(scenario, session_factory, tmp_path):
    spool = tmp_path / "spool"
    files = paths(session_factory, spool)
    assert files[scenario["old_refused"]].parent == spool / "rejected"  # the quarantine copy
    assert all(f.is_file() for f in files.values())
    before = counts(session_factory)

    dry = retention.prune(session_factory, spool, 30, dry_run=True, list_rows=True)
    assert counts(session_factory) == before and all(f.is_file() for f in files.values())
    # 2 predictions (processed, and failed after processing), 3 HL7 messages (the rejection has one too)
    assert (dry.ecgs, dict(dry.by_status), dry.predictions, dry.hl7_messages, dry.files, dry.kept) == (
        4,
        {"processed": 1, "rejected": 2, "failed": 1},
        2,
        3,
        4,
        3,
    )
    sizes = sum(files[scenario[k]].stat().st_size for k in GONE)
    assert dry.file_bytes == sizes
    assert dry.summary().startswith("would remove 4 ECG(s) received before ")
    assert [line.split()[1] for line in dry.lines] == [f"id={scenario[k]}" for k in GONE]

    result = retention.prune(session_factory, spool, 30, actor="cli:test")
    assert (
        result.ecgs,
        dict(result.by_status),
        result.predictions,
        result.hl7_messages,
        result.files,
        result.file_bytes,
        result.kept,
    ) == (4, {"processed": 1, "rejected": 2, "failed": 1}, 2, 3, 4, sizes, 3)
    assert result.summary().startswith("removed 4 ECG(s)") and "audit log kept" in result.summary()
    with session_factory() as s:
        left = set(s.scalars(select(EcgInstance.id)))
        assert left == {i for k, i in scenario.items() if k not in GONE}
        assert (
            s.scalar(
                select(func.count()).select_from(Prediction).where(Prediction.ecg_id.in_([scenario[k] for k in GONE]))
            )
            == 0
        )
        audit = s.scalars(select(AuditLog).order_by(AuditLog.id)).all()
    assert [(a.action, a.actor) for a in audit] == [("export_input", "cli:test"), ("prune", "cli:test")]
    assert audit[1].detail["ecgs"] == 4 and audit[1].detail["older_than_days"] == 30
    for name, ecg_id in scenario.items():
        assert files[ecg_id].is_file() == (name not in GONE), name
    report = Spool(spool).check(session_factory)
    assert report.clean and not report.mid_prune, report
    assert (spool / "rejected").is_dir()  # the quarantine folder itself stays
    # Nothing more to do: a second run removes nothing.
    assert retention.prune(session_factory, spool, 30).ecgs == 0


@pytest.mark.parametrize(
    "crash_at",
    [
        pytest.param("after_mark", marks=pytest.mark.slow),
        pytest.param("mid_files", marks=pytest.mark.slow),
        "after_files",
        pytest.param("before_commit", marks=pytest.mark.slow),
    ],
)
def test_a_crash_in_the_middle_leaves_no_row_without_file_and_no_file_without_row(
    scenario, session_factory, tmp_path, monkeypatch, crash_at
):
    spool = tmp_path / "spool"
    files = paths(session_factory, spool)
    real_remove = Spool.remove_file
    calls = []

    def crash(*_a, **_k):  # type: ignore[no-untyped-def]
        raise Crash(crash_at)

    def remove_then_crash(self: Spool, path: Path) -> int:
        calls.append(path)
        if len(calls) == 3:
            raise Crash("mid_files")
        return real_remove(self, path)

    with monkeypatch.context() as m:
        if crash_at == "after_mark":
            m.setattr(retention, "_remove_files", crash)
        elif crash_at == "mid_files":
            m.setattr(Spool, "remove_file", remove_then_crash)
        elif crash_at == "after_files":
            m.setattr(retention, "_delete_rows", crash)
        else:  # the delete transaction dies before its commit
            m.setattr(retention, "AuditLog", crash)
        with pytest.raises(Crash):
            retention.prune(session_factory, spool, 30)

    report = Spool(spool).check(session_factory)
    assert report.clean, report  # no row without its file, no file without its row
    assert report.mid_prune == sorted(scenario[k] for k in GONE)
    removed = {i for i, f in files.items() if not f.exists()}
    expected_removed = {"after_mark": 0, "mid_files": 2, "after_files": 4, "before_commit": 4}[crash_at]
    assert len(removed) == expected_removed and removed <= set(report.mid_prune)
    assert counts(session_factory)[0] == len(scenario)  # every row is still there, marked
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "db", "check-spool"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, **_env(session_factory, spool)},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 row(s) marked by an unfinished prune" in r.stdout and "spool and database agree" in r.stdout

    result = retention.prune(session_factory, spool, 30)  # the next prune finishes the marked rows first
    assert result.ecgs == 4 and result.files == 4 - expected_removed
    report = Spool(spool).check(session_factory)
    assert report.clean and not report.mid_prune, report
    with session_factory() as s:
        assert set(s.scalars(select(EcgInstance.id))) == {i for k, i in scenario.items() if k not in GONE}
    for name, ecg_id in scenario.items():
        assert files[ecg_id].is_file() == (name not in GONE), name


def _env(session_factory, spool: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    url = session_factory.kw["bind"].url.render_as_string(hide_password=False)
    return {"ECG_GATEWAY_STORAGE__DATABASE_URL": url, "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(spool)}


@pytest.mark.slow
def test_db_prune_command(scenario, session_factory, tmp_path):
    spool = tmp_path / "spool"
    env = {k: val for k, val in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    env.update(_env(session_factory, spool))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "db", "prune", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            env=env,
        )

    r = cli()
    assert r.returncode == 2 and "give --older-than DAYS" in r.stderr
    r = cli("--older-than", "30", "--dry-run", "--list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "Anonymous" not in r.stdout and "642341" not in r.stdout  # no PHI
    assert [ln.split()[1] for ln in lines[:-1]] == [f"id={scenario[k]}" for k in GONE]
    assert lines[-1].startswith("would remove 4 ECG(s)") and "4 spool file(s)" in lines[-1]
    assert counts(session_factory)[0] == len(scenario)
    env["ECG_GATEWAY_STORAGE__RETENTION_DAYS"] = "30"  # the configured limit is the default
    r = cli()
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("removed 4 ECG(s)") and "(failed 1, processed 1, rejected 2)" in r.stdout
    assert "Anonymous" not in r.stdout and "642341" not in r.stdout  # no PHI
    assert counts(session_factory)[0] == len(scenario) - 4
    with session_factory() as s:
        (prune_row,) = s.scalars(select(AuditLog).where(AuditLog.action == "prune")).all()
    assert prune_row.actor.startswith("cli:")


def test_the_running_gateway_prunes_daily(scenario, session_factory, tmp_path):
    """serve's retention loop: prunes at start and again after each interval, until stopped."""
    spool = tmp_path / "spool"
    stop = threading.Event()
    thread = threading.Thread(target=retention.run_daily, args=(session_factory, spool, 30, stop, 0.3))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while counts(session_factory)[0] != len(scenario) - 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counts(session_factory)[0] == len(scenario) - 4
        with session_factory.begin() as s:  # a day passes: the last ECGs age past the limit
            s.execute(
                update(EcgInstance)
                .where(EcgInstance.id.in_([scenario["new_processed"]]))
                .values(received_at=datetime.now(UTC) - OLD)
            )
        while counts(session_factory)[0] != len(scenario) - 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counts(session_factory)[0] == len(scenario) - 5
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert Spool(spool).check(session_factory).clean


@pytest.mark.slow
@pytest.mark.one_db("sqlite")  # the hook in serve; the prune's SQL runs on both databases above
def test_serve_prunes_when_retention_days_is_set(scenario, session_factory, db_url, tmp_path, demo_model):
    """The hook in ``serve``: with ``[storage] retention_days`` the running gateway prunes
    (at start, then daily) and says so in its log; stopping it is clean."""
    from conftest import free_port
    from e2e_helpers import gateway_env, start_serve, stop, wait_until

    env = gateway_env(tmp_path, db_url, demo_model, free_port(), free_port(), ECG_GATEWAY_STORAGE__RETENTION_DAYS="30")
    log = tmp_path / "serve.log"
    proc = start_serve(env, log, "--components", "worker")
    try:
        wait_until(
            lambda: counts(session_factory)[0] == len(scenario) - len(GONE),
            timeout=180,
            what="the prune by serve",
            procs=[proc],
        )
    finally:
        code = stop(proc)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "retention: keeping 30 day(s)" in text and "retention: removed 4 ECG(s)" in text, text[-3000:]
    with session_factory() as s:
        (row,) = s.scalars(select(AuditLog).where(AuditLog.action == "prune")).all()
    assert row.actor == "serve:retention"
    assert Spool(tmp_path / "spool").check(session_factory).clean


def test_a_file_outside_the_spool_is_never_deleted(session_factory, tmp_path):
    """A database restored on another machine may name absolute paths that are not this
    spool's: the row goes, the file stays, the summary says so."""
    spool = tmp_path / "spool"
    spool.mkdir()
    elsewhere = tmp_path / "elsewhere.dcm"
    elsewhere.write_bytes(b"not ours to delete")
    inside = spool / "2020/01/01/x.dcm"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"dicm")
    old = datetime.now(UTC) - OLD
    with session_factory.begin() as s:
        for uid, path in (("1.2.3.1", elsewhere), ("1.2.3.2", inside)):
            s.add(
                EcgInstance(
                    sop_instance_uid=uid,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.1",
                    spool_path=str(path),
                    sha256="0" * 64,
                    size_bytes=4,
                    status="rejected",
                    received_at=old,
                )
            )
    result = retention.prune(session_factory, spool, 30)
    assert (result.ecgs, result.files, result.outside_spool) == (2, 1, 1)
    assert "1 file(s) outside the spool folder left in place" in result.summary()
    assert elsewhere.read_bytes() == b"not ours to delete" and not inside.exists()
    assert not (spool / "2020").exists()  # emptied date folders go
    assert counts(session_factory)[0] == 0


def test_an_ecg_whose_pacs_object_is_not_delivered_stays(session_factory, tmp_path):
    """The PACS outbox is a delivery like HL7: pending keeps the ECG; a delivered object goes with it."""
    from gateway.store.models import PacsMessage

    spool = tmp_path / "spool"
    old = datetime.now(UTC) - OLD
    with session_factory.begin() as s:
        rows = [
            EcgInstance(
                sop_instance_uid=f"1.2.3.{n}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.1",
                spool_path=f"2020/01/01/{n}.dcm",
                sha256="0" * 64,
                size_bytes=4,
                status="processed",
                received_at=old,
            )
            for n in (1, 2)
        ]
        s.add_all(rows)
        s.flush()
        for row, status in zip(rows, ("pending", "delivered"), strict=True):
            s.add(
                PacsMessage(
                    ecg_id=row.id,
                    kind="pdf",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.104.1",
                    sop_instance_uid=f"2.25.{row.id}",
                    series_instance_uid="2.25.9",
                    status=status,
                )
            )
        waiting = rows[0].id
    for n in (1, 2):
        (spool / f"2020/01/01/{n}.dcm").parent.mkdir(parents=True, exist_ok=True)
        (spool / f"2020/01/01/{n}.dcm").write_bytes(b"dicm")
    dry = retention.prune(session_factory, spool, 30, dry_run=True)
    assert (dry.ecgs, dry.pacs_messages, dry.kept) == (1, 1, 1)
    result = retention.prune(session_factory, spool, 30)
    assert (result.ecgs, result.pacs_messages, result.files, result.kept) == (1, 1, 1, 1)
    assert "1 PACS object(s)" in result.summary()
    with session_factory() as s:
        assert set(s.scalars(select(EcgInstance.id))) == {waiting}
        assert [m.status for m in s.scalars(select(PacsMessage))] == ["pending"]
    assert (spool / "2020/01/01/1.dcm").is_file() and not (spool / "2020/01/01/2.dcm").exists()
    assert Spool(spool).check(session_factory).clean
