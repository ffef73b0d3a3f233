"""Identity values at the door and identity changes across versions (issue 13, item 4).

No network here: ``read_header`` + ``checked_text`` (the header values),
``store_instance`` (the door), the Worker (which version is processed, and
whether its ORU is a correction).  The same attacks through the real path
(storescu -> serve -> npm receiver -> python-hl7) are in
``tests/test_identity_e2e.py``.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import hl7
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import func, select, update

from gateway.admin.queries import ecg_detail, find_ecg
from gateway.config import Config
from gateway.deliver.outbox import resend
from gateway.process.worker import Worker
from gateway.receive.header import ValueProblem, checked_text, read_header
from gateway.receive.spool import (
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    IDENTITY_CONFLICT,
    SUCCESS,
    IncomingInstance,
    StoreContext,
    header_values,
    store_instance,
)
from gateway.store.models import PROCESSED, RECEIVED, REJECTED, AuditLog, EcgInstance, Hl7Message
from gateway.store.spool import Spool
from gateway.store.versions import IDENTITY_CHANGED_AUDIT, IDENTITY_CHANGED_REASON
from receive_helpers import ecg_bytes, spool_files

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns when a test writes an invalid value
UID = "1.3.6.1.4.1.20029.40.20130125105919.5407.1.1"
#: PHI markers: none may appear in a log line.
PATIENT_A, PATIENT_B = "PATAAA111", "PATBBB222"


def _store(raw: bytes, session_factory, spool: Path, calling_ae: str = "CART1"):  # type: ignore[no-untyped-def]
    return store_instance(
        IncomingInstance.from_file(
            raw, calling_ae=calling_ae, peer_address="127.0.0.1", transfer_syntax_uid="1.2.840.10008.1.2.1"
        ),
        StoreContext(session_factory, Spool(spool)),
    )


def _gateway_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the gateway logged (pydicom's own warnings while a test writes a bad value are not)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gateway"))


def _rows(session_factory) -> list[EcgInstance]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return list(s.scalars(select(EcgInstance).order_by(EcgInstance.id)))


def _changes(keyword: str, value: object) -> dict[str, object]:
    """``keyword`` set to ``value``, written in UTF-8 (any character can be)."""
    return {"SpecificCharacterSet": "ISO_IR 192", keyword: value}


def _requested(procedure_id: str) -> Sequence:
    item = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an invalid value may be the point
        item.RequestedProcedureID = procedure_id
    return Sequence([item])


# --- the header values (read_header + checked_text) ---------------------------------------------

#: keyword -> (value written into the sample, problem expected); every identity value the door keeps.
BAD_IDENTITY = {
    "PatientID multi-valued": ("PatientID", "123\\456", "PatientID: 2 values where DICOM allows one (VM 1)"),
    "PatientID 10,000 characters": ("PatientID", "9" * 10_000, "PatientID: 10000 characters; VR LO allows 64"),
    "PatientID 65 characters": ("PatientID", "9" * 65, "PatientID: 65 characters; VR LO allows 64"),
    "PatientID control character": ("PatientID", "12\r34", "PatientID: control or format character U+000D"),
    "PatientID right-to-left override": ("PatientID", "12\u202e34", "PatientID: control or format character U+202E"),
    "PatientName multi-valued": ("PatientName", "Doe^John\\Roe^Richard", "PatientName: 2 values"),
    "PatientName group of 65": (
        "PatientName",
        "D" * 40 + "^" + "J" * 24,
        "PatientName: a name group of 65 characters; PN allows 64",
    ),
    "PatientName 6 components": ("PatientName", "a^b^c^d^e^f", "PatientName: 6 name components; PN allows 5"),
    "PatientName 4 groups": ("PatientName", "a=b=c=d", "PatientName: 4 name groups; PN allows 3"),
    "IssuerOfPatientID multi-valued": ("IssuerOfPatientID", "HOSP\\OTHER", "IssuerOfPatientID: 2 values"),
    "IssuerOfPatientID 65 characters": (
        "IssuerOfPatientID",
        "I" * 65,
        "IssuerOfPatientID: 65 characters; VR LO allows 64",
    ),
    "AccessionNumber 17 characters": ("AccessionNumber", "A" * 17, "AccessionNumber: 17 characters; VR SH allows 16"),
    "AccessionNumber multi-valued": ("AccessionNumber", "A1\\A2", "AccessionNumber: 2 values"),
    "StudyInstanceUID 65 characters": (
        "StudyInstanceUID",
        "1." + "2" * 63,
        "StudyInstanceUID: 65 characters; VR UI allows 64",
    ),
    "StudyInstanceUID multi-valued": ("StudyInstanceUID", "1.2.3\\1.2.4", "StudyInstanceUID: 2 values"),
    "SeriesInstanceUID 65 characters": (
        "SeriesInstanceUID",
        "1." + "2" * 63,
        "SeriesInstanceUID: 65 characters; VR UI allows 64",
    ),
    "PlacerOrderNumber 65 characters": (
        "PlacerOrderNumberImagingServiceRequest",
        "P" * 65,
        "PlacerOrderNumberImagingServiceRequest: 65 characters; VR LO allows 64",
    ),
    "FillerOrderNumber multi-valued": (
        "FillerOrderNumberImagingServiceRequest",
        "F1\\F2",
        "FillerOrderNumberImagingServiceRequest: 2 values",
    ),
    "RequestedProcedureID 17 characters": (
        "RequestAttributesSequence",
        _requested("R" * 17),
        "RequestedProcedureID: 17 characters; VR SH allows 16",
    ),
}


@pytest.mark.parametrize("case", BAD_IDENTITY)
def test_identity_value_breaking_its_vr_is_a_problem_never_a_cut_value(sample_path: Path, case: str) -> None:
    keyword, value, problem = BAD_IDENTITY[case]
    values = header_values(read_header(ecg_bytes(sample_path, changes=_changes(keyword, value))))
    assert len(values.problems) == 1 and values.problems[0].startswith(problem), values.problems
    assert values.dropped == []
    column = {"RequestAttributesSequence": "requested_procedure_id"}.get(keyword)
    for name, stored in values.columns.items():
        assert stored is None or not stored.startswith("["), name  # never Python's list text
        assert stored is None or len(stored) <= 64, name  # nothing cut: refused instead
    if column:
        assert values.columns[column] is None


def test_checked_text_problems_never_quote_the_value(sample_path: Path) -> None:
    ds = read_header(ecg_bytes(sample_path, changes={"PatientID": "SECRET\\VALUE"})).dataset
    with pytest.raises(ValueProblem) as exc:
        checked_text(ds, "PatientID")
    assert "SECRET" not in str(exc.value) and "VALUE" not in str(exc.value)


def test_good_values_are_read_as_written(sample_path: Path) -> None:
    raw = ecg_bytes(
        sample_path,
        changes={
            "PatientID": "9" * 64,
            "IssuerOfPatientID": "UNIVERSITY-HOSPITAL-X",
            "AccessionNumber": "A" * 16,
            "PatientName": "Müller^Zoë^^Dr=ミュラー^ゾーイ",
            "SpecificCharacterSet": ["ISO_IR 192"],
            "RequestAttributesSequence": _requested("RP-1"),
        },
    )
    values = header_values(read_header(raw))
    assert values.problems == [] and values.dropped == []
    c = values.columns
    assert (c["patient_id"], c["issuer_of_patient_id"], c["accession_number"], c["requested_procedure_id"]) == (
        "9" * 64,
        "UNIVERSITY-HOSPITAL-X",
        "A" * 16,
        "RP-1",
    )
    assert c["patient_name"] == "Müller^Zoë^^Dr=ミュラー^ゾーイ"
    assert c["patient_birth_date"] == "19710123" and c["patient_sex"] == "F"


def test_lenient_get_joins_several_values_by_backslash(sample_path: Path) -> None:
    """``EcgHeader.get`` (UIDs for the spool name, the SOP class, reasons) gives the DICOM text."""
    header = read_header(ecg_bytes(sample_path, changes={"PatientID": "123\\456", "Manufacturer": "GE\\Marquette"}))
    assert header.get("PatientID") == "123\\456"
    assert header.get("Manufacturer") == "GE\\Marquette"


@pytest.mark.parametrize(
    ("keyword", "value", "flag"),
    [
        ("Manufacturer", "GE\\Marquette", "invalid_value:Manufacturer"),
        ("ManufacturerModelName", "M" * 65, "invalid_value:ManufacturerModelName"),
        ("DeviceSerialNumber", "S1\\S2", "invalid_value:DeviceSerialNumber"),
        ("PatientSex", "M\\F", "invalid_value:PatientSex"),
        ("PatientBirthDate", "19600101\\19700101", "invalid_value:PatientBirthDate"),
        ("PatientBirthDate", "1960.01.01", "invalid_value:PatientBirthDate"),  # ACR-NEMA style, 10 characters
        ("AcquisitionDateTime", "20240102030405\\20240102030406", "invalid_value:AcquisitionDateTime"),
    ],
)
def test_other_values_breaking_their_vr_are_left_out_and_flagged(
    sample_path: Path,
    session_factory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    keyword: str,
    value: str,
    flag: str,
) -> None:
    """Not identity: the ECG is stored and analysed, the value is left out
    (never stored cut or as a list), the row is flagged, a WARNING names the element."""
    caplog.set_level(logging.INFO, logger="gateway.receive")
    spool = tmp_path / "spool"
    outcome = _store(ecg_bytes(sample_path, changes={keyword: value}), session_factory, spool)
    assert outcome.status == SUCCESS and outcome.ecg_id
    [row] = _rows(session_factory)
    assert row.status == RECEIVED and row.flags == [flag]
    column = {
        "Manufacturer": "manufacturer",
        "ManufacturerModelName": "device_model",
        "DeviceSerialNumber": "device_serial",
        "PatientSex": "patient_sex",
        "PatientBirthDate": "patient_birth_date",
        "AcquisitionDateTime": "acquisition_datetime",
    }[keyword]
    if keyword == "AcquisitionDateTime":  # the fallback: ContentDate + ContentTime
        assert row.acquisition_datetime == "20130125105919"
    else:
        assert getattr(row, column) is None
    assert row.patient_id == "642341"
    assert (
        f"SOP Instance UID {row.sop_instance_uid} (ecg id {row.id}): left out, breaking their VR: {keyword}:"
        in caplog.text
    )
    for part in value.split("\\"):  # (single letters are everywhere)
        assert len(part) < 4 or part not in _gateway_log(caplog)


# --- refusals at the door (store_instance) ------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "PatientID multi-valued",
        "PatientID 10,000 characters",
        "PatientName multi-valued",
        "IssuerOfPatientID 65 characters",
        "AccessionNumber 17 characters",
        "StudyInstanceUID 65 characters",
        "RequestedProcedureID 17 characters",
    ],
)
def test_identity_value_breaking_its_vr_is_refused_at_the_door(
    sample_path: Path, session_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.receive")
    keyword, value, problem = BAD_IDENTITY[case]
    spool = tmp_path / "spool"
    raw = ecg_bytes(sample_path, uid=UID, changes=_changes(keyword, value))
    outcome = _store(raw, session_factory, spool)
    assert outcome.status == DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert outcome.reason.startswith("identity values break their VR: " + problem), outcome.reason
    assert spool_files(spool) == []  # nothing stored as an instance
    [row] = _rows(session_factory)
    assert (row.id, row.status, row.error, row.flags) == (
        outcome.ecg_id,
        REJECTED,
        outcome.reason,
        ["rejected_at_receive"],
    )
    assert (spool / row.spool_path).read_bytes() == raw  # kept for the admin, quarantined
    column = {
        "PatientID": "patient_id",
        "PatientName": "patient_name",
        "IssuerOfPatientID": "issuer_of_patient_id",
        "AccessionNumber": "accession_number",
        "StudyInstanceUID": "study_instance_uid",
        "RequestAttributesSequence": "requested_procedure_id",
    }[keyword]
    assert getattr(row, column) is None  # never stored cut
    if keyword != "PatientID":
        assert row.patient_id == "642341"  # the rest is kept so the admin can find it
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("gateway")]
    assert f"rejected SOP Instance UID {UID} (sha256 {row.sha256[:12]}, ecg id {row.id})" in line
    assert "0xA900" in line
    for part in str(value).split("\\"):
        if isinstance(value, str):
            assert part[:8] not in _gateway_log(caplog)  # no PHI in the log


# --- identity changes across versions ----------------------------------------------------------


def _version(sample_path: Path, patient_id: str, issuer: str | None = None, station: str = "1,0") -> bytes:
    changes = {"PatientID": patient_id, "StationName": station}
    if issuer:
        changes["IssuerOfPatientID"] = issuer
    return ecg_bytes(sample_path, uid=UID, changes=changes)


@pytest.mark.parametrize("change", ["patient id", "issuer"])
def test_another_patient_under_a_known_uid_is_quarantined_and_audited(
    sample_path: Path, session_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.receive")
    spool = tmp_path / "spool"
    first = _store(_version(sample_path, PATIENT_A, "HOSP-A"), session_factory, spool, calling_ae="CART1")
    other = (
        _version(sample_path, PATIENT_B, "HOSP-A")
        if change == "patient id"
        else _version(sample_path, PATIENT_A, "HOSP-B")
    )
    second = _store(other, session_factory, spool, calling_ae="CART2")
    assert first.status == SUCCESS
    assert second.status == IDENTITY_CONFLICT == 0xC002
    assert second.reason == f"{IDENTITY_CHANGED_REASON} (version 1 is ecg id {first.ecg_id})"
    v1, quarantined = _rows(session_factory)
    assert (quarantined.id, quarantined.version, quarantined.status, quarantined.calling_ae) == (
        second.ecg_id,
        2,
        REJECTED,
        "CART2",
    )
    assert quarantined.flags == ["rejected_at_receive", "identity_changed"] and quarantined.error == second.reason
    assert Spool(spool).resolve(quarantined.spool_path).parent == Spool(spool).rejected
    assert spool_files(spool) == [spool / v1.spool_path]
    with session_factory() as s:
        [entry] = s.scalars(select(AuditLog)).all()
        assert (entry.actor, entry.action, entry.target) == (
            "dicom:CART2@127.0.0.1",
            IDENTITY_CHANGED_AUDIT,
            f"ecg:{quarantined.id}",
        )
        assert entry.detail == {
            "sop_instance_uid": UID,
            "version": 2,
            "sha256": quarantined.sha256,
            "reference_ecg_id": v1.id,
            "reference_version": 1,
        }
        # the admin API and web view keep resolving the UID to the first patient's version
        assert find_ecg(s, UID).id == v1.id
        assert ecg_detail(s, UID)["patient_id"] == PATIENT_A
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("gateway")]
    assert f"rejected SOP Instance UID {UID} (sha256 {quarantined.sha256[:12]}, ecg id {quarantined.id})" in line
    assert f"0xC002: {IDENTITY_CHANGED_REASON} (version 1 is ecg id {v1.id})" in line
    log = _gateway_log(caplog)
    assert PATIENT_A not in log and PATIENT_B not in log and "HOSP-" not in log

    # sent again (the cart retries): the same quarantined row, no second audit row
    again = _store(other, session_factory, spool, calling_ae="CART2")
    assert (again.status, again.ecg_id) == (IDENTITY_CONFLICT, quarantined.id)
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(AuditLog)) == 1
        assert s.scalar(select(func.count()).select_from(EcgInstance)) == 2

    # the first patient's own new version is accepted, and then stands for the UID
    same = _store(_version(sample_path, PATIENT_A, "HOSP-A", station="ROOM 2"), session_factory, spool)
    assert same.status == SUCCESS and not same.duplicate
    with session_factory() as s:
        v3 = s.get(EcgInstance, same.ecg_id)
        assert (v3.version, v3.flags, v3.patient_id) == (3, ["new_version"], PATIENT_A)
        assert find_ecg(s, UID).id == v3.id


def test_identity_is_compared_with_the_first_version_accepted_at_the_door(
    sample_path: Path, session_factory, tmp_path: Path
) -> None:
    """A version refused at the door is no reference: the first accepted one is."""
    spool = tmp_path / "spool"
    refused = _store(_version(sample_path, "9" * 65), session_factory, spool)
    first = _store(_version(sample_path, PATIENT_A), session_factory, spool)
    other = _store(_version(sample_path, PATIENT_B), session_factory, spool)
    assert (refused.status, first.status, other.status) == (
        DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        SUCCESS,
        IDENTITY_CONFLICT,
    )
    with session_factory() as s:
        assert s.get(EcgInstance, first.ecg_id).flags == []  # no accepted version before it
        assert find_ecg(s, UID).id == first.ecg_id
    assert other.reason.endswith(f"(version 2 is ecg id {first.ecg_id})")


# --- the worker: which version is processed, and corrections ------------------------------------


def _config(db_url: str, tmp_path: Path, model: Path) -> Config:
    return Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str((tmp_path / "spool").resolve())},
            "model": {"files": [str(model)], "batch_size": 4, "max_wait_ms": 0},
            "process": {"lease_seconds": 60, "max_attempts": 2},
        }
    )


def _drain(worker: Worker) -> None:
    for _ in range(20):
        if not worker.run_once():
            return
    raise AssertionError("worker did not drain the queue")


def _oru(session_factory, ecg_id: int) -> hl7.Message:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        [payload] = s.scalars(select(Hl7Message.payload).where(Hl7Message.ecg_id == ecg_id)).all()
    return hl7.parse(payload)


@pytest.mark.parametrize("first_sent", ["P", "F"])
def test_same_patient_new_version_is_processed_and_sent_as_a_correction(
    db_url, session_factory, tmp_path: Path, demo_model, demo_ensemble, sample_path: Path, first_sent
) -> None:
    """A later version of an instance whose result went out: the same order (filler order
    number).  After a final result (F) it is a correction (C); after a preliminary one (P:
    the demo model's reads are always preliminary, as AI reads are by default) it is a
    preliminary again: C replaces only a final result (HL7 table 0085)."""
    cfg = _config(db_url, tmp_path, demo_model)
    spool = Path(cfg.storage.spool_dir)
    worker = Worker(cfg, session_factory, demo_ensemble)
    first = _store(_version(sample_path, PATIENT_A, "HOSP-A"), session_factory, spool)
    _drain(worker)
    if first_sent == "F":  # as a site with [hl7] ai_result_status = "F" (or a confirmed result) has sent it
        with session_factory() as s, s.begin():
            m = s.scalars(select(Hl7Message).where(Hl7Message.ecg_id == first.ecg_id)).one()
            m.payload = re.sub(r"(\rOBR\|[^\r]*\|EC\|)P", r"\1F", m.payload)
            assert "|EC|F" in m.payload
    second = _store(_version(sample_path, PATIENT_A, "HOSP-A", station="ROOM 2"), session_factory, spool)
    _drain(worker)
    f, c = _oru(session_factory, first.ecg_id), _oru(session_factory, second.ecg_id)
    status = "C" if first_sent == "F" else "P"
    assert str(f.segment("OBR")[25]) == first_sent
    assert str(c.segment("OBR")[25]) == status
    obx = c.segments("OBX")
    assert len(obx) >= 8 and {str(seg[11]) for seg in obx} == {status}
    assert c["PID.F3.R1.C1"] == PATIENT_A and c["MSH.F11"] == "D"  # the demo model: debugging
    # the new result names the order it replaces: the first version's filler order number
    assert c["ORC.F3.R1.C1"] == c["OBR.F3.R1.C1"] == f["ORC.F3.R1.C1"] == str(first.ecg_id)
    with session_factory() as s:
        assert s.get(EcgInstance, second.ecg_id).status == PROCESSED
        # a manual resend keeps the status the message was sent with
        ids = {e: s.scalar(select(Hl7Message.id).where(Hl7Message.ecg_id == e)) for e in (first.ecg_id, second.ecg_id)}
        again_c = resend(s, ids[second.ecg_id], "test", cfg.hl7)
        again_f = resend(s, ids[first.ecg_id], "test", cfg.hl7)
        s.commit()
        assert str(hl7.parse(again_c.payload).segment("OBR")[25]) == status
        # (the first, rebuilt: a demo model's read is never final, so P even where F was simulated)
        assert str(hl7.parse(again_f.payload).segment("OBR")[25]) == "P"


def test_worker_quarantines_an_identity_change_stored_before_the_door_checked(
    db_url,
    session_factory,
    tmp_path: Path,
    demo_model,
    demo_ensemble,
    sample_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A version 2 for another patient already in the queue (stored by a
    gateway without the door check): the worker rejects it, sends nothing,
    audits it."""
    caplog.set_level(logging.INFO, logger="gateway.process")
    cfg = _config(db_url, tmp_path, demo_model)
    spool = Path(cfg.storage.spool_dir)
    first = _store(_version(sample_path, PATIENT_A), session_factory, spool)
    second = _store(_version(sample_path, PATIENT_A, station="ROOM 2"), session_factory, spool)
    with session_factory() as s:  # what the old door let through
        s.execute(update(EcgInstance).where(EcgInstance.id == second.ecg_id).values(patient_id=PATIENT_B))
        s.commit()
    _drain(Worker(cfg, session_factory, demo_ensemble))
    with session_factory() as s:
        v2 = s.get(EcgInstance, second.ecg_id)
        assert (v2.status, v2.flags) == (REJECTED, ["new_version", "identity_changed"])
        assert v2.error == f"{IDENTITY_CHANGED_REASON} (version 1 is ecg id {first.ecg_id})"
        assert v2.prediction is None
        assert s.scalars(select(Hl7Message.ecg_id)).all() == [first.ecg_id]  # no ORU for B
        [entry] = s.scalars(select(AuditLog)).all()
        assert (entry.action, entry.target, entry.detail["reference_ecg_id"]) == (
            IDENTITY_CHANGED_AUDIT,
            f"ecg:{v2.id}",
            first.ecg_id,
        )
        assert entry.actor.startswith("worker:")
        assert find_ecg(s, UID).id == first.ecg_id  # the UID still stands for patient A's version
    assert (
        f"ECG id={v2.id} sop={UID} quarantined, no ORU: {IDENTITY_CHANGED_REASON} (version 1 is ecg id {first.ecg_id})"
        in caplog.text
    )
    log = _gateway_log(caplog)
    assert PATIENT_A not in log and PATIENT_B not in log
