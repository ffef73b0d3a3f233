"""The storage path (store_instance) and the header reader, without a network."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from conftest import free_port
from gateway.dicomio.reader import DicomError
from gateway.receive.header import read_header
from gateway.receive.spool import (
    CANNOT_UNDERSTAND,
    CANNOT_UNDERSTAND_INVALID_UID,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
    IncomingInstance,
    StoreContext,
    store_instance,
)
from gateway.store.models import RECEIVED, REJECTED, EcgInstance
from gateway.store.spool import Spool
from receive_helpers import GENERAL_32BIT_ECG, ecg_bytes, spool_files

SAMPLE_UID = "1.3.6.1.4.1.20029.40.20130125105919.5407.1.1"


def _store(raw: bytes, session_factory, spool: Path, **context):  # type: ignore[no-untyped-def]
    incoming = IncomingInstance.from_file(
        raw, calling_ae="CART1", peer_address="127.0.0.1", transfer_syntax_uid="1.2.840.10008.1.2.1"
    )
    return store_instance(incoming, StoreContext(session_factory, Spool(spool), **context))


def _rows(session_factory) -> list[EcgInstance]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return list(s.scalars(select(EcgInstance).order_by(EcgInstance.id)))


# --- header -----------------------------------------------------------------


@pytest.mark.parametrize("transfer_syntax", [None, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_header_matches_a_full_pydicom_read(sample_path: Path, transfer_syntax: str | None) -> None:
    raw = ecg_bytes(sample_path, uid=SAMPLE_UID, transfer_syntax=transfer_syntax)
    header = read_header(raw)
    full = dcmread(io.BytesIO(raw))
    for keyword in (
        "SOPInstanceUID",
        "SOPClassUID",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyInstanceUID",
        "Manufacturer",
        "ManufacturerModelName",
        "ContentTime",
    ):
        assert header.get(keyword) == (str(full.get(keyword)).strip() or None), keyword
    assert [
        (g.label, g.channels, g.samples, g.sampling_frequency, g.bits_allocated, g.data_bytes) for g in header.groups
    ] == [
        (
            str(w.MultiplexGroupLabel),
            w.NumberOfWaveformChannels,
            w.NumberOfWaveformSamples,
            float(w.SamplingFrequency),
            w.WaveformBitsAllocated,
            len(w.WaveformData),
        )
        for w in full.WaveformSequence
    ]
    assert header.groups[0].label == "RHYTHM" and header.groups[0].data_bytes == 240000
    assert header.waveform_problem() is None


def test_header_reads_defined_length_sequences(sample_path: Path) -> None:
    ds = dcmread(sample_path)

    def defined(dataset) -> None:  # type: ignore[no-untyped-def]
        for elem in dataset:
            if elem.VR == "SQ":
                elem.is_undefined_length = False
                for item in elem.value:
                    item.is_undefined_length_sequence_item = False
                    defined(item)

    defined(ds)
    out = io.BytesIO()
    ds.save_as(out)
    header = read_header(out.getvalue())
    assert header.get("PatientID") == "642341"
    assert [g.samples for g in header.groups] == [10000, 1200]


@pytest.mark.parametrize("cut", [200, 5000, 150000])
def test_truncated_bytes_are_a_header_error(sample_path: Path, cut: int) -> None:
    raw = sample_path.read_bytes()
    with pytest.raises(DicomError):
        header = read_header(raw[:cut])
        # a cut at an element boundary still parses: then the waveform is unusable
        if header.waveform_problem():
            raise DicomError(header.waveform_problem())


def test_truncated_bytes_read_as_dcmread_reads_them(sample_path: Path) -> None:
    """The door reads as dcmread (and so as the worker): the file's last
    element (private, 8 bytes) cut short is dropped, as dcmread drops it."""
    raw = sample_path.read_bytes()[:-10]
    header, slow = read_header(raw), dcmread(io.BytesIO(raw))
    assert header.waveform_problem() is None and header.sop_instance_uid == slow.SOPInstanceUID
    assert Tag(0x7001, 0x1153) not in header.dataset and Tag(0x7001, 0x1153) not in slow
    assert Tag(0x7001, 0x1132) in header.dataset


def test_not_dicom_is_a_header_error() -> None:
    with pytest.raises(DicomError, match="DICM|DICOM"):
        read_header(b"hello" * 100)


def test_missing_and_short_waveforms_are_named(sample_path: Path) -> None:
    assert read_header(ecg_bytes(sample_path, drop_waveform=True)).waveform_problem() == "no WaveformSequence"
    ds = dcmread(sample_path)
    for item in ds.WaveformSequence:
        item.WaveformData = item.WaveformData[:100]
    out = io.BytesIO()
    ds.save_as(out)
    problem = read_header(out.getvalue()).waveform_problem()
    assert problem is not None and "240000 expected" in problem


# --- store_instance -----------------------------------------------------------


def test_store_writes_file_and_row(sample_path: Path, session_factory, tmp_path: Path) -> None:
    raw = sample_path.read_bytes()
    spool = tmp_path / "spool"
    outcome = _store(raw, session_factory, spool)
    assert (outcome.status, outcome.duplicate, outcome.reason) == (SUCCESS, False, None)
    [row] = _rows(session_factory)
    assert row.id == outcome.ecg_id
    assert (row.sop_instance_uid, row.version, row.status, row.flags) == (SAMPLE_UID, 1, RECEIVED, [])
    assert (row.patient_id, row.accession_number, row.patient_sex, row.patient_birth_date) == (
        "642341",
        "03028041970546",
        "F",
        "19710123",
    )
    assert row.manufacturer == "Mortara Instrument, Inc." and row.device_model == "el250"
    assert row.acquisition_datetime == "20130125105919"
    assert row.sop_class_uid == "1.2.840.10008.5.1.4.1.1.9.1.1"
    assert (row.calling_ae, row.peer_address, row.size_bytes) == ("CART1", "127.0.0.1", len(raw))
    assert row.sha256 == hashlib.sha256(raw).hexdigest()
    # relative to the spool root: any process mounting the spool anywhere reads the same row
    day = row.received_at.strftime("%Y/%m/%d")
    assert row.spool_path == f"{day}/{SAMPLE_UID}_{row.sha256[:12]}.dcm"
    assert Spool(spool).resolve(row.spool_path).read_bytes() == raw
    assert spool_files(spool) == [spool / row.spool_path]


def test_duplicate_is_success_without_second_copy(sample_path: Path, session_factory, tmp_path: Path, caplog) -> None:
    raw = sample_path.read_bytes()
    spool = tmp_path / "spool"
    first = _store(raw, session_factory, spool)
    with caplog.at_level(logging.INFO, logger="gateway.receive"):
        second = _store(raw, session_factory, spool)
    assert (second.status, second.duplicate, second.ecg_id) == (SUCCESS, True, first.ecg_id)
    assert len(_rows(session_factory)) == 1 and len(spool_files(spool)) == 1
    assert f"duplicate SOP Instance UID {SAMPLE_UID} (ecg id {first.ecg_id}" in caplog.text
    assert "642341" not in caplog.text  # no patient id in logs


def test_same_uid_different_bytes_is_a_flagged_new_version(sample_path: Path, session_factory, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = _store(ecg_bytes(sample_path, uid=SAMPLE_UID), session_factory, spool)
    second = _store(ecg_bytes(sample_path, uid=SAMPLE_UID, changes={"StationName": "ROOM 2"}), session_factory, spool)
    assert second.status == SUCCESS and not second.duplicate and second.ecg_id != first.ecg_id
    rows = _rows(session_factory)
    assert [(r.version, r.flags, r.patient_id) for r in rows] == [(1, [], "642341"), (2, ["new_version"], "642341")]
    assert rows[0].spool_path != rows[1].spool_path
    assert len(spool_files(spool)) == 2


def test_general_32bit_class_is_accepted(sample_path: Path, session_factory, tmp_path: Path) -> None:
    outcome = _store(ecg_bytes(sample_path, sop_class=GENERAL_32BIT_ECG), session_factory, tmp_path / "spool")
    assert outcome.status == SUCCESS


def _assert_rejected(outcome, status: int, session_factory, spool: Path, raw: bytes, reason: str) -> EcgInstance:  # type: ignore[no-untyped-def]
    assert outcome.status == status
    assert reason in (outcome.reason or "")
    assert spool_files(spool) == []  # nothing stored as an instance
    [row] = _rows(session_factory)
    sha = hashlib.sha256(raw).hexdigest()
    assert (row.status, row.id, row.sha256) == (REJECTED, outcome.ecg_id, sha)
    assert reason in row.error
    assert row.spool_path == f"rejected/{sha}.dcm"
    assert (spool / row.spool_path).read_bytes() == raw
    return row


def test_missing_waveform_is_refused_with_a900(sample_path: Path, session_factory, tmp_path: Path) -> None:
    raw = ecg_bytes(sample_path, drop_waveform=True)
    outcome = _store(raw, session_factory, tmp_path / "spool")
    row = _assert_rejected(
        outcome, DATA_SET_DOES_NOT_MATCH_SOP_CLASS, session_factory, tmp_path / "spool", raw, "no WaveformSequence"
    )
    assert row.patient_id == "642341"  # demographics kept so the admin can find it


def test_truncated_file_is_refused_with_c000(sample_path: Path, session_factory, tmp_path: Path) -> None:
    raw = sample_path.read_bytes()[:150000]
    outcome = _store(raw, session_factory, tmp_path / "spool")
    # dcmread's words (the door reads as dcmread does): the body ends inside an element
    row = _assert_rejected(
        outcome, CANNOT_UNDERSTAND, session_factory, tmp_path / "spool", raw, "No tag to read at file position"
    )
    assert row.sop_instance_uid == ""


@pytest.mark.parametrize("bad_uid", ["1.2.3/../../../escaped", "../../x", "1.2." + "3" * 70, "1.02.3"])
def test_invalid_uid_never_becomes_a_path(sample_path: Path, session_factory, tmp_path: Path, bad_uid: str) -> None:
    raw = ecg_bytes(sample_path, uid=bad_uid)
    spool = tmp_path / "a" / "spool"
    outcome = _store(raw, session_factory, spool)
    row = _assert_rejected(outcome, CANNOT_UNDERSTAND_INVALID_UID, session_factory, spool, raw, "not a valid DICOM UID")
    assert row.sop_instance_uid == bad_uid[:64]
    # nothing anywhere under tmp_path but the database and the quarantine copy
    written = {p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith("gateway.db")}
    assert written == {Spool(spool).resolve(row.spool_path)}


def test_same_rejected_bytes_are_recorded_once(sample_path: Path, session_factory, tmp_path: Path) -> None:
    raw = ecg_bytes(sample_path, drop_waveform=True)
    first = _store(raw, session_factory, tmp_path / "spool")
    second = _store(raw, session_factory, tmp_path / "spool")
    assert second.status == first.status == DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert second.ecg_id == first.ecg_id and len(_rows(session_factory)) == 1
    assert spool_files(tmp_path / "spool") == []  # the early placement was withdrawn
    assert len(list((tmp_path / "spool" / "rejected").iterdir())) == 1


def test_rejection_then_valid_instance_under_same_uid(sample_path: Path, session_factory, tmp_path: Path) -> None:
    bad = _store(ecg_bytes(sample_path, uid=SAMPLE_UID, drop_waveform=True), session_factory, tmp_path / "spool")
    good = _store(ecg_bytes(sample_path, uid=SAMPLE_UID), session_factory, tmp_path / "spool")
    assert bad.status == DATA_SET_DOES_NOT_MATCH_SOP_CLASS and good.status == SUCCESS
    rows = _rows(session_factory)
    assert [(r.status, r.version, r.flags) for r in rows] == [(REJECTED, 1, ["rejected_at_receive"]), (RECEIVED, 2, [])]


def test_ct_image_is_refused(session_factory, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    outcome = _store(raw, session_factory, tmp_path / "spool")
    assert outcome.status == DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "not an ECG waveform storage class" in (outcome.reason or "")


def test_simulated_full_disk_is_a700_and_writes_nothing(sample_path: Path, session_factory, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    probed: list[Path] = []

    def full(path: Path) -> int:
        probed.append(path)
        return 100 * 1024 * 1024  # 100 MB free, watermark 500 MB

    outcome = _store(sample_path.read_bytes(), session_factory, spool, min_free_disk_mb=500, free_bytes=full)
    assert (outcome.status, outcome.ecg_id) == (OUT_OF_RESOURCES, None)
    assert "500 MB" in (outcome.reason or "")
    assert probed == [spool]
    assert _rows(session_factory) == [] and [p for p in spool.rglob("*") if p.is_file()] == []


def test_real_statvfs_below_watermark_is_a700(sample_path: Path, session_factory, tmp_path: Path) -> None:
    outcome = _store(sample_path.read_bytes(), session_factory, tmp_path / "spool", min_free_disk_mb=10**12)
    assert outcome.status == OUT_OF_RESOURCES
    assert _rows(session_factory) == []


def test_unreachable_database_is_a700_and_leaves_no_file(sample_path: Path, tmp_path: Path) -> None:
    from gateway.store.db import make_engine, make_sessionmaker

    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none?connect_timeout=2")
    spool = tmp_path / "spool"
    try:
        outcome = _store(sample_path.read_bytes(), make_sessionmaker(engine), spool)
    finally:
        engine.dispose()
    assert outcome.status == OUT_OF_RESOURCES
    assert "database unavailable" in (outcome.reason or "")
    assert [p for p in spool.rglob("*") if p.is_file()] == []


def test_commit_failure_removes_the_written_file(
    sample_path: Path, session_factory, tmp_path: Path, monkeypatch
) -> None:
    """A database that fails at commit (after the file was written): the
    file goes, nothing is acknowledged, and the refused row is not committed
    later by the next user of that connection."""
    spool = tmp_path / "spool"
    engine = session_factory.kw["bind"]

    def fail(dbapi_connection) -> None:  # type: ignore[no-untyped-def]
        raise engine.dialect.loaded_dbapi.OperationalError("disk I/O error")

    monkeypatch.setattr(engine.dialect, "do_commit", fail)
    outcome = _store(sample_path.read_bytes(), session_factory, spool)
    monkeypatch.undo()
    assert outcome.status == OUT_OF_RESOURCES
    assert spool_files(spool) == [] and _rows(session_factory) == []
    with session_factory() as s, s.begin():  # the next commit on the pool's connections
        s.execute(text("SELECT 1"))
    assert _rows(session_factory) == []


def test_a_failed_session_commit_is_never_kept_by_the_next_user(session_factory, monkeypatch) -> None:
    """The same fault on the Session path every other writer uses (worker,
    HL7 sender, admin): the refused work is not committed later by the next
    user of that pooled connection (store.db.make_engine discards it)."""
    engine = session_factory.kw["bind"]
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE commit_probe (x integer)"))

    def fail(dbapi_connection) -> None:  # type: ignore[no-untyped-def]
        raise engine.dialect.loaded_dbapi.OperationalError("database is locked")

    monkeypatch.setattr(engine.dialect, "do_commit", fail)
    with pytest.raises(OperationalError), session_factory() as s:
        s.execute(text("INSERT INTO commit_probe VALUES (1)"))
        s.commit()
    monkeypatch.undo()
    for _ in range(3):  # whichever pooled connection comes next
        with session_factory() as s, s.begin():
            s.execute(text("SELECT 1"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM commit_probe")).scalar() == 0


def test_write_error_is_a700_and_leaves_nothing(
    sample_path: Path, session_factory, tmp_path: Path, monkeypatch
) -> None:
    """ENOSPC while writing (a fault the real disk will not produce on
    demand): refused as out of resources, no row, no temp file."""
    import errno
    import os

    import gateway.receive.spool as spool_module

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_module.os, "fsync", no_space)
    spool = tmp_path / "spool"
    outcome = _store(sample_path.read_bytes(), session_factory, spool)
    assert outcome.status == OUT_OF_RESOURCES
    assert "No space left on device" in (outcome.reason or "")
    assert _rows(session_factory) == [] and [p for p in spool.rglob("*") if p.is_file()] == []


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    incoming = Spool(tmp_path).incoming
    incoming.mkdir()
    (incoming / "incoming-abc.tmp").write_bytes(b"half")
    keep = tmp_path / "2026" / "01" / "01" / "1.2.3_abc.dcm"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"stored")
    assert Spool(tmp_path).remove_stale_temp_files() == 1
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [keep]


def test_garbled_optional_value_does_not_refuse_the_ecg(sample_path: Path, session_factory, tmp_path: Path) -> None:
    """A PatientBirthDate that is not a date, a name in an unknown character
    set: stored, with what could be read."""
    ds = dcmread(sample_path)
    ds.SpecificCharacterSet = "ISO_IR 999"  # unknown: pydicom falls back with a warning
    ds.PatientName = "Test^Name"
    ds.PatientBirthDate = "19xx"
    out = io.BytesIO()
    ds.save_as(out)
    outcome = _store(out.getvalue(), session_factory, tmp_path / "spool")
    assert outcome.status == SUCCESS
    [row] = _rows(session_factory)
    assert row.patient_id == "642341" and row.patient_birth_date == "19xx"


def test_file_meta_uid_differing_from_the_data_set_uid(sample_path: Path, session_factory, tmp_path: Path) -> None:
    """The spool name comes from the data set's SOPInstanceUID; an early
    placement under the file meta's UID is moved, not left behind."""
    ds = dcmread(sample_path)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    out = io.BytesIO()
    ds.save_as(out)
    spool = tmp_path / "spool"
    outcome = _store(out.getvalue(), session_factory, spool)
    assert outcome.status == SUCCESS
    [row] = _rows(session_factory)
    assert spool_files(spool) == [spool / row.spool_path]
    assert Path(row.spool_path).name.startswith(SAMPLE_UID + "_")
