"""The whole gateway as a process: real storescu in, real npm MLLP receiver out.

These start `ecg-gateway serve` (untrained demo model) as a subprocess.
"""

from __future__ import annotations

import io
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import func, select

import ecg_variants as v
from conftest import free_port
from deliver_helpers import receiver
from e2e_helpers import gateway_env, start_serve, stop, storescu, wait_for_port, wait_until
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import PROCESSED, REJECTED, EcgInstance, Hl7Message, Prediction

FINAL = (PROCESSED, REJECTED, "failed")

VARIANTS = {
    "sample": (lambda ds: ds, PROCESSED, None),
    "500Hz": (lambda ds: v.with_rate(ds, 500), PROCESSED, None),
    "250Hz": (lambda ds: v.with_rate(ds, 250), PROCESSED, None),
    "8-lead": (v.eight_lead, PROCESSED, None),
    "mV-baseline": (v.millivolts_with_baseline, PROCESSED, None),
    "MDC": (v.mdc_codes, PROCESSED, None),
    "shuffled": (v.shuffled, PROCESSED, None),
    "20s": (lambda ds: v.with_duration(ds, 20.0), PROCESSED, None),
    "5s": (lambda ds: v.with_duration(ds, 5.0), REJECTED, "short"),
    "no-V3": (lambda ds: v.drop_lead(ds, "V3"), REJECTED, "V3"),
    "median-only": (v.median_beat_only, REJECTED, "rhythm"),
}


def write_variants(sample_path: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir()
    out = {}
    for name, (build, _, _) in VARIANTS.items():
        ds = v.new_uids(build(dcmread(sample_path)))
        out[name] = (v.save(ds, folder / f"{name}.dcm"), str(ds.SOPInstanceUID))
    return out


def counts_by_ecg(session, model) -> Counter:  # type: ignore[no-untyped-def]
    return Counter(dict(session.execute(select(model.ecg_id, func.count()).group_by(model.ecg_id)).all()))


def check_web_view(base: str, sf, sop_uid: str, tmp_path: Path, env: dict) -> None:  # type: ignore[no-untyped-def]
    """What an admin sees in a real browser after a real C-STORE."""
    from test_admin_browser import ARTIFACTS, browse

    with sf() as s:
        row = s.scalar(select(EcgInstance).where(EcgInstance.sop_instance_uid == sop_uid))
        probs = row.prediction.probabilities
        patient_id, model_sha256 = row.patient_id, row.prediction.model_sha256
    token = env["ECG_GATEWAY_ADMIN__TOKEN"]
    dom = browse(base, "/ecgs", tmp_path, token=token)
    assert f'href="/ecgs/{row.id}"' in dom, dom[-2000:]
    dom = browse(base, f"/ecgs/{row.id}", tmp_path, token=token)
    assert dom.count('class="lead-panel"') == 12 and dom.count('class="rhythm-strip"') == 1
    assert 'class="banner demo"' in dom  # the untrained demo model is never mistaken for a reading
    for code, p in probs.items():
        assert f'data-finding="{code}"' in dom and f"{p:.3f}" in dom
    # issue 16: the cart's measurements on the page, the PDF report downloadable (audited by the API)
    assert '<tr data-measurement="qtc_interval">' in dom and "RITMO SINUSALE" in dom
    r = httpx.get(f"{base}/api/ecgs/{row.id}/report.pdf", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert r.status_code == 200 and r.content.startswith(b"%PDF-"), r.text[:500]
    from pypdf import PdfReader

    text = PdfReader(io.BytesIO(r.content)).pages[0].extract_text()
    assert patient_id in text and model_sha256 in text and "370 ms" in text
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "e2e_ecg_page.png"
    browse(base, f"/ecgs/{row.id}", tmp_path, token=token, screenshot=shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# The fast tier's one end-to-end test (on SQLite; the PostgreSQL run is in the full tier).
def test_cart_to_ehr(db_url, tmp_path, demo_model, sample_path):
    files = write_variants(sample_path, tmp_path / "in")
    dicom_port, admin_port, hl7_port = free_port(), free_port(), free_port()
    env = gateway_env(
        tmp_path,
        db_url,
        demo_model,
        dicom_port,
        admin_port,
        ECG_GATEWAY_HL7__ENABLED="true",
        ECG_GATEWAY_HL7__PORT=str(hl7_port),
    )
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    with receiver(hl7_port, tmp_path / "hl7.jsonl") as ehr:
        proc = start_serve(env, tmp_path / "serve.log")
        try:
            wait_for_port(dicom_port, proc=proc)
            results, text = storescu([p for p, _ in files.values()], dicom_port)
            assert [s for _, s in results] == ["Success"] * len(files), text

            def all_final() -> bool:
                with sf() as s:
                    return s.scalar(select(func.count()).where(EcgInstance.status.in_(FINAL))) == len(files)

            wait_until(all_final, 180, what="every ECG final", procs=[proc])
            wait_until(lambda: len(ehr.messages()) >= len(files), 60, what="every ORU at the receiver")
            health = httpx.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=10)
            assert health.status_code == 200, health.text
            check_web_view(f"http://127.0.0.1:{admin_port}", sf, files["sample"][1], tmp_path, env)
        finally:
            assert stop(proc) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        time.sleep(0.5)
        received = ehr.messages()
    with sf() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(EcgInstance))}
        outbox = counts_by_ecg(s, Hl7Message)
        predictions = counts_by_ecg(s, Prediction)
        for name, (_, uid) in files.items():
            _, status, reason = VARIANTS[name]
            row = rows[uid]
            assert row.status == status, (name, row.status, row.error)
            if reason:
                assert reason.lower() in row.error.lower(), (name, row.error)
            assert outbox[row.id] == 1, name
            assert predictions[row.id] == (1 if status == PROCESSED else 0), name
        assert set(s.scalars(select(Hl7Message.status))) == {"delivered"}
    engine.dispose()
    # exactly one ORU per ECG, each for its own study
    log = (tmp_path / "serve.log").read_text()
    assert len(received) == len(files), log[-2000:]
    payloads = "\n".join(str(m) for m in received)
    for _, uid in files.values():
        assert payloads.count(str(rows[uid].study_instance_uid)) >= 1
    # issue 16 §1: the cart's measurements reached the EHR as NM OBX with LOINC and UCUM, its statements as its own
    sample_oru = next(
        m["message"] for m in received if str(rows[files["sample"][1]].study_instance_uid) in m["message"]
    )
    segments = sample_oru.replace("\n", "\r").split("\r")
    for loinc, value, unit in (
        ("8867-4", "61", "/min"),
        ("8625-6", "161", "ms"),
        ("8636-3", "370", "ms"),
        ("8638-9", "57", "deg"),
    ):
        assert any(
            seg.startswith("OBX|") and f"|NM|{loinc}^" in seg and f"||{value}|{unit}^" in seg for seg in segments
        ), (loinc, sample_oru)
    assert any("CART_STATEMENT^" in seg and "RITMO SINUSALE" in seg for seg in segments)
    # PHI never in the log
    sample = dcmread(sample_path)
    assert str(sample.PatientID) not in log
    assert str(sample.PatientName).split("^")[0] not in log


@pytest.mark.slow
def test_two_worker_processes_share_the_queue_on_postgresql(pg_db_url, tmp_path, demo_model, sample_path):
    """Scale-out needs PostgreSQL (skipped without ECG_GATEWAY_TEST_DATABASE_URL).

    Both workers are started (and have said so) before the first ECG is
    stored, so they compete for every batch from the first one: a few dozen
    ECGs show the share, where a backlog stored before the starts needed
    hundreds to outlast the skew between the two starts."""
    from gateway.receive.spool import IncomingInstance, StoreContext, store_instance
    from gateway.serve import STARTED_LINE
    from gateway.store.spool import Spool

    db_url = pg_db_url
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    raw_ds = dcmread(sample_path)
    n = 64
    procs = []
    for i in range(2):
        env = gateway_env(
            tmp_path,
            db_url,
            demo_model,
            free_port(),
            free_port(),
            ECG_GATEWAY_MODEL__THREADS="1",
            ECG_GATEWAY_MODEL__BATCH_SIZE="4",
            ECG_GATEWAY_PROCESS__LEASE_SECONDS="120",
            ECG_GATEWAY_HL7__ENABLED="true",
        )  # outbox rows are written; no sender runs
        procs.append(start_serve(env, tmp_path / f"worker{i}.log", "--components", "worker"))
    try:
        for i in range(2):
            log = tmp_path / f"worker{i}.log"
            wait_until(lambda log=log: STARTED_LINE in log.read_text(), 180, what=f"worker {i} started", procs=procs)
        for _ in range(n):
            ds = v.new_uids(raw_ds)
            path = v.save(ds, tmp_path / "one.dcm")
            out = store_instance(
                IncomingInstance.from_file(path.read_bytes(), calling_ae="BACKFILL", peer_address=None),
                StoreContext(sf, Spool(tmp_path / "spool")),
            )
            assert out.status == 0

        def done() -> bool:
            with sf() as s:
                return s.scalar(select(func.count()).where(EcgInstance.status == PROCESSED)) == n

        wait_until(done, 300, what=f"{n} ECGs processed", procs=procs)
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0]
    with sf() as s:
        per_ecg = counts_by_ecg(s, Prediction)
        assert len(per_ecg) == n and set(per_ecg.values()) == {1}
        assert set(counts_by_ecg(s, Hl7Message).values()) == {1}
        workers = Counter(t["worker"] for t in s.scalars(select(Prediction.timings)))
    assert len(workers) == 2, workers  # both processes took a share
    engine.dispose()


@pytest.mark.slow
@pytest.mark.one_db("sqlite")  # test_faults.py kills each stage on PostgreSQL
def test_kill_9_during_burst_loses_nothing_acknowledged(db_url, tmp_path, demo_model, sample_path):
    n = 40
    folder = tmp_path / "burst"
    folder.mkdir()
    sample = dcmread(sample_path)
    files = []
    for i in range(n):
        ds = v.new_uids(sample)
        files.append(v.save(ds, folder / f"{i:03d}.dcm"))
    uid_of = {str(p): str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    acked: set[str] = set()
    rng = random.Random(1234)
    for _round in range(1):  # tests/test_faults.py kills each stage too
        dicom_port = free_port()
        env = gateway_env(
            tmp_path,
            db_url,
            demo_model,
            dicom_port,
            free_port(),
            ECG_GATEWAY_MODEL__THREADS="1",
            ECG_GATEWAY_PROCESS__LEASE_SECONDS="5",
        )
        proc = start_serve(env, tmp_path / "serve.log", "--components", "scp,worker")
        wait_for_port(dicom_port, proc=proc)
        sender = subprocess.Popen(
            ["storescu", "-v", "-aet", "TESTCART", "-aec", "ECGGW", "127.0.0.1", str(dicom_port), *map(str, files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(rng.uniform(0.5, 2.5))  # a random point in the burst, with processing under way
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out, _ = sender.communicate(timeout=60)
        current = ""
        for line in out.splitlines():
            if line.startswith("I: Sending file: "):
                current = line.removeprefix("I: Sending file: ").strip()
            elif "Received Store Response (Success)" in line:
                acked.add(uid_of[current])
    assert acked, "the burst was killed before any acknowledgement; nothing was tested"
    # restart and let it finish
    env = gateway_env(
        tmp_path,
        db_url,
        demo_model,
        free_port(),
        free_port(),
        ECG_GATEWAY_MODEL__THREADS="1",
        ECG_GATEWAY_PROCESS__LEASE_SECONDS="5",
    )
    proc = start_serve(env, tmp_path / "serve.log", "--components", "scp,worker")
    try:

        def acked_final() -> bool:
            with sf() as s:
                rows = s.execute(select(EcgInstance.sop_instance_uid, EcgInstance.status)).all()
            final = {u for u, st in rows if st in FINAL}
            return acked <= final

        wait_until(acked_final, 240, what="every acknowledged ECG final", procs=[proc])
    finally:
        assert stop(proc) == 0
    with sf() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(EcgInstance))}
        for uid in acked:
            row = rows[uid]
            assert row.status == PROCESSED, (uid, row.status, row.error)
            assert (tmp_path / "spool" / row.spool_path).is_file()
        assert max(counts_by_ecg(s, Prediction).values()) == 1
        assert max(counts_by_ecg(s, Hl7Message).values(), default=0) <= 1
    engine.dispose()
