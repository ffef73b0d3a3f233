"""The storage SCP with DCMTK echoscu/storescu as the cart."""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select

from e2e_helpers import wait_until
from gateway.config import DicomConfig, StorageConfig
from gateway.receive.scp import ScpServer, part10, start_scp
from gateway.receive.spool import (
    CANNOT_UNDERSTAND_INVALID_UID,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from gateway.store.models import RECEIVED, REJECTED, EcgInstance
from gateway.store.spool import Spool
from receive_helpers import GENERAL_32BIT_ECG, HEMODYNAMIC, ecg_bytes, spool_files, storescu, write

SAMPLE_UID = "1.3.6.1.4.1.20029.40.20130125105919.5407.1.1"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def scp_factory(session_factory, spool: Path, port: int) -> Iterator:  # type: ignore[no-untyped-def]
    started: list[ScpServer] = []

    def start(on_stored=None, free_bytes=None, **dicom):  # type: ignore[no-untyped-def]
        cfg = DicomConfig(**{"port": port, "host": "127.0.0.1", "min_free_disk_mb": 0, **dicom})
        scp = start_scp(cfg, StorageConfig(spool_dir=str(spool)), session_factory, on_stored, free_bytes=free_bytes)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.shutdown()


def _rows(session_factory) -> list[EcgInstance]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return list(s.scalars(select(EcgInstance).order_by(EcgInstance.id)))


def test_echoscu_succeeds(scp_factory, port: int) -> None:
    scp_factory()
    proc = subprocess.run(
        ["echoscu", "-v", "-aec", "ECGGW", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert "Received Echo Response (Success)" in proc.stdout + proc.stderr


def test_storescu_sample_gives_success_and_one_row(
    scp_factory, port: int, sample_path: Path, session_factory, spool: Path
) -> None:
    woken: list[int] = []
    scp = scp_factory(on_stored=woken.append)
    assert scp.ports == [port]
    results, out = storescu(port, [sample_path])
    assert [s for _, s in results] == [SUCCESS], out
    [row] = _rows(session_factory)
    assert (row.sop_instance_uid, row.status, row.calling_ae, row.peer_address) == (
        SAMPLE_UID,
        RECEIVED,
        "CART1",
        "127.0.0.1",
    )
    assert row.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert hashlib.sha256((spool / row.spool_path).read_bytes()).hexdigest() == row.sha256
    assert woken == [row.id]
    # the same instance again: success, still one row, no second wake-up
    results, out = storescu(port, [sample_path])
    assert [s for _, s in results] == [SUCCESS], out
    assert len(_rows(session_factory)) == 1 and len(spool_files(spool)) == 1
    assert woken == [row.id]


@pytest.mark.parametrize(
    ("transfer_syntax", "option"),
    [(ImplicitVRLittleEndian, "-xi"), (DeflatedExplicitVRLittleEndian, "-xd")],
)
def test_other_transfer_syntaxes(
    scp_factory, port: int, sample_path: Path, session_factory, tmp_path: Path, transfer_syntax: str, option: str
) -> None:
    scp_factory()
    path = write(tmp_path / "in.dcm", ecg_bytes(sample_path, transfer_syntax=transfer_syntax))
    results, out = storescu(port, [path], extra=[option])
    assert [s for _, s in results] == [SUCCESS], out
    [row] = _rows(session_factory)
    assert row.transfer_syntax_uid == transfer_syntax
    assert row.patient_id == "642341"


def test_hemodynamic_class_with_storescu_and_32bit_with_pynetdicom(
    scp_factory, port: int, sample_path: Path, session_factory, tmp_path: Path
) -> None:
    scp_factory()
    results, out = storescu(port, [write(tmp_path / "h.dcm", ecg_bytes(sample_path, sop_class=HEMODYNAMIC))])
    assert [s for _, s in results] == [SUCCESS], out
    # DCMTK 3.6.7 does not know General 32-bit ECG: pynetdicom is the cart here
    from pynetdicom import AE

    ae = AE(ae_title="CART2")
    ae.add_requested_context(GENERAL_32BIT_ECG)
    assoc = ae.associate("127.0.0.1", port, ae_title="ECGGW")
    assert assoc.is_established
    status = assoc.send_c_store(dcmread(io.BytesIO(ecg_bytes(sample_path, sop_class=GENERAL_32BIT_ECG))))
    assoc.release()
    assert status.Status == SUCCESS
    assert sorted(r.sop_class_uid for r in _rows(session_factory)) == sorted([HEMODYNAMIC, GENERAL_32BIT_ECG])


def test_disallowed_calling_ae_is_rejected_and_logged(
    scp_factory, port: int, sample_path: Path, session_factory, caplog
) -> None:
    scp_factory(allowed_calling_aets=["CART1"])
    with caplog.at_level(logging.INFO, logger="gateway.receive"):
        results, out = storescu(port, [sample_path], calling="INTRUDER")
    assert results == [] and "Association Rejected" in out
    assert "Calling AE Title Not Recognized" in out
    assert "127.0.0.1 (calling AE 'INTRUDER'" in caplog.text and "allowed_calling_aets" in caplog.text
    assert _rows(session_factory) == []
    results, out = storescu(port, [sample_path], calling="CART1")
    assert [s for _, s in results] == [SUCCESS], out


def test_wrong_called_ae_and_host_are_rejected(
    scp_factory, port: int, sample_path: Path, session_factory, caplog
) -> None:
    scp = scp_factory(allowed_hosts=["10.0.0.0/8"])
    with caplog.at_level(logging.INFO, logger="gateway.receive"):
        results, out = storescu(port, [sample_path])
    assert results == [] and "Association Rejected" in out
    assert "source host not in allowed_hosts" in caplog.text
    scp.shutdown()
    scp_factory(allowed_hosts=["127.0.0.0/8"])
    results, out = storescu(port, [sample_path], called="OTHERAE")
    assert results == [] and "Called AE Title Not Recognized" in out
    results, out = storescu(port, [sample_path])
    assert [s for _, s in results] == [SUCCESS], out


def test_ct_image_is_not_negotiated(scp_factory, port: int, session_factory, spool: Path) -> None:
    from pydicom.data import get_testdata_file

    scp_factory()
    results, out = storescu(port, [Path(get_testdata_file("CT_small.dcm"))])
    assert results == []
    assert "no presentation context" in out.lower() or "no acceptable presentation contexts" in out.lower(), out
    assert _rows(session_factory) == [] and spool_files(spool) == []


def test_bad_inputs_get_statuses_and_leave_no_file(
    scp_factory, port: int, sample_path: Path, session_factory, spool: Path, tmp_path: Path
) -> None:
    scp_factory()
    no_waveform = write(tmp_path / "in" / "no_waveform.dcm", ecg_bytes(sample_path, drop_waveform=True))
    bad_uid = write(tmp_path / "in" / "bad_uid.dcm", ecg_bytes(sample_path, uid="1.2.3/../../../../escaped"))
    results, out = storescu(port, [no_waveform, bad_uid])
    assert dict(results) == {
        str(no_waveform): DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        str(bad_uid): CANNOT_UNDERSTAND_INVALID_UID,
    }, out
    assert spool_files(spool) == []
    rows = _rows(session_factory)
    assert [(r.status, r.error) for r in rows] == [
        (REJECTED, "no WaveformSequence"),
        (REJECTED, "SOP Instance UID is missing or not a valid DICOM UID"),
    ]
    # only the two quarantine copies (named by content) were written
    written = {
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and p.relative_to(tmp_path).parts[0] != "in" and not p.name.startswith("gateway.db")
    }
    assert written == {Spool(spool).resolve(r.spool_path) for r in rows}
    assert all(p.parent == (spool / "rejected").resolve() for p in written)


def test_truncated_file_is_refused(
    scp_factory, port: int, sample_path: Path, session_factory, spool: Path, tmp_path: Path, monkeypatch
) -> None:
    """DCMTK refuses to send a file cut mid-element ("premature end of
    stream"), so pynetdicom sends it, as bytes read from the file unchanged."""
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

    scp_factory()
    raw = ecg_bytes(sample_path)
    cut = write(tmp_path / "cut.dcm", raw[: len(raw) - 30000])
    ae = AE(ae_title="CART3")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.9.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="ECGGW")
    assert assoc.is_established
    status = assoc.send_c_store(cut)
    assoc.release()
    assert status.Status == 0xC000
    assert spool_files(spool) == []
    [row] = _rows(session_factory)
    # the reason is dcmread's own (the door reads as the worker does): where the bytes ran out
    assert row.status == REJECTED and row.error.startswith("not a DICOM file: No tag to read at file position")


def test_simulated_full_disk_is_a700(scp_factory, port: int, sample_path: Path, session_factory, spool: Path) -> None:
    scp_factory(free_bytes=lambda path: 0, min_free_disk_mb=1)
    results, out = storescu(port, [sample_path])
    assert [s for _, s in results] == [OUT_OF_RESOURCES], out
    assert _rows(session_factory) == [] and [p for p in spool.rglob("*") if p.is_file()] == []


def test_max_associations_is_enforced_and_logged(scp_factory, port: int, sample_path: Path, caplog) -> None:
    from pynetdicom import AE

    scp_factory(max_associations=1)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate("127.0.0.1", port, ae_title="ECGGW")
    assert held.is_established
    try:
        with caplog.at_level(logging.INFO, logger="gateway.receive"):
            results, out = storescu(port, [sample_path])
            assert results == [] and "Local Limit Exceeded" in out, out
            # pynetdicom sends the rejection, then fires EVT_REJECTED (our log line):
            # storescu can be gone before the line is written
            wait_until(
                lambda: "max_associations (1) reached" in caplog.text, timeout=10, what="the rejection's log line"
            )
    finally:
        held.release()


# --- the C-STORE handler alone (pynetdicom's own event objects, no network) ---------------------


def _c_store_event(raw: bytes, *, request_uid: str, calling_ae: str = "CART1", address: str = "127.0.0.1"):  # type: ignore[no-untyped-def]
    """The ``EVT_C_STORE`` event pynetdicom hands the handler when ``raw`` (a
    Part 10 file in Explicit VR Little Endian) arrives under ``request_uid``."""
    import struct

    from pynetdicom import AE, evt
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.presentation import build_context
    from pynetdicom.transport import AddressInformation

    sop_class = str(dcmread(io.BytesIO(raw)).SOPClassUID)
    assoc = Association(AE(), "acceptor")
    assoc.requestor.ae_title, assoc.requestor.address_info = calling_ae, AddressInformation(address, 11112)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = request_uid
    # the data set as sent: after the preamble, "DICM" and the file meta group (its length at 140)
    request.DataSet = io.BytesIO(raw[144 + struct.unpack_from("<I", raw, 140)[0] :])
    context = build_context(sop_class, "1.2.840.10008.1.2.1")
    context.context_id = 1
    return evt.Event(assoc, evt.EVT_C_STORE, {"request": request, "context": context.as_tuple})


def test_the_store_handler_alone(sample_path: Path, session_factory, spool: Path) -> None:
    """StoreHandler with the event pynetdicom gives it: the record carries the
    request's UIDs, calling AE and peer; success wakes the worker once."""
    from gateway.receive.scp import StoreHandler, incoming_c_store
    from gateway.receive.spool import StoreContext

    raw = ecg_bytes(sample_path, uid=SAMPLE_UID)
    event = _c_store_event(raw, request_uid=SAMPLE_UID)
    incoming = incoming_c_store(event)
    assert (incoming.sop_instance_uid, incoming.sop_class_uid, incoming.transfer_syntax_uid) == (
        SAMPLE_UID,
        "1.2.840.10008.5.1.4.1.1.9.1.1",
        "1.2.840.10008.1.2.1",
    )
    assert (incoming.calling_ae, incoming.peer_address, incoming.uid_valid) == ("CART1", "127.0.0.1", True)
    assert dcmread(io.BytesIO(incoming.raw)).SOPInstanceUID == SAMPLE_UID
    woken: list[int] = []
    handler = StoreHandler(StoreContext(session_factory, Spool(spool)), woken.append)
    assert handler(event) == SUCCESS
    [row] = _rows(session_factory)
    assert (row.sop_instance_uid, row.calling_ae, row.peer_address) == (SAMPLE_UID, "CART1", "127.0.0.1")
    assert woken == [row.id]
    assert handler(_c_store_event(raw, request_uid=SAMPLE_UID)) == SUCCESS  # a duplicate: no second wake-up
    assert woken == [row.id] and spool_files(spool) == [spool / row.spool_path]


def test_the_store_handler_stores_under_the_data_sets_uid(sample_path: Path, session_factory, spool: Path) -> None:
    """A request announcing another SOP Instance UID than its data set's (a
    sender out of PS3.4): stored under the data set's, nothing left under the other."""
    from gateway.receive.scp import StoreHandler
    from gateway.receive.spool import StoreContext

    handler = StoreHandler(StoreContext(session_factory, Spool(spool)))
    assert handler(_c_store_event(ecg_bytes(sample_path, uid=SAMPLE_UID), request_uid="1.2.3.4")) == SUCCESS
    [row] = _rows(session_factory)
    assert row.sop_instance_uid == SAMPLE_UID and Path(row.spool_path).name.startswith(SAMPLE_UID + "_")
    assert spool_files(spool) == [spool / row.spool_path]


def test_the_store_handler_answers_0110_when_storing_fails_unexpectedly(
    sample_path: Path, session_factory, spool: Path, caplog
) -> None:
    """A bug in storing is a processing failure (0x0110), never success."""
    from gateway.receive.scp import StoreHandler
    from gateway.receive.spool import PROCESSING_FAILURE, StoreContext

    def broken_probe(path: Path) -> int:
        raise RuntimeError("probe broke")

    woken: list[int] = []
    handler = StoreHandler(StoreContext(session_factory, Spool(spool), free_bytes=broken_probe), woken.append)
    with caplog.at_level(logging.ERROR, logger="gateway.receive"):
        assert handler(_c_store_event(ecg_bytes(sample_path), request_uid=SAMPLE_UID)) == PROCESSING_FAILURE == 0x0110
    assert "C-STORE from 127.0.0.1 failed unexpectedly" in caplog.text
    assert woken == [] and _rows(session_factory) == []


@pytest.mark.parametrize(
    "class_uid, instance_uid, transfer_syntax",
    [
        ("1.2.840.10008.5.1.4.1.1.9.1.1", "1.2.3.45", "1.2.840.10008.1.2.1"),  # odd and even lengths
        ("1.2.840.10008.5.1.4.1.1.9.1.2", "1.2.3.4", str(ImplicitVRLittleEndian)),
        ("1.2.840.10008.5.1.4.1.1.9.1.3", "2.25." + "1" * 59, str(DeflatedExplicitVRLittleEndian)),  # 64 characters
        ("1.2.840.10008.5.1.4.1.1.9.4.1", "2.25." + "9" * 58, "1.2.840.10008.1.2"),
    ],
)
def test_part10_is_pynetdicoms_encoded_dataset_byte_for_byte(class_uid: str, instance_uid: str, transfer_syntax: str):
    """The SCP writes the file meta itself (no pydicom writer per C-STORE):
    the bytes are the ones ``Event.encoded_dataset()`` gives."""
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    dataset = b"\x08\x00\x16\x00UI\x02\x001\x00" * 3  # any bytes: kept as received
    meta = create_file_meta(
        sop_class_uid=UID(class_uid), sop_instance_uid=UID(instance_uid), transfer_syntax=UID(transfer_syntax)
    )
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + dataset
    assert part10(dataset, class_uid, instance_uid, transfer_syntax) == expected


@pytest.mark.parametrize("instance_uid", ["", "1.2.3 ", "1.2.\u00e93", "1." + "2" * 64, "1.2\x003"])
def test_part10_leaves_unusual_uids_to_pynetdicom(instance_uid: str) -> None:
    assert part10(b"", "1.2.840.10008.5.1.4.1.1.9.1.1", instance_uid, "1.2.840.10008.1.2.1") is None
