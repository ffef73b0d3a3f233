"""HL7 v3 Annotated ECG (aECG, the FDA's format; PORT_MT020001).

Read with lxml's safe parser (:mod:`gateway.formats.xmlsafe`).  The rhythm
``series`` (``code/@code`` = ``RHYTHM``; representative beats live under
``derivation`` and are never used), its first ``sequenceSet`` holding leads:

- time: ``TIME_ABSOLUTE`` (``GLIST_TS``) or ``TIME_RELATIVE`` (``GLIST_PQ``)
  with ``head`` and ``increment`` (unit s, ms or us), or explicit times as
  ``SLIST_PQ`` (origin + scale x digits; evenly spaced, else refused);
  the sampling rate is 1 / increment;
- each ``MDC_ECG_LEAD_*`` sequence (codes matched case-insensitively;
  ``AVRNEG`` is -aVR): ``SLIST_PQ`` with ``origin`` and ``scale`` (their
  ``unit``: uV, mV, V ...) and whitespace-separated integer ``digits``;
  value = origin + scale x digit.  Other sequences are reported as unknown.

Instance UID: the document's ``id``: an OID root without extension is used
as it is; a UUID root without extension becomes ``2.25.<UUID integer>``;
with an extension, ``2.25.<first 128 bits of SHA-256 of root^extension>``
(stable for the document, so a corrected re-export is a new version);
without an ``id``, ``2.25.<SHA-256 of the file>``.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from gateway.formats.common import dicom_date, put
from gateway.formats.errors import FormatError
from gateway.formats.record import (
    NEGATIVE_AVR,
    DocumentValues,
    EcgRecord,
    RecordLead,
    rate_text,
    uid_from_bytes,
    uid_from_uuid,
    valid_uid,
)
from gateway.formats.units import UnknownUnitError, millivolts_per_unit
from gateway.formats.xmlsafe import local_name, namespace, parse_xml
from gateway.quoting import printable

NS = "urn:hl7-org:v3"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_V = {"v": NS}
_SUBJECT = "v:componentOf/v:timepointEvent/v:componentOf/v:subjectAssignment/v:subject/v:trialSubject"
#: ``MDC_ECG_LEAD_<suffix>`` (upper-cased) -> lead.
LEAD_CODES: dict[str, str] = {
    "I": "I",
    "II": "II",
    "III": "III",
    "AVR": "aVR",
    "AVL": "aVL",
    "AVF": "aVF",
    "V1": "V1",
    "V2": "V2",
    "V3": "V3",
    "V4": "V4",
    "V5": "V5",
    "V6": "V6",
    "AVRNEG": NEGATIVE_AVR,
}
#: Elements in one document (the example holds 2,400; beat annotations add some per beat): the
#: parsed tree stays under ~25 MB.
MAX_ELEMENTS = 200_000
#: Attributes in one document (the example holds 1,975 "=" for its 2,370 elements): ~100 MB of tree at most.
MAX_ATTRIBUTES = 400_000
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_TS = re.compile(r"^\d{8}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?([+-]\d{4})?$")
_SEX = {"M": "M", "F": "F", "UN": None}


#: The most lead sequences one rhythm series may hold (12-lead, 15-lead and 18-lead records have
#: far fewer; thousands of copies of one lead would each be decoded and reported as duplicates).
MAX_LEADS = 64


def _root(raw: bytes) -> Any:
    root = parse_xml(raw, "HL7 aECG", MAX_ELEMENTS, MAX_ATTRIBUTES)
    if local_name(root) != "AnnotatedECG":
        raise FormatError(f"HL7 aECG: the root element is {printable(local_name(root), 40)}, not AnnotatedECG")
    if namespace(root) != NS:
        raise FormatError(f"HL7 aECG: AnnotatedECG is in the namespace {printable(namespace(root), 80)!r}, not {NS}")
    return root


def _attr(root: Any, path: str, name: str) -> str | None:
    found = root.find(path, _V)
    value = None if found is None else found.get(name)
    return None if value is None else str(value).strip()


def _text(root: Any, path: str) -> str | None:
    found = root.find(path, _V)
    return None if found is None else " ".join("".join(found.itertext()).split()) or None


def instance_uid(root: Any, raw: bytes) -> tuple[str, str]:
    """(UID, the rule that made it): see the module docstring."""
    doc_root, ext = _attr(root, "v:id", "root"), _attr(root, "v:id", "extension")
    if doc_root and not ext:
        if valid_uid(doc_root):
            return doc_root, "id/@root (an OID)"
        uid = uid_from_uuid(doc_root)
        if uid:
            return uid, "id/@root (a UUID)"
    if doc_root and ext:
        return uid_from_bytes(b"aecg-id", doc_root.encode(), ext.encode()), "SHA-256 of id/@root and @extension"
    return uid_from_bytes(raw), "SHA-256 of the file"


def _timestamp(text: str | None) -> str | None:
    return text if text and _TS.match(text) else None


def read_values(raw: bytes) -> DocumentValues:
    """The door's read: instance UID, subject, effective time, device.

    Refuses (:class:`FormatError`) a document that is not aECG, has no
    rhythm series, or whose subject has no ID (``trialSubject/id/@extension``)."""
    root = _root(raw)
    rhythm_series(root)
    uid, rule = instance_uid(root, raw)
    values = DocumentValues("aecg", uid, rule)
    cols, dropped = values.columns, values.dropped
    cols["sop_class_uid"] = ""
    put(cols, dropped, "patient_id", _attr(root, _SUBJECT + "/v:id", "extension"), "trialSubject/id/@extension")
    if not cols.get("patient_id"):
        raise FormatError("HL7 aECG: no subject ID (trialSubject/id/@extension): the result could not be filed")
    put(cols, dropped, "issuer_of_patient_id", _attr(root, _SUBJECT + "/v:id", "root"), "trialSubject/id/@root")
    person = _SUBJECT + "/v:subjectDemographicPerson"
    put(cols, dropped, "patient_name", _text(root, person + "/v:name"), "subjectDemographicPerson/name")
    cols["patient_birth_date"] = dicom_date((_attr(root, person + "/v:birthTime", "value") or "")[:8])
    cols["patient_sex"] = _SEX.get((_attr(root, person + "/v:administrativeGenderCode", "code") or "").upper())
    cols["acquisition_datetime"] = _timestamp(
        _attr(root, "v:effectiveTime/v:center", "value") or _attr(root, "v:effectiveTime/v:low", "value")
    )
    device = "v:component/v:series/v:author/v:seriesAuthor/"
    put(cols, dropped, "manufacturer", _text(root, device + "v:manufacturerOrganization/v:name"), "manufacturer")
    put(
        cols,
        dropped,
        "device_model",
        _text(root, device + "v:manufacturedSeriesDevice/v:manufacturerModelName"),
        "manufacturerModelName",
    )
    put(
        cols,
        dropped,
        "device_serial",
        _attr(root, device + "v:manufacturedSeriesDevice/v:id", "extension"),
        "manufacturedSeriesDevice/id",
    )
    values.details["document"] = "HL7 aECG"
    return values


def rhythm_series(root: Any) -> Any:
    """The first ``series`` coded RHYTHM (never a derived representative beat)."""
    for series in root.iterfind("v:component/v:series", _V):
        if (_attr(series, "v:code", "code") or "").upper() == "RHYTHM":
            return series
    if root.find("v:component/v:series", _V) is None:
        raise FormatError("HL7 aECG: no component/series (no waveforms)")
    raise FormatError("HL7 aECG: no series coded RHYTHM (representative beats alone are not analysed)")


def _number(element: Any, what: str) -> float:
    text = element.get("value") if element is not None else None
    try:
        value = float(text) if text is not None else None
    except ValueError:
        value = None
    if value is None or not np.isfinite(value):
        raise FormatError(f"HL7 aECG: {what} has no numeric value")
    return value


def _millivolts(element: Any, what: str) -> float:
    value = _number(element, what)
    unit = element.get("unit") or ""
    try:
        return value * millivolts_per_unit(unit)
    except UnknownUnitError:
        raise FormatError(f"HL7 aECG: {what} unit {printable(unit, 20)!r} is not a voltage unit (uV, mV, V)") from None


def _seconds(element: Any, what: str) -> float:
    value = _number(element, what)
    unit = element.get("unit") or "s"
    if unit not in _TIME_UNITS:
        raise FormatError(f"HL7 aECG: {what} unit {printable(unit, 20)!r} is not a time unit (s, ms, us)")
    return value * _TIME_UNITS[unit]


_INTEGERS = re.compile(r"\s*+[+-]?\d{1,18}+(?:\s++[+-]?\d{1,18}+)*+\s*+")
_NOT_AN_INTEGER = re.compile(r"(?:^|(?<=\s))(?![+-]?\d{1,18}(?:\s|$))\S")
_TOKEN = re.compile(r"\S+")


def _digits(value: Any, what: str) -> np.ndarray:
    """The whitespace-separated integers of ``value/digits``.  Checked whole
    with a regular expression first, then parsed by numpy from the text: no
    Python object per value (a 10 MB node would make millions)."""
    digits = value.find("v:digits", _V)
    text = "" if digits is None else (digits.text or "")
    if not text.strip():
        raise FormatError(f"HL7 aECG: {what} has no digits")
    if _INTEGERS.fullmatch(text) is None:
        bad = _NOT_AN_INTEGER.search(text)
        position = sum(1 for _ in _TOKEN.finditer(text, 0, bad.start())) + 1 if bad else 0
        raise FormatError(f"HL7 aECG: {what} digits are not all integers (value {position} is not)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.fromstring(text, dtype=np.int64, sep=" ")


def _sampling_period(sequence: Any, code: str) -> tuple[float, dict[str, Any]]:
    value = sequence.find("v:value", _V)
    kind = (value.get(XSI_TYPE) or "") if value is not None else ""
    kind = kind.rsplit(":", 1)[-1]
    if kind in ("GLIST_TS", "GLIST_PQ"):
        period = _seconds(value.find("v:increment", _V), f"{code} increment")
        head = value.find("v:head", _V)
        return period, {
            "code": code,
            "type": kind,
            "head": None if head is None else head.get("value"),
            "increment_s": period,
        }
    if kind == "SLIST_PQ":
        times = _digits(value, code).astype(np.float64)
        scale = _seconds(value.find("v:scale", _V), f"{code} scale")
        steps = np.diff(times) * scale
        if steps.size == 0 or steps[0] <= 0 or not np.allclose(steps, steps[0], rtol=1e-6, atol=0):
            raise FormatError(f"HL7 aECG: {code} explicit times are not evenly spaced")
        return float(steps[0]), {"code": code, "type": kind, "samples": int(times.size), "increment_s": steps[0]}
    raise FormatError(f"HL7 aECG: {code} value type {printable(kind, 20)!r} is not GLIST_TS, GLIST_PQ or SLIST_PQ")


def decode(raw: bytes) -> EcgRecord:
    """The rhythm leads, scaled, with provenance.  Raises :class:`FormatError`."""
    root = _root(raw)
    series = rhythm_series(root)
    sets = list(series.iterfind("v:component/v:sequenceSet", _V))
    if not sets:
        raise FormatError("HL7 aECG: the RHYTHM series has no sequenceSet")
    period: float | None = None
    time_details: dict[str, Any] = {}
    leads: list[RecordLead] = []
    for sequence_set in sets:
        sequences = list(sequence_set.iterfind("v:component/v:sequence", _V))
        codes = [(_attr(s, "v:code", "code") or "") for s in sequences]
        n_leads = sum(1 for c in codes if c.upper().startswith("MDC_ECG_LEAD_"))
        if not n_leads:
            continue
        if n_leads > MAX_LEADS:  # before any digits are read
            raise FormatError(
                f"HL7 aECG: {n_leads} lead sequences in the RHYTHM series, more than the {MAX_LEADS} accepted"
            )
        for sequence, code in zip(sequences, codes, strict=True):
            shown = printable(code, 40) or "(no code)"
            if code.upper().startswith("TIME_"):
                period, time_details = _sampling_period(sequence, shown)
                continue
            if not code.upper().startswith("MDC_ECG_LEAD_"):
                continue
            value = sequence.find("v:value", _V)
            kind = ((value.get(XSI_TYPE) or "") if value is not None else "").rsplit(":", 1)[-1]
            if kind != "SLIST_PQ":
                raise FormatError(f"HL7 aECG: {shown} value type {printable(kind, 20)!r} is not SLIST_PQ")
            origin = value.find("v:origin", _V)
            baseline = 0.0 if origin is None else _millivolts(origin, f"{shown} origin")
            scale = _millivolts(value.find("v:scale", _V), f"{shown} scale")
            if scale <= 0:
                raise FormatError(f"HL7 aECG: {shown} scale is not positive")
            lead = LEAD_CODES.get(code.upper()[len("MDC_ECG_LEAD_") :])
            leads.append(
                RecordLead(
                    lead, code, "aECG sequence code" if lead else "unknown", _digits(value, shown), scale, baseline
                )
            )
        break  # the first set with leads: simultaneously recorded sequences
    if not leads:
        raise FormatError("HL7 aECG: the RHYTHM series has no MDC_ECG_LEAD_* sequence")
    if period is None:
        raise FormatError("HL7 aECG: the RHYTHM series has no TIME_ABSOLUTE or TIME_RELATIVE sequence")
    if not period > 0:
        raise FormatError("HL7 aECG: the time increment is not positive")
    lengths = sorted({len(lead.counts) for lead in leads})
    if len(lengths) > 1:
        raise FormatError(f"HL7 aECG: the lead sequences differ in length ({lengths[0]} to {lengths[-1]} values)")
    if "samples" in time_details and time_details["samples"] != lengths[0]:
        raise FormatError(f"HL7 aECG: {time_details['samples']} times for {lengths[0]} values per lead")
    details = {"document": "HL7 aECG", "series": "RHYTHM", "time": time_details}
    return EcgRecord("aecg", rate_text(1.0 / period), tuple(leads), details)
