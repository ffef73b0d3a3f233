"""Philips Sierra ECG XML (PageWriter, TraceMaster): documents 1.03, 1.04, 1.04.01.

The waveforms are decoded by the ``sierraecg`` library (it undoes the XLI
compression and rebuilds III, aVR, aVL and aVF from the stored residuals, as
the format defines them); everything it does not expose (resolution, offset,
patient, order, device) is read here from the XML with the safe parser.

Counts to millivolts: mV = (count - offset) x resolution / 1000, resolution
in uV per count from ``parsedwaveforms/@resolution`` (1.04) or
``signalcharacteristics/resolution`` / ``signalresolution`` (1.03), offset
from ``parsedwaveforms/@signaloffset`` or ``signalcharacteristics/signaloffset``.

End of record: every Philips rhythm ends with a gap of zeros, a 1 mV
calibration pulse (200 counts in all twelve leads) and zeros again
(10.53/10.60 s to 11 s).  That is not ECG: the record is cut before the gap
(reported as ``trimmed_end``) when that pattern is there.

Instance UID: ``documentinfo/documentname`` is a UUID (``<uuid>.xml``) in
every document seen: the UID is ``2.25.<that UUID as an integer>``; without
one, ``2.25.<first 128 bits of the SHA-256 of the file>``.

Leads decoded to different lengths (they are recorded together: a crafted or
damaged XLI chunk) are refused, as aECG refuses them, not cut to the shortest.

Bounded work: the XLI (LZW) decoder of sierraecg is given a cap on what it
may output per document (:data:`MAX_DECODED_BYTES`): a crafted chunk that
would inflate past it is refused instead of filling memory.
"""

from __future__ import annotations

import io
import math
import threading
from typing import Any

import numpy as np

from gateway.formats.common import dicom_date, dicom_datetime, put
from gateway.formats.errors import FormatError
from gateway.formats.record import DocumentValues, EcgRecord, RecordLead, rate_text, uid_from_bytes, uid_from_uuid
from gateway.formats.xmlsafe import local_name, namespace, parse_xml
from gateway.quoting import printable

NS = "http://www3.medical.philips.com"
_P = {"p": NS}
VERSIONS = ("1.03", "1.04", "1.04.01", "1.04.02")
#: Elements in one document (the samples hold 1,400-2,000; sierraecg's minidom needs ~1 KB each).
MAX_ELEMENTS = 50_000
#: Attributes in one document (the samples hold 286 and 550 "="; sierraecg's minidom makes a node of each).
MAX_ATTRIBUTES = 50_000
#: What the XLI decoder may output for one document: 16 leads x 2 minutes at
#: 1000 Hz x 2 bytes (a resting ECG is 12 x 11 s at 500 Hz, 132 KB).
MAX_DECODED_BYTES = 16 * 120 * 1000 * 2
_SEX = {"male": "M", "female": "F"}
#: Leads the format stores as residuals and sierraecg rebuilds (list positions 3-6).
_REBUILT = "rebuilt by sierraecg from I, II and the stored residual (Philips lead derivation)"

_budget = threading.local()


class _XliTooLarge(Exception):
    pass


def _bounded_lzw() -> None:
    """Give sierraecg's LZW decoder a per-document output budget (thread-local,
    set by :func:`decode`): a compression bomb stops at the budget."""
    from sierraecg import xli

    base = xli.LzwDecoder
    if getattr(base, "_gateway_bounded", False):
        return

    class BoundedLzwDecoder(base):  # type: ignore[misc, valid-type]
        _gateway_bounded = True

        def __init__(self, buffer: bytes, bits: int) -> None:
            super().__init__(buffer, bits)
            # the document's budget: one shared, mutable count (None outside decode())
            self._left: list[int] | None = getattr(_budget, "left", None)

        def _read_next_string(self) -> Any:
            # once per LZW code (not per byte): the string it expands to counts against the budget
            data = super()._read_next_string()
            left = self._left
            if left is not None:
                left[0] -= len(data)
                if left[0] < 0:
                    raise _XliTooLarge
            return data

    xli.LzwDecoder = BoundedLzwDecoder  # type: ignore[misc]  # a module attribute, replaced on purpose


def _root(raw: bytes) -> Any:
    root = parse_xml(raw, "Philips XML", MAX_ELEMENTS, MAX_ATTRIBUTES)
    if local_name(root) != "restingecgdata":
        raise FormatError(f"Philips XML: the root element is {printable(local_name(root), 40)}, not restingecgdata")
    if namespace(root) != NS:
        raise FormatError(
            f"Philips XML: restingecgdata is in the namespace {printable(namespace(root), 80)!r}, not {NS}"
        )
    return root


def _text(root: Any, path: str) -> str | None:
    found = root.find(path, _P)
    return None if found is None or found.text is None else str(found.text).strip()


def _attr(root: Any, path: str, name: str) -> str | None:
    found = root.find(path, _P)
    value = None if found is None else found.get(name)
    return None if value is None else str(value).strip()


def version(root: Any) -> tuple[str, str]:
    doc_type = _text(root, "p:documentinfo/p:documenttype") or ""
    doc_ver = _text(root, "p:documentinfo/p:documentversion") or ""
    if doc_type not in ("SierraECG", "PhilipsECG") or doc_ver not in VERSIONS:
        raise FormatError(
            f"Philips XML: document type {printable(doc_type, 20)!r} version "
            f"{printable(doc_ver, 20)!r} is not supported (SierraECG/PhilipsECG {', '.join(VERSIONS)})"
        )
    return doc_type, doc_ver


def read_values(raw: bytes) -> DocumentValues:
    """The door's read: instance UID, patient, order, device, acquisition time.

    Refuses (:class:`FormatError`) a document that is not Philips XML of a
    supported version, has no ``parsedwaveforms``, or has no patient ID."""
    root = _root(raw)
    doc_type, doc_ver = version(root)
    if root.find("p:waveforms/p:parsedwaveforms", _P) is None:
        raise FormatError("Philips XML: no waveforms/parsedwaveforms (no rhythm data)")
    name = _text(root, "p:documentinfo/p:documentname") or ""
    uid = uid_from_uuid(name)
    values = DocumentValues(
        "philips", uid or uid_from_bytes(raw), "documentinfo/documentname UUID" if uid else "SHA-256 of the file"
    )
    cols, dropped = values.columns, values.dropped
    cols["sop_class_uid"] = ""
    patient = "p:patient/p:generalpatientdata/"
    for path in ("patientid", "MRN", "uniquepatientid"):
        put(cols, dropped, "patient_id", _text(root, patient + "p:" + path), "patient ID (" + path + ")")
        if cols.get("patient_id"):
            break
    if not cols.get("patient_id"):
        raise FormatError(
            "Philips XML: no patient ID (patient/generalpatientdata/patientid, MRN or "
            "uniquepatientid): the result could not be filed"
        )
    parts = [_text(root, patient + "p:name/p:" + part) or "" for part in ("lastname", "firstname", "middlename")]
    parts = ["" if p in ("---", "-") else p for p in parts]
    put(cols, dropped, "patient_name", "^".join(parts).rstrip("^"), "patient name")
    cols["patient_birth_date"] = dicom_date(_text(root, patient + "p:age/p:dateofbirth"))
    cols["patient_sex"] = _SEX.get((_text(root, patient + "p:sex") or "").lower())
    put(cols, dropped, "placer_order_number", _text(root, "p:orderinfo/p:ordernumber"), "order number")
    cols["acquisition_datetime"] = dicom_datetime(
        _attr(root, "p:dataacquisition", "date"), _attr(root, "p:dataacquisition", "time")
    )
    detail = (_attr(root, "p:dataacquisition/p:machine", "detaildescription") or "").split(":")
    put(cols, dropped, "manufacturer", detail[0] if detail[0] else "Philips", "manufacturer")
    put(cols, dropped, "device_model", _text(root, "p:dataacquisition/p:machine"), "machine")
    put(cols, dropped, "device_serial", _attr(root, "p:dataacquisition/p:machine", "machineid"), "machine id")
    values.details["document"] = f"{doc_type} {doc_ver}"
    return values


def _number(text: str | None, what: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise FormatError(f"Philips XML: {what} {printable(text, 20)!r} is not a number") from None
    if not math.isfinite(value):
        raise FormatError(f"Philips XML: {what} is not a finite number")
    return value


def _scale(root: Any) -> tuple[float, float, float, dict[str, str]]:
    """(uV per count, offset in counts, sampling rate in Hz) and where each came from."""
    pw, sc = "p:waveforms/p:parsedwaveforms", "p:dataacquisition/p:signalcharacteristics"
    where: dict[str, str] = {}
    resolution = None
    for path, attr in ((pw, "resolution"), (sc + "/p:resolution", None), (sc + "/p:signalresolution", None)):
        text = _attr(root, path, attr) if attr else _text(root, path)
        resolution = _number(text, "resolution")
        if resolution is not None:
            where["resolution"] = f"{path.replace('p:', '')}" + (f"/@{attr}" if attr else "")
            break
    if resolution is None or resolution <= 0:
        raise FormatError("Philips XML: no positive resolution (uV per count)")
    offset = _number(_attr(root, pw, "signaloffset"), "signaloffset")
    if offset is None:
        offset = _number(_text(root, sc + "/p:signaloffset"), "signaloffset") or 0.0
    rate = _number(_attr(root, pw, "samplespersecond"), "samplespersecond")
    if rate is None:
        rate = _number(_text(root, sc + "/p:samplingrate"), "samplingrate")
    if rate is None or rate <= 0:
        raise FormatError("Philips XML: no positive sampling rate")
    return resolution, offset, rate, where


def trailing_calibration(counts: np.ndarray) -> int | None:
    """Where the end-of-record gap starts (a sample index), when the leads
    (rows of ``counts``) end with zeros, a pulse equal in every lead, and
    zeros; else None."""
    n = counts.shape[1]
    nonzero = np.flatnonzero(np.any(counts != 0, axis=0))
    if nonzero.size == 0:
        return None
    pulse_end = int(nonzero[-1]) + 1
    level = counts[:, pulse_end - 1]
    if level[0] == 0 or not np.all(level == level[0]):
        return None
    k = pulse_end - 1
    while k >= 0 and np.all(counts[:, k] == level[0]):
        k -= 1
    pulse_start = k + 1
    if pulse_end - pulse_start < 10 or k < 0 or np.any(counts[:, k] != 0):
        return None
    while k >= 0 and not np.any(counts[:, k]):
        k -= 1
    gap_start = k + 1
    return gap_start if 0 < gap_start < n else None


def decode(raw: bytes) -> EcgRecord:
    """The rhythm leads, scaled, with provenance.  Raises :class:`FormatError`."""
    root = _root(raw)
    doc_type, doc_ver = version(root)
    resolution, offset, rate, where = _scale(root)
    from sierraecg import read_file

    _bounded_lzw()
    _budget.left = [MAX_DECODED_BYTES]
    try:
        ecg = read_file(io.BytesIO(raw))  # type: ignore[arg-type]  # a binary file object works (documented)
    except _XliTooLarge:
        raise FormatError(f"Philips XML: the XLI-compressed waveforms inflate past {MAX_DECODED_BYTES} bytes") from None
    except Exception as exc:  # noqa: BLE001 - sierraecg's own errors and whatever garbage data raises
        raise FormatError(
            f"Philips XML: sierraecg cannot decode it: {type(exc).__name__}: {printable(str(exc), 160)}"
        ) from None
    finally:
        _budget.left = None
    labels_given = bool(_attr(root, "p:waveforms/p:parsedwaveforms", "leadlabels"))
    how = "Philips leadlabels" if labels_given else "Philips position (acquisitiontype)"
    if not ecg.leads:
        raise FormatError("Philips XML: no leads decoded")
    lengths = sorted({len(lead.samples) for lead in ecg.leads})
    if lengths[0] == 0:
        raise FormatError("Philips XML: the leads hold no samples")
    if len(lengths) > 1:  # recorded together, so equally long: a crafted or damaged XLI chunk (was cut silently)
        raise FormatError(f"Philips XML: the decoded leads differ in length ({lengths[0]} to {lengths[-1]} samples)")
    length = lengths[0]
    counts = np.stack([np.asarray(lead.samples[:length], dtype=np.int64) for lead in ecg.leads])
    details: dict[str, Any] = {
        "document": f"{doc_type} {doc_ver}",
        "resolution_uv": resolution,
        "offset_counts": offset,
        "scale_from": where,
        "decoder": "sierraecg",
    }
    cut = trailing_calibration(counts)
    if cut is not None:
        details["trimmed_end"] = {
            "samples": length - cut,
            "seconds": round((length - cut) / rate, 4),
            "reason": "end-of-record gap and calibration pulse",
        }
        counts = counts[:, :cut]
    leads = []
    for index, lead in enumerate(ecg.leads):
        label = str(lead.label)
        name = label if label in ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6") else None
        leads.append(
            RecordLead(
                name,
                label,
                how if name else "unknown",
                counts[index],
                resolution / 1000.0,
                -offset * resolution / 1000.0,
                (-32768, 32767),
                _REBUILT if 2 <= index <= 5 else None,
            )
        )
    return EcgRecord("philips", rate_text(rate), tuple(leads), details)
