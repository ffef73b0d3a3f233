r"""Build one ORU^R01 (HL7 v2.5.1) result message for one ECG.

Pure: ORM rows + configuration in, ER7 text out.  The ER7 is written as
text and validated with hl7apy at STRICT (see :func:`build_oru`: the
message's shape once, its values on every build), which gives the same bytes
and the same errors as assigning every field to an hl7apy message
(:func:`build_oru_reference`) at ~1/70 of the cost.  Any problem raises
:class:`OruBuildError` with a message that names the HL7 field but never the
(PHI) value.

What a value from the ECG becomes (the rule; README "HL7 results")
--------------------------------------------------------------------
Every field value of every segment leaves through :func:`_oru_segments`, and
every text taken from the ECG row (names, ids, issuer, order numbers,
accession, rejection reason, quality flags, UIDs) through :func:`escape`:

1. Control characters - C0 (U+0000-U+001F: CR, LF, VT 0x0B, FS 0x1C, ...),
   DEL, C1 (U+0080-U+009F), U+2028/U+2029 and lone surrogates - are replaced
   by ``?`` (the receiver already does the same to header values).  None can
   reach the wire, so a value can never end a segment or an MLLP frame.  A
   data-set value quoted inside a reason was already written repr-style
   upstream (``'A\x1c\rMSH'``, :mod:`gateway.quoting`), so what it held stays
   readable.  hl7apy rewrites the ``\Xhh\`` hex escape (as ``\E\Xhh\E\``), so
   a hex escape could not be validated: replacement it is.
2. The HL7 delimiters are escaped: ``\`` -> ``\E\``, ``|`` -> ``\F\``,
   ``^`` -> ``\S\``, ``&`` -> ``\T\``, ``~`` -> ``\R\``.
3. Characters outside MSH-18: accents are folded (Müller -> Muller);
   anything else is an error in identifying fields and ``?`` in free text.
4. Length, counted on the escaped text as hl7apy does (ST 199, IS 20):
   identifiers (PID-3.1, order numbers, accession, requested procedure id,
   Study UID) are never cut (a cut id can name another patient or order);
   the receiver stores at most 64 characters, which fit even fully escaped
   (3 x 64 = 192).  The assigning authority (PID-3.4, IS 20) is mapped by
   ``[hl7] assigning_authorities``, else cut to 20 characters with a WARNING.
   A name component longer than 199 characters is cut (WARNING); no name at
   all is sent as :data:`NO_NAME` (PID-5 is required).  A physician's
   statement or comment is sent whole, in TX pieces (:func:`escape_pieces`);
   other free text is cut to fit, marked; a rejection reason is sent as a short reason of at
   most :data:`REASON_LIMIT` characters (its leading problems, then
   "... (full report in the admin view)"); the full reason stays in the
   database (``results show``, API, web view).

The message passes one more check before it is framed (``mllp.frame_problem``).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from gateway.findings import BY_CODE, FINDINGS
from gateway.quoting import quote
from gateway.report.measurements import BY_KEY
from gateway.timeutil import as_utc, utcnow

if TYPE_CHECKING:  # ORM and config types only; nothing heavy at import time
    from gateway.config import Hl7Config
    from gateway.store.models import EcgInstance, Prediction

log = logging.getLogger("gateway.deliver")

#: Python codec for each MSH-18 value the configuration allows.
CHARSET_CODECS: dict[str, str] = {"UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "ASCII": "ascii"}

#: Probabilities are sent with this many decimals (NM, fixed point).
PROBABILITY_DECIMALS = 4

IMPRESSION = "8601-7^EKG impression^LN"
STUDY_UID = "113014^DICOM Study^DCM"
REJECTED_PREFIX = "ECG could not be analysed: "

#: hl7apy's (v2.5.1) maximum lengths, counted on the escaped text.
ST_MAX = 199
IS_MAX = 20
#: The longest rejection reason sent (escaped characters after
#: :data:`REJECTED_PREFIX`): well below ST_MAX, short enough for a result list.
REASON_LIMIT = 150
#: PID-5 of an ECG without a patient name: XPN-7 name type "U" (unspecified, HL7 table 0200).
NO_NAME = "^^^^^^U"
#: Ends a reason or text that was shortened to fit.
MORE = "... (full report in the admin view)"

#: Replaced by :data:`REPLACEMENT` in every field value (rule 1 above).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
REPLACEMENT = "?"

_DICOM_DT = re.compile(r"^(\d{4}(?:\d{2}){0,5})(?:\.(\d{1,6}))?([+-]\d{4})?$")
_DICOM_DA = re.compile(r"^\d{8}$")
_DELIMITERS = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


#: The OBR-25 / OBX-11 values the gateway sends (HL7 tables 0123 and 0085).
ResultStatus = Literal["P", "F", "C"]


def result_status_of(payload: str | None) -> ResultStatus | None:
    """OBR-25 (result status) of a stored ER7 message when it is P, F or C, else None."""
    for segment in (payload or "").replace("\n", "\r").split("\r"):
        fields = segment.split("|")
        if fields[0] == "OBR":
            value = fields[25] if len(fields) > 25 else ""
            return "P" if value == "P" else "F" if value == "F" else "C" if value == "C" else None
    return None


class OruBuildError(ValueError):
    """The ECG cannot be expressed as a valid ORU^R01; names the field, never the value."""


@dataclass(frozen=True)
class OverRead:
    """A physician's confirmation of the AI result, as an ORU carries it
    (``gateway.admin.overread`` makes it from a ``confirmations`` row).

    The message then reports ``findings`` (and ``statements``, ``comment``) as
    the EKG impression with the reader as OBX-16 responsible observer and
    OBR-32 principal result interpreter; the AI's probabilities and its own
    findings stay in the message as AI observations."""

    #: Confirmed finding codes (``gateway.findings``).
    findings: tuple[str, ...]
    #: The reader's identifier (CNN-1/XCN-1), family and given name.
    reader_id: str
    family_name: str
    given_name: str = ""
    #: Assigning authority of ``reader_id`` (CNN-9/XCN-9; HL7 requires one with an id).
    authority: str = ""
    #: When the reader confirmed (NDL-2 start date/time).
    at: datetime | None = None
    statements: tuple[str, ...] = ()
    comment: str = ""


def over_read_from(row: Any, authority: str) -> OverRead:
    """The ORU's view of a ``confirmations`` row (or anything with its
    attributes): the reader's HL7 id (else the login name), the full name
    split as :func:`gateway.report.people.split_name` does."""
    from gateway.report.people import split_name

    family, given = split_name(row.full_name, row.username)
    return OverRead(
        findings=tuple(row.findings or ()),
        reader_id=row.hl7_id or row.username,
        family_name=family,
        given_name=given,
        authority=authority,
        at=as_utc(row.created_at),
        statements=tuple(row.statements or ()),
        comment=row.comment or "",
    )


@dataclass(frozen=True)
class OruOptions:
    """Choices for one message beyond the ECG, its prediction and the
    configuration (keyword fields; add new ones with a default)."""

    #: OBR-25 and OBX-11: "P" preliminary (an AI result no physician has read),
    #: "F" final, "C" a correction of a result already sent as final for this
    #: order (e.g. a same-patient new version of the SOP instance, a changed over-read).
    result_status: ResultStatus = "F"
    #: EI-1 of the gateway's filler order number (ORC-3/OBR-3) when the ECG
    #: carries no Filler Order Number; None = the ECG's row id.  A correction
    #: should repeat the number of the message it corrects.
    filler_id: str | None = None
    #: The PDF report to carry in an ED OBX (``[hl7] embed_pdf``); only with a prediction.
    report_pdf: bytes | None = None
    #: The physician's over-read this message reports (None: the AI result alone).
    over_read: OverRead | None = None


def replace_controls(text: str) -> str:
    """``text`` with every control character replaced by ``?`` (rule 1)."""
    return CONTROL_CHARACTERS.sub(REPLACEMENT, text) if CONTROL_CHARACTERS.search(text) else text


def escape(text: str) -> str:
    """Free text as an ER7 leaf: control characters replaced by ``?``, then
    the delimiters escaped (``\\`` first, then ``| ^ & ~``).

    hl7apy's own escaping leaves a backslash alone when it already looks like an
    escape sequence (``\\H\\``), which would change text coming from DICOM.
    """
    text = replace_controls(text)
    for char, sequence in _DELIMITERS:
        if char in text:
            text = text.replace(char, sequence)
    return text


def escape_bounded(text: str, limit: int) -> tuple[str, bool]:
    """(:func:`escape` of the longest prefix of ``text`` whose escaped form has
    at most ``limit`` characters, whether anything was cut).  Never cuts
    inside an escape sequence; trailing blanks of a cut are dropped."""
    out = escape(text)
    if len(out) <= limit:
        return out, False
    pieces, used = [], 0
    for ch in text:
        piece = escape(ch)
        if used + len(piece) > limit:
            break
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces).rstrip(), True


def escape_pieces(text: str, limit: int) -> list[str]:
    """``text`` escaped (:func:`escape`) in consecutive pieces of at most
    ``limit`` characters each, whose concatenation is the whole escaped text.
    A piece ends before a blank where one is in reach (the blank starts the
    next piece: HL7 TX keeps leading blanks), never inside an escape sequence."""
    escaped = [escape(ch) for ch in text]
    pieces: list[str] = []
    start = 0
    while start < len(escaped):
        end, used, blank = start, 0, -1
        while end < len(escaped) and used + len(escaped[end]) <= limit:
            if escaped[end].isspace() and end > start:
                blank = end
            used += len(escaped[end])
            end += 1
        if end < len(escaped) and blank > start:
            end = blank
        pieces.append("".join(escaped[start:end]))
        start = end
    return pieces


def short_reason(reason: str, limit: int = REASON_LIMIT) -> str:
    """An escaped rejection reason of at most ``limit`` characters.

    A reason that fits is sent whole.  A longer one keeps its leading
    ``"; "``-separated problems that fit (at least the start of the first),
    then :data:`MORE`: "12 of 12 leads unusable: I: flat (...); II: flat
    (...)... (full report in the admin view)"."""
    reason = reason.strip()
    full = escape(reason)
    if len(full) <= limit:
        return full
    budget = limit - len(MORE)
    parts = reason.split("; ")
    kept = ""
    for k in range(1, len(parts) + 1):
        candidate = escape("; ".join(parts[:k]))
        if len(candidate) > budget:
            break
        kept = candidate
    if not kept:
        kept, _ = escape_bounded(parts[0], budget)
    return kept + MORE


def to_charset(text: str, charset: str, field: str, *, replace: bool = False) -> str:
    """Text representable in MSH-18 ``charset``: accents are folded (Müller ->
    Muller) for 8859/1 and ASCII when needed; anything else is an error, or
    ``?`` when ``replace`` (free text)."""
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
                if not replace:
                    raise OruBuildError(f"{field}: characters not representable in MSH-18 charset {charset!r}")
                ch = REPLACEMENT
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


def dicom_pn_to_xpn(pn: str | None, charset: str, notes: list[str] | None = None) -> str:
    """DICOM PN ``family^given^middle^prefix^suffix`` as an escaped HL7 XPN
    ``family^given^middle^suffix^prefix`` (the last two swap places).

    Uses the first non-empty component group (alphabetic, else ideographic,
    else phonetic).  A component longer than HL7 allows (199 escaped
    characters) is cut; ``notes`` (when given) then says so, without the name."""
    if not pn:
        return ""
    group = next((g for g in pn.split("=") if g.strip("^ ")), "")
    parts = (group.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (
        escape_bounded(to_charset(replace_controls(p.strip()), charset, "PID-5"), ST_MAX) for p in parts
    )
    xpn = [family, given, middle, suffix, prefix]
    if notes is not None and any(cut for _, cut in xpn):
        notes.append(f"PID-5: a name component longer than {ST_MAX} characters (escaped) was cut to fit")
    return "^".join(text for text, _ in xpn).rstrip("^")


def assigning_authority(issuer: str | None, cfg: Hl7Config, notes: list[str] | None = None) -> str:
    """PID-3.4 (HD-1, IS: at most 20 characters) for a DICOM IssuerOfPatientID,
    escaped: ``[hl7] assigning_authorities[issuer]`` when listed, else the
    issuer itself, cut to 20 characters when longer (``notes`` says so, with
    the issuer quoted: an issuer is not PHI)."""
    issuer = (issuer or "").strip()
    if not issuer:
        return ""
    mapped = cfg.assigning_authorities.get(issuer)
    if mapped is not None:
        return escape(mapped)
    text, cut = escape_bounded(to_charset(replace_controls(issuer), cfg.charset, "PID-3"), IS_MAX)
    if cut and notes is not None:
        notes.append(
            f"PID-3.4: IssuerOfPatientID {quote(issuer)} is longer than {IS_MAX} characters; sent cut to"
            f" {quote(text)}; map it in [hl7] assigning_authorities"
        )
    return text


def order_key(ecg: EcgInstance) -> str:
    """Messages with the same key go out in order: one patient (issuer|id), or
    one SOP instance when the ECG carries no patient id."""
    if ecg.patient_id:
        return f"{ecg.issuer_of_patient_id or ''}|{ecg.patient_id}"[:200]
    return f"sop:{ecg.sop_instance_uid}"


def _now_ts(now: datetime | None = None) -> str:
    # A naive datetime is taken as UTC.
    return as_utc(now or utcnow()).strftime("%Y%m%d%H%M%S+0000")


class Input(str):
    """A field value that varies from message to message (ECG, prediction,
    clock, control id), as opposed to a constant or a configured value: it is
    masked in the message shape, and hl7apy checks it on every build."""

    __slots__ = ()


#: One segment: its name and its non-empty fields by HL7 sequence number.
Segment = tuple[str, dict[int, str]]


def _oru_segments(
    ecg: EcgInstance,
    prediction: Prediction | None,
    cfg: Hl7Config,
    control_id: str,
    now: datetime | None,
    options: OruOptions = OruOptions(),
    notes: list[str] | None = None,
) -> list[Segment]:
    """What the ORU^R01 says, segment by segment, as escaped ER7 field values.

    The one place every field value passes: values from the ECG go through
    :func:`escape` (and the length rules of the module docstring), and every
    field of every segment, configured ones included, through
    :func:`replace_controls` at the end.  ``notes`` (when given) collects
    what was shortened, without PHI.

    Raises :class:`OruBuildError` for problems found before HL7 rules apply
    (no patient id, characters outside MSH-18, bad probabilities)."""
    charset = cfg.charset
    if not (ecg.patient_id or "").strip():
        raise OruBuildError("PID-3: the ECG has no Patient ID")
    if prediction is None and not (ecg.error or "").strip():
        raise OruBuildError("OBX-5: no prediction and no rejection reason")

    def ident(value: str | None, field: str) -> Input:
        # identifiers are never cut: hl7apy names the field when one is too long
        return Input(escape(to_charset(replace_controls(value.strip()), charset, field)) if value else "")

    def free_text(value: str, field: str = "OBX-5") -> Input:
        # free text is cut to fit, and the cut is marked
        text = to_charset(replace_controls(value.strip()), charset, field, replace=True)
        out, cut = escape_bounded(text, ST_MAX)
        if cut:
            out = escape_bounded(text, ST_MAX - len(MORE))[0] + MORE
            if notes is not None:
                notes.append(f"{field}: a text longer than {ST_MAX} characters (escaped) is sent shortened")
        return Input(out)

    def text_pieces(value: str, field: str = "OBX-5") -> list[Input]:
        # a physician's text is sent whole: in pieces that each fit ST's 199 characters
        text = to_charset(replace_controls(value.strip()), charset, field, replace=True)
        return [Input(piece) for piece in escape_pieces(text, ST_MAX)]

    ts = Input(_now_ts(now))
    demo = bool(prediction is not None and prediction.demo_model)
    status = options.result_status
    if demo and options.over_read is None and status == "F":
        status = "P"  # a demo model's read is never final (MSH-11 = D says so too)
    segments: list[Segment] = [
        (
            "MSH",
            {
                3: cfg.sending_application,
                4: cfg.sending_facility,
                5: cfg.receiving_application,
                6: cfg.receiving_facility,
                7: ts,
                9: "ORU^R01^ORU_R01",
                10: Input(control_id),
                11: Input("D" if demo else "P"),
                12: "2.5.1",
                18: charset,
            },
        )
    ]

    # CX: ID ^ check digit ^ check digit scheme ^ assigning authority ^ identifier type code
    cx_parts = [
        ident(ecg.patient_id, "PID-3"),
        "",
        "",
        Input(assigning_authority(ecg.issuer_of_patient_id, cfg, notes)),
        cfg.identifier_type_code,
    ]
    cx = Input("^".join(cx_parts).rstrip("^"))
    # PID-5 is required: an ECG without a name says "name unspecified" (XPN-7 name type U), never a made-up name
    pid = {1: "1", 3: cx, 5: Input(dicom_pn_to_xpn(ecg.patient_name, charset, notes) or NO_NAME)}
    if ecg.patient_birth_date and _DICOM_DA.match(ecg.patient_birth_date):
        pid[7] = Input(ecg.patient_birth_date)
    sex = (ecg.patient_sex or "").strip().upper()
    pid[8] = Input(sex if sex in ("M", "F", "O") else ("U" if sex else ""))
    segments.append(("PID", pid))
    if cfg.include_pv1:
        segments.append(("PV1", {1: "1", 2: cfg.pv1_patient_class}))

    placer = ident(ecg.placer_order_number, "ORC-2")
    # EI: the cart's Filler Order Number, else the gateway's own id in its namespace
    filler = ident(ecg.filler_order_number, "ORC-3")
    if not filler:
        own = options.filler_id if options.filler_id is not None else ecg.id
        if own is None or not str(own).strip():
            raise OruBuildError("ORC-3: the ECG has no id for the filler order number (not stored yet)")
        filler = Input(escape(str(own).strip()) + "^" + escape(cfg.filler_namespace))
    segments.append(("ORC", {1: "RE", 2: placer, 3: filler, 9: ts}))  # RE: observations to follow
    observed_at = Input(dicom_dt_to_hl7(ecg.acquisition_datetime))
    over_read = options.over_read if prediction is not None else None
    observer = ""
    obr = {
        1: "1",
        2: placer,
        3: filler,
        4: cfg.order_code,
        7: observed_at,
        18: ident(ecg.accession_number, "OBR-18"),
        19: ident(ecg.requested_procedure_id, "OBR-19"),
        22: ts,
        24: "EC",
        25: status,  # diagnostic service section: electrocardiac; P preliminary, F final, C corrected
    }
    if over_read is not None:
        # OBR-32 NDL: CNN (subcomponents: id & family & given & ... & assigning authority) ^ start time;
        # OBX-16 XCN: the same person as components.  Names are free text (cut to fit), the id is not.
        reader = [
            ident(over_read.reader_id, "OBR-32"),
            free_text(over_read.family_name, "OBR-32"),
            free_text(over_read.given_name, "OBR-32") if over_read.given_name else Input(""),
            ident(over_read.authority, "OBR-32"),
        ]
        if len(reader[3]) > IS_MAX:
            raise OruBuildError(f"OBR-32: the reader's assigning authority is longer than {IS_MAX} characters")
        cnn = "&".join([reader[0], reader[1], reader[2], "", "", "", "", "", reader[3]]).rstrip("&")
        at = Input(_now_ts(over_read.at)) if over_read.at is not None else Input("")
        obr[32] = Input(f"{cnn}^{at}".rstrip("^"))
        observer = Input("^".join([reader[0], reader[1], reader[2], "", "", "", "", "", reader[3]]).rstrip("^"))
    segments.append(("OBR", obr))

    def obx(
        value_type: str,
        identifier: str,
        value: str,
        abnormal: str = "",
        units: str = "",
        method: str = "",
        equipment: str = "",
        responsible: str = "",
        sub_id: str = "",
    ) -> None:
        n = sum(1 for name, _ in segments if name == "OBX") + 1
        segments.append(
            (
                "OBX",
                {
                    1: str(n),
                    2: value_type,
                    3: identifier,
                    4: sub_id,
                    5: value,
                    6: units,
                    8: abnormal,
                    11: status,
                    14: observed_at,
                    16: responsible,
                    17: method,
                    18: equipment,
                },
            )
        )

    # The cart's own reading first, marked as the device's (OBX-18), never mixed with the AI's below.
    _cart_observations(obx, free_text, ecg, cfg)
    if prediction is None:
        text = to_charset(replace_controls((ecg.error or "").strip()), charset, "OBX-5", replace=True)
        reason = short_reason(text)
        if notes is not None and reason != escape(text.strip()):
            notes.append(
                f"OBX-5: the rejection reason is sent shortened to {len(reason)} characters"
                " (the full reason stays in the database)"
            )
        obx("ST", IMPRESSION, Input(escape(REJECTED_PREFIX) + reason))
    else:
        _prediction_observations(obx, free_text, prediction, cfg, over_read, observer, text_pieces)
        if options.report_pdf:
            # validated with a placeholder (hl7apy checks OBX-5 as ST, at most 199 characters);
            # the base64 text, which needs no escaping, replaces it in the finished message
            obx("ED", f"{REPORT_PDF}^{cfg.probability_coding_system}", ED_PDF_PREFIX + ED_PLACEHOLDER)
    study = ident(ecg.study_instance_uid, "OBX-5")
    if study:
        obx("ST", STUDY_UID, study)
    # Configured values and constants too: no control character reaches the wire.
    return [
        (name, {i: v if not CONTROL_CHARACTERS.search(v) else type(v)(replace_controls(v)) for i, v in fields.items()})
        for name, fields in segments
    ]


#: OBX-3 of the embedded PDF report, and OBX-5 before its data: ED = source application ^ type
#: (table 0191 AP: other application data) ^ subtype (PDF; outside 2.5.1's table 0291) ^ encoding ^ data.
REPORT_PDF = "REPORT_PDF^12-lead ECG report (PDF)"
ED_PDF_PREFIX = "^AP^PDF^Base64^"
ED_PLACEHOLDER = "PDF"
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def embed_pdf(er7: str, pdf: bytes | None) -> str:
    """``er7`` with the ED OBX's placeholder replaced by ``pdf`` as base64 (no
    line breaks: ``b64encode`` does not wrap; its alphabet holds no HL7 delimiter)."""
    if not pdf:
        return er7
    import base64

    data = base64.b64encode(pdf).decode("ascii")
    if not _BASE64.match(data):  # cannot happen; the wire must never see a delimiter from here
        raise OruBuildError("OBX-5: the PDF's base64 text holds a character outside its alphabet")
    segments = er7.split("\r")
    for i, segment in enumerate(segments):
        fields = segment.split("|")
        if fields[0] == "OBX" and len(fields) > 5 and fields[2] == "ED" and fields[5] == ED_PDF_PREFIX + ED_PLACEHOLDER:
            fields[5] = ED_PDF_PREFIX + data
            segments[i] = "|".join(fields)
            return "\r".join(segments)
    raise OruBuildError("OBX-5: no place for the PDF report in the message")


def embedded_pdf(er7: str) -> bytes | None:
    """The PDF report an ORU carries (:func:`embed_pdf`), or None."""
    import base64

    for segment in er7.replace("\n", "\r").split("\r"):
        fields = segment.split("|")
        if fields[0] == "OBX" and len(fields) > 5 and fields[2] == "ED" and fields[5].startswith(ED_PDF_PREFIX):
            return base64.b64decode(fields[5][len(ED_PDF_PREFIX) :])
    return None


#: OBX-6 (CE) of each unit the cart's measurements are converted to: UCUM code ^ text ^ UCUM.
UCUM_UNITS: dict[str, str] = {"ms": "ms^milliseconds^UCUM", "/min": "/min^per minute^UCUM", "deg": "deg^degrees^UCUM"}
#: OBX-3 of a statement of the cart's own interpretation (coding system: ``[hl7] probability_coding_system``).
CART_STATEMENT = "CART_STATEMENT^ECG cart statement"
#: OBX-17 of a measurement the gateway derived (the heart rate from the cart's RR interval).
DERIVED_METHOD = "DERIVED_RR^Computed by the gateway from the cart's RR interval"


def _number_text(value: Any) -> str:
    """An NM value: plain decimal notation, no exponent, no trailing zeros."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OruBuildError("OBX-5: a cart measurement is not a finite number")
    if isinstance(value, int):
        return str(value)
    return format(value, "f").rstrip("0").rstrip(".") or "0"


def _cart_observations(obx: Any, free_text: Any, ecg: EcgInstance, cfg: Hl7Config) -> None:
    """The cart's global measurements that have a LOINC code (NM, UCUM units)
    and its statements (ST, :data:`CART_STATEMENT`), each with the device in
    OBX-18 (EI-1: manufacturer, model, serial); a derived heart rate carries
    :data:`DERIVED_METHOD` in OBX-17 instead.  Measurements without a LOINC
    code (unknown to ``gateway.report.measurements``) stay in the database."""
    measurements = getattr(ecg, "measurements", None) or {}
    statements = getattr(ecg, "cart_statements", None) or []
    if not measurements and not statements:
        return
    device = " ".join(
        str(v).strip()
        for v in (getattr(ecg, "manufacturer", None), getattr(ecg, "device_model", None))
        if v and str(v).strip()
    )
    serial = (getattr(ecg, "device_serial", None) or "").strip()
    if serial:
        device = f"{device} SN {serial}".strip()
    equipment = free_text(device or "ECG cart")
    system = cfg.probability_coding_system
    for key, entry in measurements.items():
        kind = BY_KEY.get(key)
        if (
            kind is None
            or not isinstance(entry, dict)
            or entry.get("code") != kind.loinc
            or entry.get("unit") != kind.unit
        ):
            continue
        derived = entry.get("source") == "derived"
        obx(
            "NM",
            f"{kind.loinc}^{escape(kind.loinc_display)}^LN",
            Input(_number_text(entry.get("value"))),
            units=UCUM_UNITS[kind.unit],
            method=f"{DERIVED_METHOD}^{system}" if derived else "",
            equipment="" if derived else equipment,
        )
    for text in statements:
        if str(text).strip():
            obx("ST", f"{CART_STATEMENT}^{system}", free_text(str(text)), equipment=equipment)


#: OBX-3 (local codes) of an over-read message: the AI's own findings (kept beside the
#: reader's impression) and the reader's comment.
AI_FINDING = "AI_FINDING^AI finding (above threshold)"
READER_COMMENT = "READER_COMMENT^Over-read comment"


def _prediction_observations(
    obx: Any,
    free_text: Any,
    prediction: Prediction,
    cfg: Hl7Config,
    over_read: OverRead | None = None,
    observer: str = "",
    text_pieces: Any = None,
) -> None:
    probabilities = prediction.probabilities or {}
    for code in FINDINGS:
        p = probabilities.get(code)
        if p is None or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise OruBuildError(f"OBX-5: probability of {code} missing or not in [0, 1]")
        local = cfg.probability_codes[code]
        obx(
            "NM",
            f"{escape(local)}^{escape(BY_CODE[code].name)} probability^{cfg.probability_coding_system}",
            Input(f"{p:.{PROBABILITY_DECIMALS}f}"),
        )
    findings = [c for c in FINDINGS if c in set(prediction.findings or [])]
    if over_read is None:
        for code in findings:
            obx("CWE", IMPRESSION, Input(f"{BY_CODE[code].snomed}^{BY_CODE[code].name}^SCT"), abnormal="A")
        if not findings:
            obx("ST", IMPRESSION, escape("None of " + ", ".join(FINDINGS) + " found above threshold"), abnormal="N")
    else:
        system = cfg.probability_coding_system
        # the AI's call stays visible as the AI's, not as the report's impression
        for code in findings:
            obx("CWE", f"{AI_FINDING}^{system}", Input(f"{BY_CODE[code].snomed}^{BY_CODE[code].name}^SCT"))
        confirmed = [c for c in FINDINGS if c in set(over_read.findings)]
        for code in confirmed:
            obx(
                "CWE",
                IMPRESSION,
                Input(f"{BY_CODE[code].snomed}^{BY_CODE[code].name}^SCT"),
                abnormal="A",
                responsible=observer,
            )
        split = 0

        def reader_text(identifier: str, text: str) -> None:
            # one ST when it fits; else TX pieces with the same OBX-3 and sub-IDs
            # "k.1", "k.2", ... (k counts the split texts), to be joined in order
            nonlocal split
            pieces = text_pieces(text)
            if len(pieces) == 1:
                obx("ST", identifier, pieces[0], responsible=observer)
                return
            split += 1
            for i, piece in enumerate(pieces, 1):
                obx("TX", identifier, piece, responsible=observer, sub_id=f"{split}.{i}")

        statements = [text for text in over_read.statements if text.strip()]
        for text in statements:
            reader_text(IMPRESSION, text)
        if not confirmed and not statements:
            obx(
                "ST",
                IMPRESSION,
                escape("None of " + ", ".join(FINDINGS) + " confirmed by the reader"),
                abnormal="N",
                responsible=observer,
            )
        if over_read.comment.strip():
            reader_text(f"{READER_COMMENT}^{system}", over_read.comment)
    for flag in prediction.quality_flags or []:
        obx("ST", f"QUALITY^Signal quality flag^{cfg.probability_coding_system}", free_text(str(flag)))
    obx("ST", f"MODEL_SHA256^AI model SHA-256^{cfg.probability_coding_system}", Input(escape(prediction.model_sha256)))
    if prediction.demo_model:
        obx(
            "ST",
            f"MODEL_DEMO^AI model is a demo^{cfg.probability_coding_system}",
            "DEMO MODEL (untrained) - NOT FOR CLINICAL USE",
        )


def _segments_logged(
    ecg: EcgInstance,
    prediction: Prediction | None,
    cfg: Hl7Config,
    control_id: str,
    now: datetime | None,
    options: OruOptions,
) -> list[Segment]:
    """:func:`_oru_segments`, with one WARNING per value that was shortened
    (names the ECG and the field, never PHI)."""
    notes: list[str] = []
    segments = _oru_segments(ecg, prediction, cfg, control_id, now, options, notes)
    for note in notes:
        log.warning("ecg %s (SOP %s): %s", getattr(ecg, "id", None), getattr(ecg, "sop_instance_uid", None), note)
    return segments


def build_oru(
    ecg: EcgInstance,
    prediction: Prediction | None,
    cfg: Hl7Config,
    control_id: str,
    *,
    now: datetime | None = None,
    options: OruOptions = OruOptions(),
) -> str:
    """The ORU^R01 for ``ecg`` as ER7 (segments separated by ``\\r``).

    ``prediction`` is None for a rejected ECG: the message then carries
    "ECG could not be analysed: <reason>" instead of findings (the reason
    shortened to :data:`REASON_LIMIT` characters when longer).

    ``now`` (default: the current time) is the message time (MSH-7, ORC-9,
    OBR-22), sent in UTC; a naive datetime is taken as UTC.  ``options``:
    result status (final or correction) and the gateway's filler order id.

    Validated with hl7apy at STRICT, in two parts that together equal
    :func:`build_oru_reference` (field-by-field assignment, then
    ``validate()``), at a fraction of its cost (~0.3 ms instead of ~30; the
    plain build cannot reach 3x the model's throughput, bench/bench_hl7.py):

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
    output are the reference's.  Both ways take the same segments, so both
    pass the one escaping place (:func:`_oru_segments`).

    Raises :class:`OruBuildError` (field named, value not) when the ECG cannot
    be expressed in a valid message.
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.factories import datatype_factory

    segments = _segments_logged(ecg, prediction, cfg, control_id, now, options)
    er7, shape, values = _render_er7(segments)
    # (a configured value holding the mask character could misalign the check)
    checks = _shape_checks(shape) if shape.count(_MASK) == len(values) else None
    if checks is None or len(checks) != len(values):
        # hl7apy does not accept this shape as it is (or its values cannot all be mapped): let it name the problem
        return embed_pdf(_render_hl7apy(segments), options.report_pdf)
    checked = set()
    for (datatype, label), value in zip(checks, values, strict=True):
        if (datatype, value) in checked:  # e.g. OBX-14 repeats one time stamp
            continue
        checked.add((datatype, value))
        try:
            written = datatype_factory(datatype, value, _VERSION, VALIDATION_LEVEL.STRICT).to_er7()
        except Exception as exc:  # hl7apy raises several unrelated types
            raise OruBuildError(f"{label}: {_detail(exc)}") from None
        if written != value:  # e.g. hl7apy writes the DTM year 0999 as 999
            return embed_pdf(_render_hl7apy(segments), options.report_pdf)
    return embed_pdf(er7, options.report_pdf)


def build_oru_reference(
    ecg: EcgInstance,
    prediction: Prediction | None,
    cfg: Hl7Config,
    control_id: str,
    *,
    now: datetime | None = None,
    options: OruOptions = OruOptions(),
) -> str:
    """:func:`build_oru` the slow, direct way (~30 ms): hl7apy assigns every
    field at STRICT, then validates the whole message.  The fast path is
    checked against it (tests, bench) and defers to it to name problems."""
    return embed_pdf(_render_hl7apy(_oru_segments(ecg, prediction, cfg, control_id, now, options)), options.report_pdf)


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
    text: list[tuple[str, str]] = []  # (leaf of the shape, field label) in message order, as hl7apy stores them
    for segment in shape.split("\r"):
        name, *fields = segment.split("|")
        first = _first_field(name)
        for i, field in enumerate(fields[first - 1 - (name == "MSH") :], start=first):
            text.extend((leaf, f"{name}-{i}") for leaf in _LEAF.findall(field))
    if [leaf.replace(_MASK, _SAMPLE) for leaf, _ in text] != [value for _, value in tree]:
        return None  # hl7apy splits this text differently: the masked values cannot be mapped
    return tuple((datatype, label) for (leaf, label), (datatype, _) in zip(text, tree, strict=True) if leaf == _MASK)


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
    # hl7apy's groups (untyped: Any), made as their first segment comes
    result: Any = None
    patient: Any = None
    order: Any = None
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
