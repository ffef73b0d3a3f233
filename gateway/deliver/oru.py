"""Build one ORU^R01 (HL7 v2.5.1) result message for one ECG.

Pure: ORM rows + configuration in, ER7 text out.  The message is built with
hl7apy at STRICT validation, then parsed back and validated again, so what is
queued is exactly what was checked.  Any problem raises :class:`OruBuildError`
with a message that names the HL7 field but never the (PHI) value.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import datetime, timezone
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


def _set(segment: Any, field: str, er7: str) -> None:
    """Assign an ER7 value to ``segment.<field>``; hl7apy STRICT errors become
    :class:`OruBuildError` naming the field only."""
    if er7 == "":
        return
    try:
        setattr(segment, field, er7)
    except Exception as exc:  # hl7apy raises several unrelated types
        label = field.upper().replace("_", "-")
        detail = type(exc).__name__
        if hasattr(exc, "max_length") or "max length" in str(exc):
            detail = "value longer than HL7 v2.5.1 allows"
        raise OruBuildError(f"{label}: {detail}") from None


class _Observations:
    """Appends numbered OBX segments to an ORDER_OBSERVATION group."""

    def __init__(self, order_group: Any, observed_at: str) -> None:
        self.group = order_group
        self.observed_at = observed_at
        self.n = 0

    def add(self, value_type: str, identifier: str, value: str, abnormal: str = "") -> None:
        self.n += 1
        obx = self.group.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        _set(obx, "obx_1", str(self.n))
        _set(obx, "obx_2", value_type)
        _set(obx, "obx_3", identifier)
        _set(obx, "obx_5", value)
        _set(obx, "obx_8", abnormal)
        _set(obx, "obx_11", "F")
        _set(obx, "obx_14", self.observed_at)


def _prediction_observations(obs: _Observations, prediction: Prediction, cfg: Hl7Config) -> None:
    probabilities = prediction.probabilities or {}
    for code in FINDINGS:
        p = probabilities.get(code)
        if p is None or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise OruBuildError(f"OBX-5: probability of {code} missing or not in [0, 1]")
        local = cfg.probability_codes[code]
        obs.add("NM", f"{escape(local)}^{escape(FINDING_NAMES[code])} probability^{cfg.probability_coding_system}",
                f"{p:.{PROBABILITY_DECIMALS}f}")
    findings = [c for c in FINDINGS if c in set(prediction.findings or [])]
    for code in findings:
        obs.add("CWE", IMPRESSION, f"{FINDING_SNOMED[code]}^{FINDING_NAMES[code]}^SCT", abnormal="A")
    if not findings:
        obs.add("ST", IMPRESSION, escape("None of " + ", ".join(FINDINGS) + " found above threshold"), abnormal="N")
    for flag in prediction.quality_flags or []:
        obs.add("ST", f"QUALITY^Signal quality flag^{cfg.probability_coding_system}", escape(str(flag)))
    obs.add("ST", f"MODEL_SHA256^AI model SHA-256^{cfg.probability_coding_system}", escape(prediction.model_sha256))
    if prediction.demo_model:
        obs.add("ST", f"MODEL_DEMO^AI model is a demo^{cfg.probability_coding_system}",
                "DEMO MODEL (untrained) - NOT FOR CLINICAL USE", abnormal="")


def build_oru(
    ecg: EcgInstance, prediction: Prediction | None, cfg: Hl7Config, control_id: str, *, now: datetime | None = None
) -> str:
    """The ORU^R01 for ``ecg`` as ER7 (segments separated by ``\\r``).

    ``prediction`` is None for a rejected ECG: the message then carries
    "ECG could not be analysed: <reason>" instead of findings.  The result is
    STRICT-validated: each field on assignment, the whole message at the end.

    ``now`` (default: the current time) is the message time (MSH-7, ORC-9,
    OBR-22), sent in UTC; a naive datetime is taken as UTC.

    Raises :class:`OruBuildError` (field named, value not) when the ECG cannot
    be expressed in a valid message.
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message

    strict = VALIDATION_LEVEL.STRICT
    charset = cfg.charset
    if not ecg.patient_id:
        raise OruBuildError("PID-3: the ECG has no Patient ID")
    if prediction is None and not ecg.error:
        raise OruBuildError("OBX-5: no prediction and no rejection reason")

    def text(value: str | None, field: str) -> str:
        return escape(to_charset(value.strip(), charset, field)) if value else ""

    demo = bool(prediction is not None and prediction.demo_model)
    msg = Message("ORU_R01", version="2.5.1", validation_level=strict)
    msh = msg.msh
    _set(msh, "msh_3", cfg.sending_application)
    _set(msh, "msh_4", cfg.sending_facility)
    _set(msh, "msh_5", cfg.receiving_application)
    _set(msh, "msh_6", cfg.receiving_facility)
    _set(msh, "msh_7", _now_ts(now))
    _set(msh, "msh_9", "ORU^R01^ORU_R01")
    _set(msh, "msh_10", control_id)
    _set(msh, "msh_11", "D" if demo else "P")
    _set(msh, "msh_12", "2.5.1")
    _set(msh, "msh_18", charset)

    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    pid = patient.add_segment("PID")
    _set(pid, "pid_1", "1")
    cx = text(ecg.patient_id, "PID-3")
    if ecg.issuer_of_patient_id:
        cx += "^^^" + text(ecg.issuer_of_patient_id, "PID-3")
    _set(pid, "pid_3", cx)
    _set(pid, "pid_5", dicom_pn_to_xpn(ecg.patient_name, charset))
    if ecg.patient_birth_date and _DICOM_DA.match(ecg.patient_birth_date):
        _set(pid, "pid_7", ecg.patient_birth_date)
    sex = (ecg.patient_sex or "").strip().upper()
    _set(pid, "pid_8", sex if sex in ("M", "F", "O") else ("U" if sex else ""))
    if cfg.include_pv1:
        pv1 = patient.add_group("ORU_R01_VISIT").add_segment("PV1")
        _set(pv1, "pv1_1", "1")
        _set(pv1, "pv1_2", cfg.pv1_patient_class)

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    now = _now_ts(now)
    placer = text(ecg.placer_order_number, "ORC-2")
    filler = text(ecg.filler_order_number, "ORC-3")
    orc = order.add_segment("ORC")
    _set(orc, "orc_1", "RE")  # observations to follow
    _set(orc, "orc_2", placer)
    _set(orc, "orc_3", filler)
    _set(orc, "orc_9", now)
    obr = order.add_segment("OBR")
    observed_at = dicom_dt_to_hl7(ecg.acquisition_datetime)
    _set(obr, "obr_1", "1")
    _set(obr, "obr_2", placer)
    _set(obr, "obr_3", filler)
    _set(obr, "obr_4", cfg.order_code)
    _set(obr, "obr_7", observed_at)
    _set(obr, "obr_18", text(ecg.accession_number, "OBR-18"))
    _set(obr, "obr_19", text(ecg.requested_procedure_id, "OBR-19"))
    _set(obr, "obr_22", now)
    _set(obr, "obr_24", "EC")  # diagnostic service section: electrocardiac
    _set(obr, "obr_25", "F")

    obs = _Observations(order, observed_at)
    if prediction is None:
        obs.add("ST", IMPRESSION, text(REJECTED_PREFIX + ecg.error, "OBX-5"))
    else:
        _prediction_observations(obs, prediction, cfg)
    if ecg.study_instance_uid:
        obs.add("ST", STUDY_UID, escape(ecg.study_instance_uid))

    try:
        # Every field was checked on assignment (STRICT); this checks the
        # structure (required segments and fields, group order).  Parsing the
        # ER7 back as well would double the cost (~70 ms) for no extra check.
        msg.validate()
        er7 = msg.to_er7()
    except Exception as exc:
        raise OruBuildError(f"ORU^R01 validation: {type(exc).__name__}: {_first_line(exc)}") from None
    return er7


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
