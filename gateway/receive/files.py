"""DICOM files as the storage path takes them: recognised by content, and
completed to a Part 10 byte string when a writer left out the preamble or
the file meta.  Used by ``ecg-gateway ingest`` and the watched folder."""

from __future__ import annotations

import io
import warnings

#: Media Storage Directory (DICOMDIR): an index of a CD's files, not an instance.
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def raw_data_set_uids(raw: bytes) -> tuple[str, str] | None:
    """(SOP Class, SOP Instance UID) when ``raw`` parses as a data set
    without preamble, else None."""
    from pydicom import dcmread

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(raw), force=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except Exception:  # noqa: BLE001 - any parse failure means "not DICOM"
        return None
    cls, uid = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")
    return (str(cls), str(uid)) if cls and uid else None


def is_dicom(raw: bytes) -> bool:
    """True for a DICOM file: 128-byte preamble + "DICM", or a data set
    without one that has a SOP Class and Instance UID.  By content only."""
    return raw[128:132] == b"DICM" or raw_data_set_uids(raw) is not None


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
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else (
        ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    out = DicomBytesIO()
    write_file_meta_info(out, meta, enforce_standard=True)
    return preamble + out.getvalue() + raw
