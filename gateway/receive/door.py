"""The door for files: raw bytes of any supported ECG format -> the record the store takes.

``ingest``, the watched folder and DICOMweb all start here:
:func:`incoming_from_bytes` recognises the bytes by content
(:func:`gateway.formats.sniff`: DICOM, Philips Sierra XML, HL7 aECG) and
returns an :class:`~gateway.receive.spool.IncomingInstance` for
:func:`~gateway.receive.spool.store_instance`, or a :class:`Refusal` when
nothing is to be kept (larger than ``[dicom] max_dataset_mb``: never read).

A Philips or aECG file is read here with the safe XML parser (no waveform
decoding: the worker does that): its instance UID and the row's columns.  One
that cannot be read (not well-formed, a DOCTYPE, wrong namespace, no patient
ID, no rhythm series ...) still becomes an ``IncomingInstance``, carrying
the reason in ``problem``: the store refuses it with a ``rejected`` row that
says why and keeps the bytes in ``<spool>/rejected/``.  Bytes that look like
none of the formats go the DICOM way, whose reader says why they are not DICOM.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from gateway.dicomio.limits import DEFAULT_MAX_DATASET_BYTES, DatasetTooLarge, check_size
from gateway.formats import FormatError, read_values, sniff
from gateway.receive.spool import DATA_SET_TOO_LARGE, IncomingInstance


@dataclass(frozen=True)
class Refusal:
    """Bytes refused at the door, with nothing kept."""

    #: A C-STORE status (``DATA_SET_TOO_LARGE``), for callers that answer with one.
    status: int
    reason: str


def as_part10(raw: bytes) -> bytes:
    """A DICOM file as the storage path takes it (preamble, "DICM", file
    meta): files without a preamble get one, and a bare data set also gets
    file meta for the transfer syntax it is written in.  The data set's own
    bytes are kept unchanged."""
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if raw[128:132] == b"DICM":
        return raw
    preamble = b"\0" * 128 + b"DICM"
    if raw[:2] == b"\x02\x00":  # file meta present, preamble missing
        return preamble + raw
    try:
        ds = dcmread(io.BytesIO(raw), force=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        implicit, little = ds.original_encoding
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    except Exception:  # noqa: BLE001 - not a data set: the storage path refuses it with its reason
        return raw
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
    out = DicomBytesIO()
    write_file_meta_info(out, meta, enforce_standard=True)
    return preamble + out.getvalue() + raw


def incoming_from_bytes(
    raw: bytes, source: str, *, calling_ae: str | None = None, max_bytes: int = DEFAULT_MAX_DATASET_BYTES
) -> IncomingInstance | Refusal:
    """Recognise ``raw`` by content and build the record the store takes.

    ``source`` says where it came from (``"ingest"``, ``"watch"``, a peer's
    address): it is stored as the row's ``peer_address``.  Returns a
    :class:`Refusal` only for bytes over ``max_bytes`` (nothing is read or
    kept); everything else is for :func:`~gateway.receive.spool.store_instance`,
    which stores it or refuses it with a row saying why.
    """
    try:
        check_size(len(raw), max_bytes)
    except DatasetTooLarge as exc:
        return Refusal(DATA_SET_TOO_LARGE, str(exc))
    fmt = sniff(raw)
    if fmt is None or fmt == "dicom":
        return IncomingInstance.from_file(as_part10(raw), calling_ae=calling_ae, peer_address=source)
    try:
        document = read_values(raw, fmt)
    except FormatError as exc:
        return IncomingInstance(raw, None, "", "", calling_ae, source, source_format=fmt, problem=str(exc))
    return IncomingInstance(
        raw, document.instance_uid, "", "", calling_ae, source, source_format=fmt, document=document
    )
