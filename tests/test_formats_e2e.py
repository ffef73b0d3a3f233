"""`ecg-gateway ingest` of Philips Sierra XML and HL7 aECG files end to end:
a running `ecg-gateway serve` (untrained demo model) processes what ingest
stored and delivers each ORU^R01 to the npm MLLP receiver, with the
demographics each format carries.

One database (SQLite): what is proven here is the formats' way through the
process; the rows it writes are the same code as a DICOM ECG's, which
test_e2e.py sends through serve on PostgreSQL, and the readers' rows are
tested on both databases in-process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import free_port
from deliver_helpers import receiver
from e2e_helpers import ROOT, gateway_env, start_serve, stop, wait_for_port, wait_until
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import PROCESSED, REJECTED, EcgInstance, Hl7Message

INPUTS = Path(__file__).parent / "fixtures" / "inputs"
FINAL = (PROCESSED, REJECTED, "failed")


def segment(message: str, name: str) -> list[str]:
    line = next(seg for seg in message.replace("\n", "\r").split("\r") if seg.startswith(name + "|"))
    return line.split("|")


@pytest.mark.slow
@pytest.mark.one_db("sqlite")  # see the module docstring
def test_ingest_philips_and_aecg_to_ehr(db_url: str, tmp_path: Path, demo_model: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    # names say nothing (or the wrong thing): content decides
    (archive / "ECG0001").write_bytes((INPUTS / "philips" / "129DYPRG.XML").read_bytes())
    (archive / "scan.dcm").write_bytes((INPUTS / "philips" / "ad4d3d80-d165_1-04_orig.xml").read_bytes())
    (archive / "subject1.txt").write_bytes((INPUTS / "aecg" / "hl7_aecg_example.xml").read_bytes())
    (archive / "notes.txt").write_bytes(b"not an ECG")
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
    log = tmp_path / "serve.log"
    with receiver(hl7_port, tmp_path / "hl7.jsonl") as ehr:
        proc = start_serve(env, log)
        try:
            wait_for_port(dicom_port, proc=proc)
            ingest = subprocess.run(
                [sys.executable, "-m", "gateway", "ingest", str(archive)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert ingest.returncode == 0, ingest.stdout + ingest.stderr
            lines = ingest.stdout.splitlines()
            assert [line.split(" (")[0] for line in lines[:3]] == [
                f"accepted {archive / 'ECG0001'}",
                f"accepted {archive / 'scan.dcm'}",
                f"accepted {archive / 'subject1.txt'}",
            ]
            assert "(Philips XML, ecg id" in lines[0] and "(HL7 aECG, ecg id" in lines[2]
            assert lines[3].startswith(f"skipped {archive / 'notes.txt'}: not DICOM, Philips XML or HL7 aECG")
            assert lines[4] == "3 files: 3 accepted, 0 duplicate, 0 refused; 1 skipped"

            def all_final() -> bool:
                with sf() as s:
                    return s.scalar(select(func.count()).where(EcgInstance.status.in_(FINAL))) == 3

            wait_until(all_final, 240, what="every ECG final", procs=[proc])
            wait_until(lambda: len(ehr.messages()) >= 3, 90, what="an ORU for each ECG", procs=[proc])
            again = subprocess.run(
                [sys.executable, "-m", "gateway", "ingest", str(archive / "subject1.txt")],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert again.returncode == 0 and "1 files: 0 accepted, 1 duplicate, 0 refused" in again.stdout
        finally:
            assert stop(proc) == 0, log.read_text()[-3000:]
        received = [m["message"] for m in ehr.messages()]
    with sf() as s:
        rows = {r.source_format + ":" + (r.patient_id or ""): r for r in s.scalars(select(EcgInstance))}
        delivered = s.scalar(select(func.count()).where(Hl7Message.status == "delivered"))
    engine.dispose()
    assert sorted(rows) == ["aecg:subject1", "philips:1112010721168bdc", "philips:9999"]
    assert {r.status for r in rows.values()} == {PROCESSED}, {k: r.error for k, r in rows.items()}
    assert {r.peer_address for r in rows.values()} == {"ingest"}
    assert delivered == len(received) == 3
    by_patient = {segment(m, "PID")[3].split("^")[0]: m for m in received}
    aecg = by_patient["subject1"]
    pid = segment(aecg, "PID")
    assert (pid[5], pid[7], pid[8]) == ("Clark", "19530508", "M")
    assert segment(aecg, "OBR")[7].startswith("20021122091000")
    philips = by_patient["9999"]
    pid = segment(philips, "PID")
    assert (pid[7], pid[8]) == ("19760101", "F")
    assert segment(philips, "OBR")[7].startswith("20081223194446")
    for row in rows.values():
        report = row.report or {}
        assert report["source_format"] == row.source_format
        assert report["lead_identification"]
    # no PHI in the gateway's log
    text = log.read_text()
    for phi in ("Clark", "subject1", "1112010721168bdc", "19530508"):
        assert phi not in text
