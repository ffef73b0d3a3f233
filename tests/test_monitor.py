"""Showing what is stuck (issue 14 §3, issue 13 §1/§3): the HL7 link's state
changes and failed messages in the log (once, not per retry), /healthz
components ``hl7``, ``database``, ``spool`` with their thresholds, the same as
Prometheus gauges, and the SCP's refused presentation contexts.

Real parts: the sender thread against the npm simple-hl7 receiver (started,
stopped, answering AE), DCMTK storescu sending a CT image, the FastAPI app
over the real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from conftest import free_port
from deliver_helpers import make_ecg, receiver, require_receiver, sender, wait_for
from gateway.admin.app import create_app
from gateway.admin.monitor import spool_health
from gateway.config import Config
from gateway.deliver import watch as watch_mod
from gateway.deliver.outbox import enqueue_result, resend
from gateway.store.models import HL7_DELIVERED, HL7_FAILED, Hl7Message

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_cfg(db_url: str, tmp_path: Path, hl7_port: int = 2575, **admin: object) -> Config:
    return Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "dicom": {"min_free_disk_mb": 1},
            "hl7": {
                "port": hl7_port,
                "connect_timeout": 1.0,
                "ack_timeout": 1.0,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.2,
                "max_attempts": 1,
            },
            "admin": {"token": "t0ken-for-tests", **admin},
        }
    )


def queue(session_factory, cfg: Config, n: int = 1, **fields: object) -> list[int]:  # type: ignore[no-untyped-def]
    """n ECGs with a real ORU^R01 each in the outbox; returns the message ids."""
    with session_factory() as s, s.begin():
        msgs = []
        for _ in range(n):
            ecg = make_ecg(s, **fields)
            msgs.append(enqueue_result(s, ecg, ecg.prediction, cfg.hl7))
        s.flush()
        return [m.id for m in msgs]


def healthz(client: TestClient) -> tuple[int, dict]:
    r = client.get("/healthz")
    return r.status_code, r.json()["components"]


def gauge(client: TestClient, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.M)
    return float(m.group(1)) if m else None


def deliver_warnings(caplog) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.getMessage() for r in caplog.records if r.name == "gateway.deliver" and r.levelno == logging.WARNING]


# -- /healthz components without a sender in this process ------------------------------------------------


def test_healthz_components_on_an_idle_gateway(db_url, session_factory, tmp_path):
    client = TestClient(create_app(make_cfg(db_url, tmp_path), session_factory))
    code, comps = healthz(client)
    assert code == 200
    assert comps["database"] == {"ok": True}
    assert comps["hl7"] == {
        "ok": True,
        "link": "not in this process",
        "link_for_s": None,
        "pending": 0,
        "max_pending": 1000,
        "oldest_pending_s": None,
        "max_pending_age_s": 120.0,
        "failed": 0,
        "fail_on_failed": True,
        "problems": [],
    }
    spool = comps["spool"]
    assert spool["ok"] is True and spool["writable"] is True and spool["min_free_mb"] == 1 and spool["free_mb"] > 1
    text = client.get("/metrics").text
    assert 'ecg_gateway_component_healthy{component="hl7"} 1.0' in text
    assert 'ecg_gateway_component_healthy{component="spool"} 1.0' in text
    assert gauge(client, "ecg_gateway_hl7_oldest_pending_seconds") == 0.0
    assert gauge(client, "ecg_gateway_hl7_failed_messages") == 0.0
    assert gauge(client, "ecg_gateway_spool_writable") == 1.0
    assert gauge(client, "ecg_gateway_spool_min_free_bytes") == 1e6
    assert gauge(client, "ecg_gateway_hl7_link_up") is None  # no sender here: no link to report
    assert list((tmp_path).glob("**/.healthz-*")) == []  # the write probe leaves nothing behind
    off = make_cfg(db_url, tmp_path)
    off = off.model_copy(update={"hl7": off.hl7.model_copy(update={"enabled": False})})
    assert healthz(TestClient(create_app(off, session_factory)))[1]["hl7"]["link"] == "disabled"


def test_healthz_oldest_pending_age(db_url, session_factory, tmp_path):
    cfg = make_cfg(db_url, tmp_path, healthz_max_hl7_pending_age_s=120)
    [msg_id] = queue(session_factory, cfg)
    with session_factory.begin() as s:
        s.execute(
            update(Hl7Message)
            .where(Hl7Message.id == msg_id)
            .values(created_at=datetime.now(UTC) - timedelta(seconds=200))
        )
    client = TestClient(create_app(cfg, session_factory))
    code, comps = healthz(client)
    hl7 = comps["hl7"]
    assert code == 503 and hl7["ok"] is False and hl7["pending"] == 1
    assert 199 <= hl7["oldest_pending_s"] < 260
    assert hl7["problems"] == ["oldest pending message waiting 200 s (max 120)"] or re.fullmatch(
        r"oldest pending message waiting 2\d\d s \(max 120\)", hl7["problems"][0]
    )
    assert 199 <= gauge(client, "ecg_gateway_hl7_oldest_pending_seconds") < 260
    assert 'ecg_gateway_component_healthy{component="hl7"} 0.0' in client.get("/metrics").text
    # 0 = never unhealthy for age
    relaxed = TestClient(create_app(make_cfg(db_url, tmp_path, healthz_max_hl7_pending_age_s=0), session_factory))
    assert healthz(relaxed)[0] == 200


def test_healthz_spool_space_and_writability(db_url, session_factory, tmp_path):
    cfg = make_cfg(db_url, tmp_path)
    huge = cfg.model_copy(update={"dicom": cfg.dicom.model_copy(update={"min_free_disk_mb": 10**9})})
    client = TestClient(create_app(huge, session_factory))
    code, comps = healthz(client)
    assert code == 503 and comps["spool"]["ok"] is False and comps["spool"]["writable"] is True
    assert comps["spool"]["min_free_mb"] == 10**9
    assert gauge(client, "ecg_gateway_spool_min_free_bytes") == 1e15
    # a spool that cannot take a file: its folder is a regular file
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"x")
    broken = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"spool_dir": str(blocker)})})
    spool = spool_health(broken)
    assert spool["ok"] is False and spool["writable"] is False and "NotADirectoryError" in spool["error"]
    client = TestClient(create_app(broken, session_factory))
    assert healthz(client)[0] == 503 and gauge(client, "ecg_gateway_spool_writable") == 0.0


# -- the link, through the sender and the npm receiver -----------------------------------------------------


@pytest.fixture
def _receiver_available() -> None:
    require_receiver()


@pytest.mark.usefixtures("_receiver_available")
def test_link_down_and_up_are_logged_once_and_shown(db_url, session_factory, tmp_path, caplog):
    """The EHR is down while messages wait: ONE warning however many retries,
    /healthz turns 503 after healthz_max_hl7_link_down_s, the gauge says 0;
    the EHR comes back: one 'up again' warning, delivered, healthy."""
    caplog.set_level(logging.INFO, "gateway.deliver")
    port = free_port()
    cfg = make_cfg(db_url, tmp_path, port, healthz_max_hl7_link_down_s=0.5)
    queue(session_factory, cfg, 2, patient_id="P1")
    client = TestClient(create_app(cfg, session_factory))
    with sender(session_factory, cfg.hl7) as wake:
        wait_for(lambda: healthz(client)[1]["hl7"]["link"] == "down", what="link down")
        wait_for(lambda: healthz(client)[0] == 503, what="unhealthy")
        code, comps = healthz(client)
        hl7 = comps["hl7"]
        assert hl7["link"] == "down" and "Connection refused" in hl7["link_detail"]
        assert re.fullmatch(r"link down for \d+ s with messages pending \(max 0.5\)", hl7["problems"][0])
        assert gauge(client, "ecg_gateway_hl7_link_up") == 0.0
        warnings = deliver_warnings(caplog)
        assert len(warnings) == 1, warnings  # one state change, however many retries
        assert re.fullmatch(
            rf"hl7 link to 127\.0\.0\.1:{port} down: connect to 127\.0\.0\.1:{port} failed: "
            r".*Connection refused.*; 2 pending \(oldest \d+ s\), 0 failed",
            warnings[0],
        ), warnings[0]
        with receiver(port, tmp_path / "rx.jsonl") as rx:
            wake.set()
            wait_for(lambda: len(rx.messages()) == 2, what="delivery")
            wait_for(lambda: healthz(client)[1]["hl7"]["pending"] == 0, what="both recorded delivered")
            code, comps = healthz(client)
            assert code == 200
            assert comps["hl7"]["link"] == "up" and comps["hl7"]["pending"] == 0 and comps["hl7"]["problems"] == []
            assert gauge(client, "ecg_gateway_hl7_link_up") == 1.0
    warnings = deliver_warnings(caplog)
    assert len(warnings) == 2, warnings
    # the counts as they were when the first message went through (same patient: the second waits for it)
    assert re.fullmatch(
        rf"hl7 link to 127\.0\.0\.1:{port} up again after \d+ s down; "
        r"[01] pending( \(oldest \d+ s\))?, 0 failed",
        warnings[1],
    ), warnings[1]
    assert watch_mod.current_watch() is None  # the sender stopped: nothing claims to know the link


@pytest.mark.usefixtures("_receiver_available")
def test_receiver_rejecting_is_one_state_change(db_url, session_factory, tmp_path, caplog):
    caplog.set_level(logging.INFO, "gateway.deliver")
    port = free_port()
    cfg = make_cfg(db_url, tmp_path, port)
    queue(session_factory, cfg)
    client = TestClient(create_app(cfg, session_factory))
    with receiver(port, tmp_path / "rx.jsonl", "AR") as rx, sender(session_factory, cfg.hl7):
        wait_for(lambda: len(rx.messages()) >= 4, what="several AR'd attempts")
        assert healthz(client)[1]["hl7"]["link"] == "rejecting"
        assert healthz(client)[1]["hl7"]["link_detail"] == "AR"  # the code only: an AR text may quote PHI
    warnings = deliver_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert re.fullmatch(
        rf"hl7 receiver 127\.0\.0\.1:{port} rejects messages \(AR\); 1 pending \(oldest \d+ s\), "
        r"0 failed",
        warnings[0],
    ), warnings[0]
    retries = [r for r in caplog.records if "retry in" in r.getMessage()]
    assert len(retries) >= 3 and {r.levelno for r in retries} == {logging.INFO}


@pytest.mark.usefixtures("_receiver_available")
def test_acks_for_another_message_mean_the_link_is_down(db_url, session_factory, tmp_path, caplog):
    """A receiver that answers, but with MSA-2 naming another message: nothing
    gets through, so the link is down (with the reason), logged once."""
    caplog.set_level(logging.INFO, "gateway.deliver")
    port = free_port()
    cfg = make_cfg(db_url, tmp_path, port)
    queue(session_factory, cfg)
    client = TestClient(create_app(cfg, session_factory))
    with receiver(port, tmp_path / "rx.jsonl", "wrong") as rx, sender(session_factory, cfg.hl7):
        wait_for(lambda: len(rx.messages()) >= 3, what="several attempts")
        hl7 = healthz(client)[1]["hl7"]
    assert hl7["link"] == "down" and "does not match MSH-10" in hl7["link_detail"]
    [warning] = deliver_warnings(caplog)
    assert warning.startswith(f"hl7 link to 127.0.0.1:{port} down: ACK MSA-2 ") and "does not match MSH-10" in warning


@pytest.mark.usefixtures("_receiver_available")
def test_failed_message_warning_and_healthz(db_url, session_factory, tmp_path, caplog, monkeypatch):
    """AE with max_attempts = 1: the message fails; one WARNING naming it with
    the counts; /healthz 503 (configurable) with the failed count; a resend
    that is delivered clears it."""
    monkeypatch.setattr(watch_mod, "POLL_S", 0.2)  # the all-clear comes from the watch's poll
    caplog.set_level(logging.INFO, "gateway.deliver")
    port = free_port()
    cfg = make_cfg(db_url, tmp_path, port)
    [msg_id] = queue(session_factory, cfg)
    with session_factory() as s:
        ecg_id = s.get(Hl7Message, msg_id).ecg_id
    client = TestClient(create_app(cfg, session_factory))
    lenient = TestClient(
        create_app(make_cfg(db_url, tmp_path, port, healthz_fail_on_failed_hl7=False), session_factory)
    )
    with sender(session_factory, cfg.hl7) as wake:
        with receiver(port, tmp_path / "rx.jsonl", "AE"):
            wake.set()
            wait_for(
                lambda: any(w.startswith(f"hl7 message {msg_id} ") for w in deliver_warnings(caplog)),
                what="the failure warning",
            )

            def failed() -> bool:  # the warning is logged inside the transaction, before its commit
                with session_factory() as s:
                    return s.get(Hl7Message, msg_id).status == HL7_FAILED

            wait_for(failed, what="the failure committed")
        code, comps = healthz(client)
        assert code == 503 and comps["hl7"]["failed"] == 1 and comps["hl7"]["link"] == "up"
        assert comps["hl7"]["problems"] == ["1 failed message(s): see ecg-gateway hl7 list, then hl7 resend"]
        assert gauge(client, "ecg_gateway_hl7_failed_messages") == 1.0
        assert healthz(lenient)[0] == 200 and healthz(lenient)[1]["hl7"]["failed"] == 1
        with session_factory() as s:
            new = resend(s, msg_id, "test", cfg.hl7)
            s.commit()
        with receiver(port, tmp_path / "rx2.jsonl", "AA"):
            wake.set()

            def resent() -> bool:
                with session_factory() as s:
                    return s.get(Hl7Message, new.id).status == HL7_DELIVERED

            wait_for(resent, what="the resend delivered")
            assert healthz(client)[0] == 200
        wait_for(
            lambda: any("no failed hl7 messages any more" in r.getMessage() for r in caplog.records),
            what="the all-clear",
        )
    failed_lines = [w for w in deliver_warnings(caplog) if w.startswith("hl7 message")]
    # one line for the failure (the sender's, with the reason code and the counts), not one more from the watch
    assert failed_lines == [
        f"hl7 message {msg_id} (ecg {ecg_id}) failed after 1 attempts: AE (details: "
        f"ecg-gateway hl7 show); 0 pending, 1 failed"
    ]
    with session_factory() as s:
        assert (s.get(Hl7Message, msg_id).status, s.get(Hl7Message, new.id).status) == ("superseded", HL7_DELIVERED)


def test_failed_rows_from_any_cause_are_reported(db_url, session_factory, tmp_path, caplog, monkeypatch):
    """Rows the sender never touched - already failed at start, and one that
    fails meanwhile elsewhere (e.g. an ORU that could not be built, or the
    check before framing) - are reported by the watch and shown by /healthz."""
    monkeypatch.setattr(watch_mod, "POLL_S", 0.1)
    caplog.set_level(logging.INFO, "gateway.deliver")
    cfg = make_cfg(db_url, tmp_path, free_port())  # nobody listens: the link is irrelevant here
    [old_id] = queue(session_factory, cfg)
    with session_factory.begin() as s:  # failed before this sender started (e.g. an ORU that could not be built)
        s.execute(
            update(Hl7Message)
            .where(Hl7Message.id == old_id)
            .values(status=HL7_FAILED, last_error="cannot build ORU^R01: x")
        )
    client = TestClient(create_app(cfg, session_factory))
    with sender(session_factory, cfg.hl7):
        wait_for(lambda: any("wait for an admin" in w for w in deliver_warnings(caplog)), what="the start report")
        [later] = queue(session_factory, cfg)
        with session_factory.begin() as s:  # what another part (or process) does to a row
            s.execute(update(Hl7Message).where(Hl7Message.id == later).values(status=HL7_FAILED))
        wait_for(lambda: any(f"hl7 message {later} " in w for w in deliver_warnings(caplog)), what="the new failure")
        code, comps = healthz(client)
    assert code == 503 and comps["hl7"]["failed"] == 2
    start_line = next(w for w in deliver_warnings(caplog) if "wait for an admin" in w)
    assert start_line.startswith(f"1 hl7 message(s) failed and wait for an admin (ids {old_id}); 0 pending, 1 failed")
    assert not any("Doe" in r.getMessage() or "PAT1" in r.getMessage() for r in caplog.records)  # no PHI


# -- the SCP: refused presentation contexts ------------------------------------------------------------------


def _ct_file(folder: Path) -> Path:
    """A small, valid CT image (DCMTK ships no sample; built with pydicom)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "CT^PATIENT", "CT123", "CT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    path = folder / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_refused_presentation_context_is_logged(session_factory, tmp_path, sample_path, caplog):
    """storescu sends a CT image and an ECG on one association: the ECG is
    stored; the CT gets "no presentation context" at the cart and the gateway
    logs, at INFO, one line naming peer, calling AE and the refused SOP
    classes, the CT first (no PHI).  With only the CT proposed (-R), that
    line names the CT alone."""
    from gateway.config import DicomConfig, StorageConfig
    from gateway.receive.scp import start_scp

    caplog.set_level(logging.INFO, "gateway.receive")
    port = free_port()
    scp = start_scp(
        DicomConfig(port=port, host="127.0.0.1", min_free_disk_mb=0),
        StorageConfig(spool_dir=str(tmp_path / "spool")),
        session_factory,
    )

    def storescu(*files: str, options: tuple[str, ...] = ()) -> str:
        out = subprocess.run(
            ["storescu", "-v", "-aet", "CTCART", "-aec", "ECGGW", *options, "127.0.0.1", str(port), *files],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout + out.stderr

    def refused() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "refused presentation contexts" in r.getMessage()]

    try:
        ct = _ct_file(tmp_path)
        # a cart proposing what its files need (-R), as a modality does: the ECG goes, the CT cannot
        text = storescu(str(sample_path), str(ct), options=("-R",))
        assert "Received Store Response (Success)" in text, text
        assert "no valid presentation context" in text.lower(), text
        assert [(r.levelno, r.getMessage()) for r in refused()] == [
            (
                logging.INFO,
                f"refused presentation contexts from 127.0.0.1 (calling AE 'CTCART'): 1 SOP class(es) "
                f"not accepted: {CT_IMAGE_STORAGE} (CT Image Storage)",
            )
        ]
        caplog.clear()
        caplog.set_level(logging.DEBUG, "gateway.receive")
        text = storescu(str(ct))  # storescu's default: every storage SOP class it knows is proposed
        assert "no valid presentation context" in text.lower(), text
        [line] = refused()
        assert re.fullmatch(
            r"refused presentation contexts from 127\.0\.0\.1 \(calling AE 'CTCART'\): \d+ SOP "
            r"class\(es\) not accepted: .* and \d+ more \(all at DEBUG\)",
            line.getMessage(),
        )
        [full] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused SOP classes from")]
        assert CT_IMAGE_STORAGE in full.split()
        caplog.clear()
        storescu(str(sample_path), options=("-R",))  # an ECG cart: nothing refused, nothing logged
        assert refused() == []
    finally:
        scp.shutdown()
    assert not any("CT123" in r.getMessage() or "PATIENT" in r.getMessage() for r in caplog.records)


# -- through serve ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.one_db("sqlite")  # through serve once; the health queries run on both databases above
@pytest.mark.usefixtures("_receiver_available")
def test_stuck_results_are_visible_through_serve(db_url, tmp_path, demo_model, sample_path):
    """`serve` with the EHR down: an ECG sent by storescu is processed, its
    ORU^R01 waits; the log gets ONE link-down WARNING with the pending count,
    /healthz turns 503 naming the link, /metrics says link down.  The EHR
    starts: delivered, one 'up again' WARNING, healthy.  A CT sent to the
    same serve: the refused presentation context is in its log."""
    import httpx

    from e2e_helpers import gateway_env, start_serve, stop, storescu, wait_for_port, wait_until

    dicom_port, admin_port, hl7_port = free_port(), free_port(), free_port()
    env = gateway_env(
        tmp_path,
        db_url,
        demo_model,
        dicom_port,
        admin_port,
        ECG_GATEWAY_HL7__ENABLED="true",
        ECG_GATEWAY_HL7__PORT=str(hl7_port),
        ECG_GATEWAY_HL7__CONNECT_TIMEOUT="1",
        ECG_GATEWAY_HL7__BACKOFF_INITIAL_S="0.1",
        ECG_GATEWAY_HL7__BACKOFF_MAX_S="0.5",
        ECG_GATEWAY_ADMIN__HEALTHZ_MAX_HL7_LINK_DOWN_S="1",
        ECG_GATEWAY_MODEL__THREADS="1",
    )
    log = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{admin_port}"

    def link_lines() -> list[str]:
        return [
            line
            for line in log.read_text(errors="replace").splitlines()
            if " WARNING gateway.deliver: hl7 link" in line
        ]

    def health() -> tuple[int, dict]:
        r = httpx.get(f"{base}/healthz", timeout=10)
        return r.status_code, r.json()["components"]

    proc = start_serve(env, log)
    try:
        wait_for_port(dicom_port, proc=proc)
        wait_for_port(admin_port, proc=proc)
        results, text = storescu([sample_path], dicom_port)
        assert [s for _, s in results] == ["Success"], text
        wait_until(lambda: health()[0] == 503, 120, what="unhealthy while the EHR is down", procs=[proc])
        code, comps = health()
        hl7 = comps["hl7"]
        assert (hl7["link"], hl7["pending"], hl7["failed"]) == ("down", 1, 0)
        assert any(p.startswith("link down for ") for p in hl7["problems"]), hl7
        assert comps["database"]["ok"] and comps["spool"]["ok"] and comps["scp_listening"]["ok"]
        assert "ecg_gateway_hl7_link_up 0.0" in httpx.get(f"{base}/metrics", timeout=10).text
        time.sleep(3)  # several retries (backoff 0.1-0.5 s) ...
        [down] = link_lines()  # ... one line
        assert re.search(
            rf"hl7 link to 127\.0\.0\.1:{hl7_port} down: .*Connection refused.*; 1 pending "
            r"\(oldest \d+ s\), 0 failed$",
            down,
        ), down
        with receiver(hl7_port, tmp_path / "hl7.jsonl") as ehr:
            wait_until(lambda: len(ehr.messages()) == 1, 60, what="the ORU^R01 delivered", procs=[proc])
            wait_until(lambda: health()[0] == 200, 60, what="healthy again", procs=[proc])
            assert health()[1]["hl7"]["link"] == "up"
            assert "ecg_gateway_hl7_link_up 1.0" in httpx.get(f"{base}/metrics", timeout=10).text
        down_again, up = link_lines()
        assert down_again == down and re.search(r"hl7 link to .* up again after \d+ s down; 0 pending, 0 failed$", up)
        ct = _ct_file(tmp_path)
        subprocess.run(
            ["storescu", "-R", "-aet", "CTCART", "-aec", "ECGGW", "127.0.0.1", str(dicom_port), str(ct)],
            capture_output=True,
            timeout=60,
        )
        wait_until(lambda: "refused presentation contexts" in log.read_text(errors="replace"), 30, what="the CT line")
        assert (
            f"INFO gateway.receive: refused presentation contexts from 127.0.0.1 (calling AE 'CTCART'): "
            f"1 SOP class(es) not accepted: {CT_IMAGE_STORAGE} (CT Image Storage)"
        ) in log.read_text()
    finally:
        code = stop(proc)
    assert code == 0, log.read_text(errors="replace")[-3000:]
