"""Build one ORU^R01 (HL7 v2.5.1) result message for one ECG.

Pure: ORM rows + configuration in, ER7 text out.  The ER7 is written as
text and validated with hl7apy at STRICT (see :func:`build_oru`: the
message's shape once, its values on every build), which gives the same bytes
and the same errors as assigning every field to an hl7apy message
(:func:`build_oru_reference`) at ~1/70 of the cost.  Any problem raises
:class:`OruBuildError` with a message that names the HL7 field but never the
(PHI) value.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from datetime import datetime, timezone
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway import FINDINGS

if TYPE_CHECKING:  # ORM and config types only; nothing heavy at import time
    from gateway.config import Hl7Config
    from gateway.store.models import EcgInstance, Prediction

#: Display names and SNOMED CT codes of the six findings (ecg-model.md).
FINDING_NAMES: dict[str, str] = {
    "1dAVb": "1st degree AV block",
    "RBBB": "Right bundle branch block",
    "LBBB": "Left bundle branch block",
    "SB": "Sinus bradycardia",
    "AF": "Atrial fibrillation",
    "ST": "Sinus tachycardia",
}
FINDING_SNOMED: dict[str, str] = {
    "1dAVb": "270492004",
    "RBBB": "59118001",
    "LBBB": "164909002",
    "SB": "426177001",
    "AF": "164889003",
    "ST": "427084000",
}

#: Python codec for each MSH-18 value the configuration allows.
CHARSET_CODECS: dict[str, str] = {"UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "ASCII": "ascii"}

#: Probabilities are sent with this many decimals (NM, fixed point).
PROBABILITY_DECIMALS = 4

IMPRESSION = "8601-7^EKG impression^LN"
STUDY_UID = "113014^DICOM Study^DCM"
REJECTED_PREFIX = "ECG could not be analysed: "

_DICOM_DT = re.compile(r"^(\d{4}(?:\d{2}){0,5})(?:\.(\d{1,6}))?([+-]\d{4})?$")
_DICOM_DA = re.compile(r"^\d{8}$")


class OruBuildError(ValueError):
    """The ECG cannot be expressed as a valid ORU^R01; names the field, never the value."""


def escape(text: str) -> str:
    """Escape HL7 delimiters in free text (``\\`` first, then ``| ^ & ~``).

    hl7apy's own escaping leaves a backslash alone when it already looks like an
    escape sequence (``\\H\\``), which would change text coming from DICOM.
    """
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def to_charset(text: str, charset: str, field: str) -> str:
    """Text representable in MSH-18 ``charset``: accents are folded (Müller ->
    Muller) for 8859/1 and ASCII when needed; anything else is an error."""
    codec = CHARSET_CODECS[charset]
    try:
        text.encode(codec)
        return text
    except UnicodeEncodeError:
        pass
    out = []
    for ch in text:
        if not _encodable(ch, codec):
            # NFKD splits a letter from its accents; keep the letter, drop the marks.
            ch = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            if not ch or not _encodable(ch, codec):
                raise OruBuildError(f"{field}: characters not representable in MSH-18 charset {charset!r}")
        out.append(ch)
    return "".join(out)


def _encodable(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
        return True
    except UnicodeEncodeError:
        return False


def dicom_dt_to_hl7(value: str | None) -> str:
    """DICOM DT (``YYYYMMDDHHMMSS.FFFFFF+ZZZZ``, any leading precision) as an HL7
    TS (fraction cut to the 4 digits HL7 allows); '' when absent or malformed."""
    if not value:
        return ""
    m = _DICOM_DT.match(value.strip())
    if not m:
        return ""
    digits, frac, tz = m.groups()
    out = digits
    if frac and len(digits) == 14:
        out += "." + frac[:4]
    return out + (tz or "")


def dicom_pn_to_xpn(pn: str | None, charset: str) -> str:
    """DICOM PN ``family^given^middle^prefix^suffix`` as an escaped HL7 XPN
    ``family^given^middle^suffix^prefix`` (the last two swap places).

    Uses the first non-empty component group (alphabetic, else ideographic,
    else phonetic)."""
    if not pn:
        return ""
    group = next((g for g in pn.split("=") if g.strip("^ ")), "")
    parts = (group.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (to_charset(p.strip(), charset, "PID-5") for p in parts)
    xpn = [escape(family), escape(given), escape(middle), escape(suffix), escape(prefix)]
    return "^".join(xpn).rstrip("^")


def order_key(ecg: EcgInstance) -> str:
    """Messages with the same key go out in order: one patient (issuer|id), or
    one SOP instance when the ECG carries no patient id."""
    if ecg.patient_id:
        return f"{ecg.issuer_of_patient_id or ''}|{ecg.patient_id}"[:200]
    return f"sop:{ecg.sop_instance_uid}"


def _now_ts(now: datetime | None = None) -> str:
    # A naive datetime is taken as UTC.
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is not None:
        now = now.astimezone(timezone.utc)
    return now.strftime("%Y%m%d%H%M%S+0000")


class Input(str):
    """A field value that varies from message to message (ECG, prediction,
    clock, control id), as opposed to a constant or a configured value: it is
    masked in the message shape, and hl7apy checks it on every build."""

    __slots__ = ()


#: One segment: its name and its non-empty fields by HL7 sequence number.
Segment = tuple[str, dict[int, str]]


def _oru_segments(
    ecg: EcgInstance, prediction: Prediction | None, cfg: Hl7Config, control_id: str, now: datetime | None
) -> list[Segment]:
    """What the ORU^R01 says, segment by segment, as escaped ER7 field values.

    Raises :class:`OruBuildError` for problems found before HL7 rules apply
    (no patient id, characters outside MSH-18, bad probabilities)."""
    charset = cfg.charset
    if not ecg.patient_id:
        raise OruBuildError("PID-3: the ECG has no Patient ID")
    if prediction is None and not ecg.error:
        raise OruBuildError("OBX-5: no prediction and no rejection reason")

    def text(value: str | None, field: str) -> Input:
        return Input(escape(to_charset(value.strip(), charset, field)) if value else "")

    ts = Input(_now_ts(now))
    demo = bool(prediction is not None and prediction.demo_model)
    segments: list[Segment] = [("MSH", {
        3: cfg.sending_application, 4: cfg.sending_facility, 5: cfg.receiving_application,
        6: cfg.receiving_facility, 7: ts, 9: "ORU^R01^ORU_R01", 10: Input(control_id), 11: Input("D" if demo else "P"),
        12: "2.5.1", 18: charset,
    })]

    cx = text(ecg.patient_id, "PID-3")
    issuer = text(ecg.issuer_of_patient_id, "PID-3")
    if issuer:  # CX-4 assigning authority
        cx = Input(cx + "^^^" + issuer)
    pid = {1: "1", 3: cx, 5: Input(dicom_pn_to_xpn(ecg.patient_name, charset))}
    if ecg.patient_birth_date and _DICOM_DA.match(ecg.patient_birth_date):
        pid[7] = Input(ecg.patient_birth_date)
    sex = (ecg.patient_sex or "").strip().upper()
    pid[8] = Input(sex if sex in ("M", "F", "O") else ("U" if sex else ""))
    segments.append(("PID", pid))
    if cfg.include_pv1:
        segments.append(("PV1", {1: "1", 2: cfg.pv1_patient_class}))

    placer = text(ecg.placer_order_number, "ORC-2")
    filler = text(ecg.filler_order_number, "ORC-3")
    segments.append(("ORC", {1: "RE", 2: placer, 3: filler, 9: ts}))  # RE: observations to follow
    observed_at = Input(dicom_dt_to_hl7(ecg.acquisition_datetime))
    segments.append(("OBR", {
        1: "1", 2: placer, 3: filler, 4: cfg.order_code, 7: observed_at,
        18: text(ecg.accession_number, "OBR-18"), 19: text(ecg.requested_procedure_id, "OBR-19"), 22: ts,
        24: "EC", 25: "F",  # diagnostic service section: electrocardiac; final
    }))

    def obx(value_type: str, identifier: str, value: str, abnormal: str = "") -> None:
        n = sum(1 for name, _ in segments if name == "OBX") + 1
        segments.append(("OBX", {1: str(n), 2: value_type, 3: identifier, 5: value, 8: abnormal, 11: "F",
                                 14: observed_at}))

    if prediction is None:
        obx("ST", IMPRESSION, text(REJECTED_PREFIX + ecg.error, "OBX-5"))
    else:
        _prediction_observations(obx, prediction, cfg)
    if ecg.study_instance_uid:
        obx("ST", STUDY_UID, Input(escape(ecg.study_instance_uid)))
    return segments


def _prediction_observations(obx: Any, prediction: Prediction, cfg: Hl7Config) -> None:
    probabilities = prediction.probabilities or {}
    for code in FINDINGS:
        p = probabilities.get(code)
        if p is None or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise OruBuildError(f"OBX-5: probability of {code} missing or not in [0, 1]")
        local = cfg.probability_codes[code]
        obx("NM", f"{escape(local)}^{escape(FINDING_NAMES[code])} probability^{cfg.probability_coding_system}",
            Input(f"{p:.{PROBABILITY_DECIMALS}f}"))
    findings = [c for c in FINDINGS if c in set(prediction.findings or [])]
    for code in findings:
        obx("CWE", IMPRESSION, Input(f"{FINDING_SNOMED[code]}^{FINDING_NAMES[code]}^SCT"), abnormal="A")
    if not findings:
        obx("ST", IMPRESSION, escape("None of " + ", ".join(FINDINGS) + " found above threshold"), abnormal="N")
    for flag in prediction.quality_flags or []:
        obx("ST", f"QUALITY^Signal quality flag^{cfg.probability_coding_system}", Input(escape(str(flag))))
    obx("ST", f"MODEL_SHA256^AI model SHA-256^{cfg.probability_coding_system}", Input(escape(prediction.model_sha256)))
    if prediction.demo_model:
        obx("ST", f"MODEL_DEMO^AI model is a demo^{cfg.probability_coding_system}",
            "DEMO MODEL (untrained) - NOT FOR CLINICAL USE")


def build_oru(
    ecg: EcgInstance, prediction: Prediction | None, cfg: Hl7Config, control_id: str, *, now: datetime | None = None
) -> str:
    """The ORU^R01 for ``ecg`` as ER7 (segments separated by ``\\r``).

    ``prediction`` is None for a rejected ECG: the message then carries
    "ECG could not be analysed: <reason>" instead of findings.

    ``now`` (default: the current time) is the message time (MSH-7, ORC-9,
    OBR-22), sent in UTC; a naive datetime is taken as UTC.

    Validated with hl7apy at STRICT, in two parts that together equal
    :func:`build_oru_reference` (field-by-field assignment, then
    ``validate()``), at a fraction of its cost (~1 ms instead of ~60):

    * the message *shape* - the ER7 with every value from the ECG, the
      prediction, the clock and the control id masked - is parsed by hl7apy
      at STRICT, validated, and must serialise back unchanged; the result is
      cached per shape (few: optional fields present, number of OBX, config);
    * every masked value is checked on every build by hl7apy's STRICT
      datatype class for its position (length, number, date/time format),
      which is all that STRICT checks of a value, and must be written back
      unchanged by it.

    Whatever the fast path cannot vouch for (a shape hl7apy rejects or writes
    differently, a value it rewrites) goes the reference way, so errors and
    output are the reference's.

    Raises :class:`OruBuildError` (field named, value not) when the ECG cannot
    be expressed in a valid message.
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.factories import datatype_factory

    segments = _oru_segments(ecg, prediction, cfg, control_id, now)
    er7, shape, values = _render_er7(segments)
    # (a configured value holding the mask character could misalign the check)
    checks = _shape_checks(shape) if shape.count(_MASK) == len(values) else None
    if checks is None:  # hl7apy does not accept this shape as it is: let it name the problem
        return _render_hl7apy(segments)
    checked = set()
    for (datatype, label), value in zip(checks, values):
        if (datatype, value) in checked:  # e.g. OBX-14 repeats one time stamp
            continue
        checked.add((datatype, value))
        try:
            written = datatype_factory(datatype, value, _VERSION, VALIDATION_LEVEL.STRICT).to_er7()
        except Exception as exc:  # hl7apy raises several unrelated types
            raise OruBuildError(f"{label}: {_detail(exc)}") from None
        if written != value:  # e.g. hl7apy writes the DTM year 0999 as 999
            return _render_hl7apy(segments)
    return er7


def build_oru_reference(
    ecg: EcgInstance, prediction: Prediction | None, cfg: Hl7Config, control_id: str, *, now: datetime | None = None
) -> str:
    """:func:`build_oru` the slow, direct way (~60 ms): hl7apy assigns every
    field at STRICT, then validates the whole message.  The fast path is
    checked against it (tests, bench) and defers to it to name problems."""
    return _render_hl7apy(_oru_segments(ecg, prediction, cfg, control_id, now))


_VERSION = "2.5.1"
#: A leaf: the text between ER7 delimiters (escape sequences contain none).
_LEAF = re.compile(r"[^|^~&]+")
#: Stands for a masked leaf in a shape; cannot occur in a message.
_MASK = "\x00"
#: What a masked leaf is while hl7apy learns a shape: valid as ST, NM, IS,
#: ID, SI and DTM alike, so the shape's own validity is what is tested.
_SAMPLE = "2000"


def _render_er7(segments: list[Segment]) -> tuple[str, str, list[str]]:
    """(ER7, shape, masked values) of ``segments``.

    The shape is the ER7 with each non-blank leaf of an :class:`Input`
    replaced by :data:`_MASK`; the masked values are listed in message order."""
    er7: list[str] = []
    shape: list[str] = []
    values: list[str] = []
    mask = functools.partial(_mask, values)
    for name, fields in segments:
        # MSH-1 is the field separator itself, MSH-2 the other delimiters
        seg_er7 = ["MSH|^~\\&" if name == "MSH" else name]
        seg_shape = list(seg_er7)
        for i in range(_first_field(name), max((i for i, v in fields.items() if v), default=0) + 1):
            value = fields.get(i, "")
            seg_er7.append(value)
            seg_shape.append(_LEAF.sub(mask, value) if isinstance(value, Input) else value)
        er7.append("|".join(seg_er7))
        shape.append("|".join(seg_shape))
    return "\r".join(er7), "\r".join(shape), values


def _first_field(segment: str) -> int:
    """The first field written after the segment name (MSH-3 after ``MSH|^~\\&``)."""
    return 3 if segment == "MSH" else 1


def _mask(values: list[str], leaf: re.Match[str]) -> str:
    if not leaf.group().strip():
        return leaf.group()  # hl7apy may drop a blank leaf: keep it in the shape
    values.append(leaf.group())
    return _MASK


@functools.lru_cache(maxsize=2048)
def _shape_checks(shape: str) -> tuple[tuple[str, str], ...] | None:
    """For each masked leaf of ``shape``: (hl7apy datatype, field label), or
    None when hl7apy at STRICT rejects the shape or would write it differently.

    Parses the shape (masked leaves set to :data:`_SAMPLE`) with hl7apy at
    STRICT, validates it, and requires ``to_er7()`` to give the same text."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    sample = shape.replace(_MASK, _SAMPLE)
    try:
        msg = parse_message(sample, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        msg.validate()
        if msg.to_er7() != sample:
            return None
        tree = [(sc.datatype, sc.to_er7()) for sc in _subcomponents(msg)]
    except Exception:  # hl7apy raises several unrelated types
        return None
    text = []  # (leaf of the shape, field label) in message order, as hl7apy stores them
    for segment in shape.split("\r"):
        name, *fields = segment.split("|")
        first = _first_field(name)
        for i, field in enumerate(fields[first - 1 - (name == "MSH"):], start=first):
            text.extend((leaf, f"{name}-{i}") for leaf in _LEAF.findall(field))
    if [leaf.replace(_MASK, _SAMPLE) for leaf, _ in text] != [value for _, value in tree]:
        return None  # hl7apy splits this text differently: the masked values cannot be mapped
    return tuple((datatype, label) for (leaf, label), (datatype, _) in zip(text, tree) if leaf == _MASK)


def _subcomponents(element: Any) -> Iterator[Any]:
    """hl7apy's non-empty leaves under ``element`` in message order (MSH-1 and
    MSH-2, the delimiters, left out)."""
    for child in element.children:
        if child.classname == "SubComponent":
            if child.to_er7():
                yield child
        elif child.name not in ("MSH_1", "MSH_2"):
            yield from _subcomponents(child)


def _detail(exc: Exception) -> str:
    if hasattr(exc, "max_length") or "max length" in str(exc):
        return "value longer than HL7 v2.5.1 allows"
    return type(exc).__name__


def _set(segment: Any, field: str, er7: str) -> None:
    """Assign an ER7 value to ``segment.<field>``; hl7apy STRICT errors become
    :class:`OruBuildError` naming the field only."""
    if er7 == "":
        return
    try:
        setattr(segment, field, er7)
    except Exception as exc:  # hl7apy raises several unrelated types
        raise OruBuildError(f"{field.upper().replace('_', '-')}: {_detail(exc)}") from None


def _render_hl7apy(segments: list[Segment]) -> str:
    """``segments`` assigned field by field to an hl7apy ORU_R01 at STRICT,
    validated, written as ER7."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message

    msg = Message("ORU_R01", version=_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    result = patient = order = None
    for name, fields in segments:
        if name == "MSH":
            segment = msg.msh
        elif name == "PID":
            result = msg.add_group("ORU_R01_PATIENT_RESULT")
            patient = result.add_group("ORU_R01_PATIENT")
            segment = patient.add_segment("PID")
        elif name == "PV1":
            segment = patient.add_group("ORU_R01_VISIT").add_segment("PV1")
        elif name == "ORC":
            order = result.add_group("ORU_R01_ORDER_OBSERVATION")
            segment = order.add_segment("ORC")
        elif name == "OBR":
            segment = order.add_segment("OBR")
        else:
            segment = order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        for i, value in fields.items():
            _set(segment, f"{name.lower()}_{i}", str(value))
    try:
        # Every field was checked on assignment (STRICT); this checks the
        # structure (required segments and fields, group order).
        msg.validate()
        return msg.to_er7()
    except Exception as exc:
        raise OruBuildError(f"ORU^R01 validation: {type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    # hl7apy's structural errors name segments and fields; its length errors
    # quote the value (PHI), so those are replaced.
    text = str(exc)
    if "max length" in text:
        return "a value is longer than HL7 v2.5.1 allows"
    return text.splitlines()[0][:120] if text else ""


def payload_codec(payload: str) -> str:
    """The Python codec for a stored message, from its own MSH-18."""
    msh = payload.split("\r", 1)[0].split("|")
    return CHARSET_CODECS.get(msh[17] if len(msh) > 17 else "", "utf-8")
