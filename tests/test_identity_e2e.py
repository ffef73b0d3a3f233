"""Wrong identity text and identity changes through the real path (issue 13, item 4).

DCMTK storescu (the cart) -> a running ``ecg-gateway serve`` (untrained demo
model) -> the npm simple-hl7 receiver (the EHR) -> python-hl7 (an
independent parser), on SQLite and on PostgreSQL.  One gateway per database
kind serves every test in this module; each test uses its own UIDs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from admin_helpers import web_login
from conftest import DB_KINDS, free_port, migrated_database
from deliver_helpers import Receiver, receiver
from e2e_helpers import gateway_env, start_serve, stop, wait_for_port, wait_until
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import PROCESSED, REJECTED, AuditLog, EcgInstance
from gateway.store.versions import IDENTITY_CHANGED_AUDIT, IDENTITY_CHANGED_REASON
from receive_helpers import storescu

# one serve per module; identity SQL is tested in-process on both databases (test_receive_identity.py)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore"), pytest.mark.one_db("postgresql", "sqlite")]
TOKEN = "test-token-0123456789"
SAMPLE_PATIENT_ID = "642341"  # pydicom's sample ECG
A900, C002 = 0xA900, 0xC002


@dataclass
class Gateway:
    """One running ``serve`` with its database, ports and EHR."""

    db_url: str
    session_factory: Any
    dicom_port: int
    admin_port: int
    ehr: Receiver
    log: Path
    proc: Any
    tmp: Path

    def api(self, path: str) -> httpx.Response:
        return httpx.get(
            f"http://127.0.0.1:{self.admin_port}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )

    def web_page(self, path: str) -> str:
        """``path`` as a browser sees it after logging in with the token."""
        with httpx.Client(base_url=f"http://127.0.0.1:{self.admin_port}", timeout=10) as client:
            assert web_login(client, TOKEN, path).status_code == 200
            page = client.get(path)
            assert page.status_code == 200, page.text[:500]
            return page.text

    def messages_for(self, study_uid: str) -> list[hl7.Message]:
        """ORUs the EHR received that carry ``study_uid``, parsed by python-hl7."""
        return [hl7.parse(m["message"]) for m in self.ehr.messages() if study_uid in m["message"]]

    def row(self, ecg_id: int) -> EcgInstance:
        with self.session_factory() as s:
            return s.get(EcgInstance, ecg_id)

    def rows(self, sop_uid: str) -> list[EcgInstance]:
        with self.session_factory() as s:
            return list(
                s.scalars(
                    select(EcgInstance).where(EcgInstance.sop_instance_uid == sop_uid).order_by(EcgInstance.version)
                )
            )

    def wait_processed(self, ecg_id: int) -> EcgInstance:
        wait_until(
            lambda: self.row(ecg_id).status in (PROCESSED, REJECTED, "failed"),
            120,
            what=f"ecg {ecg_id} final",
            procs=[self.proc],
        )
        return self.row(ecg_id)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module", params=DB_KINDS)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, demo_model: Path
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp(f"identity-{request.param}")
    urls = migrated_database(request, request.param, tmp)
    db_url = next(urls)
    engine = make_engine(db_url)
    dicom_port, admin_port, hl7_port = free_port(), free_port(), free_port()
    env = gateway_env(
        tmp,
        db_url,
        demo_model,
        dicom_port,
        admin_port,
        ECG_GATEWAY_HL7__ENABLED="true",
        ECG_GATEWAY_HL7__PORT=str(hl7_port),
        ECG_GATEWAY_ADMIN__TOKEN=TOKEN,
    )
    try:
        with receiver(hl7_port, tmp / "hl7.jsonl") as ehr:
            proc = start_serve(env, tmp / "serve.log")
            try:
                wait_for_port(dicom_port, proc=proc)
                wait_for_port(admin_port, proc=proc)
                yield Gateway(
                    db_url, make_sessionmaker(engine), dicom_port, admin_port, ehr, tmp / "serve.log", proc, tmp
                )
            finally:
                assert stop(proc) == 0, (tmp / "serve.log").read_text()[-3000:]
    finally:
        engine.dispose()
        urls.close()  # drops a PostgreSQL test database


def _ecg(
    sample_path: Path,
    folder: Path,
    name: str,
    *,
    sop_uid: str | None = None,
    study_uid: str | None = None,
    **attributes: Any,
) -> tuple[Path, str, str]:
    """The sample with new (or given) UIDs and ``attributes`` set; (file, SOP UID, Study UID)."""
    ds = dcmread(sample_path)
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid values are the point
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)


def _send(gw: Gateway, files: list[Path], calling: str = "CART1") -> list[int]:
    results, output = storescu(gw.dicom_port, files, calling=calling, called="ECGGW")
    assert [Path(f).name for f, _ in results] == [f.name for f in files], output[-3000:]
    return [status for _, status in results]


def _one_row(gw: Gateway, sop_uid: str) -> EcgInstance:
    [row] = gw.rows(sop_uid)
    return row


def _assert_refused(gw: Gateway, sop_uid: str, study_uid: str, reason: str) -> EcgInstance:
    """Refused at the door: a ``rejected`` row saying why, a log line naming
    the SOP Instance UID, no ORU for its study, the API shows the reason."""
    row = _one_row(gw, sop_uid)
    assert row.status == REJECTED and row.flags == ["rejected_at_receive"], (row.status, row.flags)
    assert row.error.startswith("identity values break their VR: " + reason), row.error
    assert (
        f"rejected SOP Instance UID {sop_uid} (sha256 {row.sha256[:12]}, ecg id {row.id}) from CART1@127.0.0.1 "
        f"with status 0xA900: identity values break their VR: {reason}" in gw.log_text()
    )
    assert gw.messages_for(study_uid) == []
    detail = gw.api(f"/api/ecgs/{sop_uid}").json()
    assert (detail["id"], detail["status"], detail["error"]) == (row.id, REJECTED, row.error)
    return row


def _no_python_list_text(gw: Gateway) -> None:
    """No ``['...']`` anywhere the EHR, the database or the admin API sees."""
    for m in gw.ehr.messages():
        assert "['" not in m["message"] and "[u'" not in m["message"], m["message"]
    for row in gw.api("/api/ecgs?limit=1000").json()["items"]:
        assert "['" not in repr({k: v for k, v in row.items() if isinstance(v, str)}), row


def _wait_for_orus(gw: Gateway, study_uid: str, count: int) -> list[hl7.Message]:
    wait_until(
        lambda: len(gw.messages_for(study_uid)) >= count, 120, what=f"{count} ORU(s) for {study_uid}", procs=[gw.proc]
    )
    return gw.messages_for(study_uid)


def test_multivalued_identity_is_refused_never_sent_as_python_text(gateway: Gateway, sample_path: Path) -> None:
    """PatientID ``123\\456`` was sent as PID-3 ``['123', '456']`` (PID-5
    alike).  Now: 0xA900, a ``rejected`` row saying why, no ORU.  A
    multi-valued Manufacturer (not identity) is left out and flagged; that
    ECG is processed and its ORU carries the right PID-3."""
    gw, folder = gateway, gateway.tmp / "multi"
    pid_file, pid_sop, pid_study = _ecg(sample_path, folder, "pid", PatientID="PATX123\\PATY456")
    name_file, name_sop, name_study = _ecg(sample_path, folder, "name", PatientName="Doe^John\\Roe^Richard")
    maker_file, maker_sop, maker_study = _ecg(sample_path, folder, "maker", Manufacturer="Mortara\\Other")
    assert _send(gw, [pid_file, name_file, maker_file]) == [A900, A900, 0x0000]

    _assert_refused(gw, pid_sop, pid_study, "PatientID: 2 values where DICOM allows one (VM 1)")
    _assert_refused(gw, name_sop, name_study, "PatientName: 2 values where DICOM allows one (VM 1)")
    maker = gw.wait_processed(_one_row(gw, maker_sop).id)
    assert (maker.status, maker.flags, maker.manufacturer) == (PROCESSED, ["invalid_value:Manufacturer"], None)
    [oru] = _wait_for_orus(gw, maker_study, 1)
    assert oru["PID.F3.R1.C1"] == SAMPLE_PATIENT_ID
    assert oru["PID.F5"] == "Anonymous"
    _no_python_list_text(gw)
    log = gw.log_text()
    assert "PATX123" not in log and "PATY456" not in log and "Roe^Richard" not in log


def test_overlong_identity_is_refused_not_cut(gateway: Gateway, sample_path: Path) -> None:
    """A PatientID of 10,000 characters was stored and sent cut to 64.  Now
    it, and any identity value longer than its VR allows, is refused (0xA900)
    with the element and the length in the reason; nothing is stored cut."""
    gw, folder = gateway, gateway.tmp / "long"
    cases = {
        "pid": ({"PatientID": "7" * 10_000}, "PatientID: 10000 characters; VR LO allows 64"),
        "issuer": ({"IssuerOfPatientID": "I" * 65}, "IssuerOfPatientID: 65 characters; VR LO allows 64"),
        "accession": ({"AccessionNumber": "A" * 17}, "AccessionNumber: 17 characters; VR SH allows 16"),
        "name": ({"PatientName": "D" * 65}, "PatientName: a name group of 65 characters; PN allows 64"),
    }
    files = {name: _ecg(sample_path, folder, name, **attrs) for name, (attrs, _) in cases.items()}
    ok_file, ok_sop, ok_study = _ecg(sample_path, folder, "ok", PatientID="7" * 64)  # the limit itself is fine
    assert _send(gw, [f for f, _, _ in files.values()] + [ok_file]) == [A900] * len(cases) + [0x0000]
    for name, (_, sop, study) in files.items():
        row = _assert_refused(gw, sop, study, cases[name][1])
        column = {
            "pid": "patient_id",
            "issuer": "issuer_of_patient_id",
            "accession": "accession_number",
            "name": "patient_name",
        }[name]
        assert getattr(row, column) is None  # not cut to fit
        [(keyword, value)] = cases[name][0].items()
        assert (
            str(dcmread(gw.tmp / "spool" / row.spool_path).get(keyword)) == value
        )  # kept whole, quarantined, for the admin
    ok = gw.wait_processed(_one_row(gw, ok_sop).id)
    assert ok.status == PROCESSED and ok.patient_id == "7" * 64
    [oru] = _wait_for_orus(gw, ok_study, 1)
    assert oru["PID.F3.R1.C1"] == "7" * 64
    assert "7" * 64 not in gw.log_text()


def test_another_patient_under_a_known_uid_is_quarantined_and_a_same_patient_version_is_a_correction(
    gateway: Gateway, sample_path: Path
) -> None:
    """Same SOP Instance UID and Study UID, another patient, another calling
    AE: was stored as version 2, processed, shown for the UID, and sent as a
    final ORU for B under A's study.  Now: 0xC002, quarantined (rejected,
    no ORU, WARNING, audit), the UID keeps resolving to A.  A's own new
    version is processed and sent for the same order (filler order number);
    the demo model's reads are preliminary (OBR-25 = P, OBX-11 = P, MSH-11 = D),
    so it follows as a preliminary again: C replaces only a final result
    (C after F: tests/test_receive_identity.py)."""
    gw, folder = gateway, gateway.tmp / "versions"
    sop, study = generate_uid(), generate_uid()
    a_file, _, _ = _ecg(
        sample_path,
        folder,
        "a",
        sop_uid=sop,
        study_uid=study,
        PatientID="PATAAA111",
        IssuerOfPatientID="HOSP",
        PatientName="Alpha^Ann",
    )
    b_file, _, _ = _ecg(
        sample_path,
        folder,
        "b",
        sop_uid=sop,
        study_uid=study,
        PatientID="PATBBB222",
        IssuerOfPatientID="HOSP",
        PatientName="Beta^Bob",
    )
    a2_file, _, _ = _ecg(
        sample_path,
        folder,
        "a2",
        sop_uid=sop,
        study_uid=study,
        PatientID="PATAAA111",
        IssuerOfPatientID="HOSP",
        PatientName="Alpha^Ann",
        StationName="ROOM 2",
    )

    assert _send(gw, [a_file], calling="CART1") == [0x0000]
    [v1] = gw.rows(sop)
    assert gw.wait_processed(v1.id).status == PROCESSED
    [first] = _wait_for_orus(gw, study, 1)
    assert str(first.segment("OBR")[25]) == "P" and first["MSH.F11"] == "D"

    assert _send(gw, [b_file], calling="CART2") == [C002]
    v1, quarantined = gw.rows(sop)
    reason = f"{IDENTITY_CHANGED_REASON} (version 1 is ecg id {v1.id})"
    assert (quarantined.version, quarantined.status, quarantined.error, quarantined.calling_ae) == (
        2,
        REJECTED,
        reason,
        "CART2",
    )
    assert quarantined.flags == ["rejected_at_receive", "identity_changed"]
    with gw.session_factory() as s:
        [entry] = s.scalars(
            select(AuditLog).where(
                AuditLog.action == IDENTITY_CHANGED_AUDIT, AuditLog.target == f"ecg:{quarantined.id}"
            )
        ).all()
        assert entry.actor == "dicom:CART2@127.0.0.1" and entry.detail["reference_ecg_id"] == v1.id
    assert (
        f"rejected SOP Instance UID {sop} (sha256 {quarantined.sha256[:12]}, ecg id {quarantined.id}) "
        f"from CART2@127.0.0.1 with status 0xC002: {reason}"
    ) in gw.log_text()
    # the admin API and web view still show patient A for the UID
    detail = gw.api(f"/api/ecgs/{sop}").json()
    assert (detail["id"], detail["patient_id"], detail["version"]) == (v1.id, "PATAAA111", 1)
    page = gw.web_page(f"/ecgs/{sop}")
    assert "PATAAA111" in page and "PATBBB222" not in page

    # A's own new version: processed, and its ORU replaces the first (same order)
    assert _send(gw, [a2_file], calling="CART1") == [0x0000]
    v3 = gw.rows(sop)[2]
    assert (v3.version, v3.flags) == (3, ["new_version"])
    assert gw.wait_processed(v3.id).status == PROCESSED
    orus = _wait_for_orus(gw, study, 2)
    assert len(orus) == 2  # P for version 1, P for version 3, nothing for B
    correction = orus[1]
    assert str(correction.segment("OBR")[25]) == "P"
    obx = correction.segments("OBX")
    assert len(obx) >= 8 and {str(seg[11]) for seg in obx} == {"P"}
    assert correction["OBR.F3.R1.C1"] == first["OBR.F3.R1.C1"] == str(v1.id)  # the order it corrects
    for msg in orus:
        assert msg["PID.F3.R1.C1"] == "PATAAA111"
        assert msg["PID.F3.R1.C4"] == "HOSP"
        assert "PATBBB222" not in str(msg) and "Beta" not in str(msg)
    assert gw.api(f"/api/ecgs/{sop}").json()["id"] == v3.id
    log = gw.log_text()
    assert "PATAAA111" not in log and "PATBBB222" not in log and "Beta^Bob" not in log
