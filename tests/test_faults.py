"""Fault injection on the whole gateway process: for each fault, what the cart
sees, what is stored, and what happens on recovery (docs/reliability.md
has the table these tests back).

Real parts throughout: `ecg-gateway serve` (untrained demo model) as a
subprocess, DCMTK storescu as the cart, the npm MLLP receiver as the EHR,
PostgreSQL behind a TCP proxy that can refuse connections, a tmpfs spool
that really fills up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from conftest import free_port
from deliver_helpers import Receiver, receiver
from e2e_helpers import ROOT, gateway_env, start_serve, stop, storescu, wait_for_port, wait_until
from fault_helpers import (
    TcpProxy,
    ecg_copies,
    ecg_status_counts,
    incoming_files,
    spool_files,
    start_storescu,
    store_outcomes,
)
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import HL7_DELIVERED, HL7_FAILED, HL7_PENDING, PROCESSED, EcgInstance, Hl7Message, Prediction

pytestmark = pytest.mark.slow

REFUSED = "Refused: OutOfResources"  # how storescu shows 0xA700
HL7_FAST = {
    "ECG_GATEWAY_HL7__ENABLED": "true",
    "ECG_GATEWAY_HL7__CONNECT_TIMEOUT": "1",
    "ECG_GATEWAY_HL7__ACK_TIMEOUT": "2",
    "ECG_GATEWAY_HL7__BACKOFF_INITIAL_S": "0.1",
    "ECG_GATEWAY_HL7__BACKOFF_MAX_S": "0.5",
}


def statuses_by_uid(sf) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with sf() as s:
        return dict(s.execute(select(EcgInstance.sop_instance_uid, EcgInstance.status)).all())


def outbox_by_study(sf) -> dict[str, list[Hl7Message]]:  # type: ignore[no-untyped-def]
    with sf() as s:
        rows = s.execute(
            select(EcgInstance.study_instance_uid, Hl7Message).join(Hl7Message.ecg).order_by(Hl7Message.id)
        ).all()
    out: dict[str, list[Hl7Message]] = {}
    for study, msg in rows:
        out.setdefault(study, []).append(msg)
    return out


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


# -- model file missing at start -------------------------------------------------


def test_model_file_missing_at_start(tmp_path, sample_path):
    """Cart: connection refused (the SCP never listens).  Stored: nothing, not
    even a database.  Recovery: fetch the model and start again."""
    dicom_port = free_port()
    db = tmp_path / "gateway.db"
    env = gateway_env(tmp_path, f"sqlite:///{db}", tmp_path / "models" / "model.hdf5", dicom_port, free_port())
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "ecg-gateway model fetch" in proc.stderr and str(tmp_path / "models" / "model.hdf5") in proc.stderr
    assert "Traceback" not in proc.stderr
    results, text = storescu([sample_path], dicom_port)
    assert results == [] and "Association Request Failed" in text, text
    assert not db.exists() and not (tmp_path / "spool").exists()


# -- database unavailable ----------------------------------------------------------


@pytest.fixture
def pg_url_only(pg_db_url: str) -> str:
    return pg_db_url  # skipped without ECG_GATEWAY_TEST_DATABASE_URL


def test_database_unavailable(pg_url_only, tmp_path, demo_model, sample_path):
    """PostgreSQL refusing connections (a proxy in front of it is stopped).
    Cart: 0xA700 Refused: Out of Resources.  Stored: nothing (no row, no spool
    file, no temp file).  Serve stays up, /healthz says 503 database.
    Recovery: the same ECG sent again is stored, processed and delivered."""
    direct = make_url(pg_url_only)
    proxy = TcpProxy(direct.host or "127.0.0.1", direct.port or 5432, free_port())
    proxy.up()
    via_proxy = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    files = list(ecg_copies(sample_path, tmp_path / "in", 2).items())
    (a, (uid_a, study_a)), (b, (uid_b, study_b)) = files
    dicom_port, admin_port, hl7_port = free_port(), free_port(), free_port()
    env = gateway_env(
        tmp_path,
        via_proxy,
        demo_model,
        dicom_port,
        admin_port,
        ECG_GATEWAY_HL7__PORT=str(hl7_port),
        ECG_GATEWAY_MODEL__THREADS="1",
        **HL7_FAST,
    )
    engine = make_engine(pg_url_only)  # the test itself reads the database directly
    sf = make_sessionmaker(engine)
    log = tmp_path / "serve.log"
    healthz = f"http://127.0.0.1:{admin_port}/healthz"
    with receiver(hl7_port, tmp_path / "hl7.jsonl") as ehr:
        proc = start_serve(env, log)
        try:
            wait_for_port(dicom_port, proc=proc)
            assert [s for _, s in storescu([a], dicom_port)[0]] == ["Success"]
            wait_until(lambda: len(ehr.messages()) == 1, 120, what="A delivered", procs=[proc], log=log)

            proxy.down()
            results, text = storescu([b], dicom_port)
            assert [s for _, s in results] == [REFUSED], text
            health = httpx.get(healthz, timeout=10)
            assert health.status_code == 503 and health.json()["components"]["database"]["ok"] is False
            assert proc.poll() is None
            assert statuses_by_uid(sf) == {uid_a: PROCESSED}
            assert len(spool_files(tmp_path / "spool")) == 1 and incoming_files(tmp_path / "spool") == []
            # the whole log: tracebacks of the database-down loops can fill any tail
            assert f"refused SOP Instance UID {uid_b}" in log.read_text(errors="replace")

            proxy.up()
            assert [s for _, s in storescu([b], dicom_port)[0]] == ["Success"]
            wait_until(
                lambda: any(study_b in m["message"] for m in ehr.messages()),
                120,
                what="B delivered",
                procs=[proc],
                log=log,
            )
            assert httpx.get(healthz, timeout=10).status_code == 200
        finally:
            code = stop(proc)
            proxy.close()
        assert code == 0, tail(log)
        received = ehr.messages()
    assert statuses_by_uid(sf) == {uid_a: PROCESSED, uid_b: PROCESSED}
    assert sorted(study for study in (study_a, study_b) if any(study in m["message"] for m in received)) == sorted(
        [study_a, study_b]
    )
    # A's ACK may have come just before the database went away: its outcome is
    # recorded when the database is back, so A is still delivered once
    assert len(received) == 2, [m["control_id"] for m in received]
    assert len(spool_files(tmp_path / "spool")) == 2
    engine.dispose()


# -- spool disk full ------------------------------------------------------------------


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )


def _fill_inodes(folder: Path) -> list[Path]:
    """Create empty files until the file system has no inode left."""
    made = []
    try:
        while True:
            path = folder / f".inode{len(made)}"
            path.touch()
            made.append(path)
    except OSError:
        return made


def test_spool_disk_full(tmp_path, demo_model, sample_path):
    """The spool's file system is full: a 1 MB tmpfs, really out of space
    (the free-space probe refuses), then out of inodes (the write itself
    fails with ENOSPC); where the test cannot mount, the min_free_disk_mb
    watermark with a preallocated filler file.  Cart: 0xA700.  Stored:
    nothing.  Recovery: space is freed, the cart sends again, the ECG is
    processed."""
    spool = tmp_path / "spool"
    mounted = _mount_tmpfs(spool, "1m,nr_inodes=64")
    filler = spool / ".filler"  # dot-names: not spool files to check_spool
    extra = {"ECG_GATEWAY_MODEL__THREADS": "1"}
    if mounted:
        free = shutil.disk_usage(spool).free
        filler.write_bytes(b"\0" * (free - 100 * 1024))  # less room than one ECG (284 KB)
        extra["ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB"] = "0"  # only a truly full disk refuses
    else:
        free_mb = shutil.disk_usage(spool).free // 2**20
        extra["ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB"] = str(free_mb - 300)
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, 600 * 2**20)
    inodes: list[Path] = []
    ((path, (uid, _)),) = ecg_copies(sample_path, tmp_path / "in", 1).items()
    dicom_port = free_port()
    db_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    env = gateway_env(tmp_path, db_url, demo_model, dicom_port, free_port(), **extra)
    log = tmp_path / "serve.log"
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    proc = start_serve(env, log, "--components", "scp,worker")
    try:
        wait_for_port(dicom_port, proc=proc)

        def refused(expected_log: str) -> None:
            results, text = storescu([path], dicom_port)
            assert [s for _, s in results] == [REFUSED], text
            assert ecg_status_counts(sf) == {}
            assert spool_files(spool) == [] and incoming_files(spool) == []
            assert expected_log in log.read_text(errors="replace")
            assert proc.poll() is None

        refused(f"less than {extra['ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB']} MB free in the spool")
        filler.unlink()
        if mounted:
            inodes = _fill_inodes(spool)
            refused("cannot write to the spool: No space left on device")
            for p in inodes:
                p.unlink()
        results, text = storescu([path], dicom_port)
        assert [s for _, s in results] == ["Success"], text
        wait_until(lambda: statuses_by_uid(sf) == {uid: PROCESSED}, 120, what="processed", procs=[proc])
        assert len(spool_files(spool)) == 1
    finally:
        code = stop(proc)
        engine.dispose()
        if mounted:
            subprocess.run(["umount", "-l", str(spool)], check=False)
        filler.unlink(missing_ok=True)
    assert code == 0, tail(log)


# -- receiver answers AE / AR -------------------------------------------------------------


@pytest.mark.one_db("sqlite")  # HL7 acks; the outbox's claims are tested on both databases in test_deliver.py
def test_receiver_answers_ae_and_ar(db_url, tmp_path, demo_model, sample_path):
    """Cart: Success for every ECG (delivery is decoupled).  Stored: an AE'd
    message is retried and ``failed`` after max_attempts; an AR'd one stays
    ``pending`` (retried indefinitely) and holds back that patient's later
    results, in order.  Recovery: the receiver accepts again -> the AR'd and
    the held-back messages are delivered; the failed one goes out after
    `ecg-gateway hl7 resend`."""
    copies = list(ecg_copies(sample_path, tmp_path / "in", 3).items())
    (a, (uid_a, study_a)), (b, (uid_b, study_b)), (c, (uid_c, study_c)) = copies
    dicom_port, hl7_port = free_port(), free_port()
    env = gateway_env(
        tmp_path,
        db_url,
        demo_model,
        dicom_port,
        free_port(),
        ECG_GATEWAY_HL7__PORT=str(hl7_port),
        ECG_GATEWAY_HL7__MAX_ATTEMPTS="2",
        ECG_GATEWAY_MODEL__THREADS="1",
        **HL7_FAST,
    )
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    log = tmp_path / "serve.log"
    rx_log = tmp_path / "hl7.jsonl"
    ehr = Receiver(hl7_port, rx_log, "AA", matches={study_a: "AE", study_b: "AR"})
    proc = start_serve(env, log, "--components", "scp,worker,hl7")
    try:
        wait_for_port(dicom_port, proc=proc)
        assert [s for _, s in storescu([a, b], dicom_port)[0]] == ["Success", "Success"]

        def ar_retried() -> bool:
            box = outbox_by_study(sf)
            return len(box) == 2 and box[study_a][0].status == HL7_FAILED and box[study_b][0].attempts >= 2

        wait_until(ar_retried, 120, what="AE failed, AR retried", procs=[proc])
        assert [s for _, s in storescu([c], dicom_port)[0]] == ["Success"]
        wait_until(lambda: study_c in outbox_by_study(sf), 120, what="C enqueued", procs=[proc])
        box = outbox_by_study(sf)
        msg_a, msg_b, msg_c = box[study_a][0], box[study_b][0], box[study_c][0]
        assert msg_a.attempts == 2 and msg_a.last_error and "AE" in msg_a.last_error
        assert msg_b.status == HL7_PENDING and "AR" in (msg_b.last_error or "")
        assert msg_c.status == HL7_PENDING and msg_c.attempts == 0  # held back behind B (same patient)
        assert statuses_by_uid(sf) == {uid_a: PROCESSED, uid_b: PROCESSED, uid_c: PROCESSED}
        modes = Counter(m["mode"] for m in ehr.messages())
        assert modes["AE"] == 2 and modes["AR"] >= 2 and modes["AA"] == 0

        # recovery: the receiver accepts again
        ehr.stop()
        ehr = Receiver(hl7_port, rx_log, "AA")

        def delivered(study: str) -> bool:
            return outbox_by_study(sf)[study][-1].status == HL7_DELIVERED

        wait_until(lambda: delivered(study_b) and delivered(study_c), 120, what="B and C delivered", procs=[proc])
        assert outbox_by_study(sf)[study_a][0].status == HL7_FAILED  # a failed message waits for an admin
        resend = subprocess.run(
            [sys.executable, "-m", "gateway", "hl7", "resend", str(msg_a.id)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert resend.returncode == 0, resend.stderr
        wait_until(lambda: delivered(study_a), 120, what="A resent and delivered", procs=[proc])
    finally:
        code = stop(proc)
        ehr.stop()
    assert code == 0, tail(log)
    box = outbox_by_study(sf)
    assert [m.status for m in box[study_a]] == ["superseded", HL7_DELIVERED]
    assert box[study_a][1].resend_of == msg_a.id
    accepted = [m for m in ehr.messages() if m["mode"] == "AA"]
    assert [study for m in accepted for study in (study_a, study_b, study_c) if study in m["message"]] == [
        study_b,
        study_c,
        study_a,
    ]  # in order, per patient
    engine.dispose()


# -- kill -9 during each stage ---------------------------------------------------------------


@pytest.mark.one_db("postgresql", "sqlite")  # lease takeover: the production database when configured
def test_kill_9_during_each_stage(db_url, tmp_path, demo_model, sample_path):
    """serve is killed with SIGKILL three times: while receiving (a burst in
    flight), while processing (a batch claimed), while sending HL7 (a message
    on the wire); the cart resends what was not acknowledged, as carts do.
    After the last restart: every ECG processed once (one prediction, one
    outbox row), every outbox row delivered, the receiver saw every control
    id (a message cut off mid-send may arrive twice, with the same MSH-10)."""
    n = 16
    copies = ecg_copies(sample_path, tmp_path / "in", n)
    studies = {study for _, study in copies.values()}
    by_name = {str(p): uid for p, (uid, _) in copies.items()}
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    log = tmp_path / "serve.log"
    rx_log = tmp_path / "hl7.jsonl"
    hl7_port = free_port()
    acked: set[str] = set()

    def start() -> tuple[subprocess.Popen, int]:
        port = free_port()
        env = gateway_env(
            tmp_path,
            db_url,
            demo_model,
            port,
            free_port(),
            ECG_GATEWAY_HL7__PORT=str(hl7_port),
            ECG_GATEWAY_MODEL__THREADS="1",
            ECG_GATEWAY_MODEL__BATCH_SIZE="4",
            ECG_GATEWAY_PROCESS__LEASE_SECONDS="5",
            **HL7_FAST,
        )
        proc = start_serve(env, log, "--components", "scp,worker,hl7")
        wait_for_port(port, proc=proc)
        return proc, port

    def kill(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def count(*conds) -> int:  # type: ignore[no-untyped-def]
        with sf() as s:
            return s.scalar(select(func.count()).select_from(EcgInstance).where(*conds)) or 0

    def send_unacked(port: int) -> subprocess.Popen:
        return start_storescu([p for p in copies if by_name[str(p)] not in acked], port)

    def collect(sender: subprocess.Popen) -> None:
        out, _ = sender.communicate(timeout=120)
        acked.update(by_name[f] for f, s in store_outcomes(out).items() if s == "Success")

    # 1. while receiving: the receiver (EHR) is down, so nothing is sent yet
    proc, port = start()
    sender = send_unacked(port)
    wait_until(lambda: count() >= 4, 120, interval=0.02, what="a few ECGs stored", procs=[proc])
    kill(proc)
    collect(sender)
    assert 0 < len(acked) < n, "the kill did not land mid-burst"

    # 2. while processing: kill when a batch is claimed
    proc, port = start()
    sender = send_unacked(port)
    mine = f"%:{proc.pid}:%"  # a claim of this process, not one left by the killed one
    wait_until(
        lambda: count(EcgInstance.claimed_by.like(mine)) > 0, 120, interval=0.01, what="a claimed batch", procs=[proc]
    )
    kill(proc)
    collect(sender)
    assert count(EcgInstance.status != PROCESSED) > 0

    # 3. while sending HL7: the receiver answers slowly (ACK in 16-byte pieces)
    proc, port = start()
    collect(send_unacked(port))
    assert len(acked) == n  # the cart got every acknowledgement in the end
    with receiver(hl7_port, rx_log, "split"):
        wait_until(
            lambda: rx_log.exists() and rx_log.stat().st_size > 0,
            120,
            interval=0.01,
            what="the first message on the wire",
            procs=[proc],
        )
        kill(proc)

    # 4. recovery
    with receiver(hl7_port, rx_log, "AA") as ehr:
        proc, port = start()
        try:

            def all_delivered() -> bool:
                with sf() as s:
                    done = s.scalar(select(func.count()).where(Hl7Message.status == HL7_DELIVERED))
                return count(EcgInstance.status == PROCESSED) == n and done == n

            wait_until(all_delivered, 240, what="all processed and delivered", procs=[proc])
        finally:
            code = stop(proc)
        assert code == 0, tail(log)
        received = ehr.messages()

    with sf() as s:
        assert s.scalar(select(func.count()).select_from(EcgInstance)) == n  # resends were duplicates, not new rows
        per_ecg_pred = Counter(s.scalars(select(Prediction.ecg_id)))
        outbox = s.execute(select(Hl7Message.ecg_id, Hl7Message.control_id, Hl7Message.status)).all()
    assert len(per_ecg_pred) == n and set(per_ecg_pred.values()) == {1}
    assert len(outbox) == n and len({e for e, _, _ in outbox}) == n
    rx_all = [json.loads(line) for line in rx_log.read_text().splitlines() if line]
    assert {c for _, c, _ in outbox} == {m["control_id"] for m in rx_all}
    assert {c for _, c, status in outbox if status == HL7_DELIVERED} <= {m["control_id"] for m in received}
    seen_studies = {st for m in rx_all for st in studies if st in m["message"]}
    assert seen_studies == studies
    # a control id arrives more than once only when serve died before recording its ACK
    repeats = Counter(m["control_id"] for m in rx_all)
    assert sum(v - 1 for v in repeats.values()) <= 1, repeats
    engine.dispose()
