"""The cart's global measurements and its own statements, read from a DICOM
ECG's WaveformAnnotationSequence (pure: a pydicom data set in, JSON-ready
values out).

Carts put what they measured over the whole ECG (RR, PR, QRS, QT, QTc,
axes, sometimes the heart rate) in annotation items with a
ConceptNameCodeSequence, a NumericValue and a MeasurementUnitsCodeSequence,
and their interpretation as UnformattedTextValue (or a coded concept) items.
The codes come from three schemes, all accepted (docs/measurements.md has
the table and its sources):

* ``SCPECG`` (legacy, still sent: pydicom's Mortara sample);
* ``MDC`` as DICOM writes it (``2:15872``), or the 11073 32-bit number
  (``146944`` = partition x 65536 + code) that FHIR and 11073 use;
* ``LN`` (LOINC) itself.

Units come from the data set (UCUM in MeasurementUnitsCodeSequence) and are
converted to ``ms``, ``/min`` and ``deg``.  A code or unit this module does
not know is kept as the cart wrote it, under ``"<scheme>:<code>"``, with no
LOINC code: never guessed.  The heart rate is derived from RR (60000 / RR)
only when the cart gives RR and no rate, and is then marked ``"derived"``.

Only global measurements are read: items that reference no channel or
"all channels" of a multiplex group (channel number 0).  Per-lead values
and fiducial points (sample positions, no value) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: How many statements are kept, and how long each may be (DICOM ST's 1024).
MAX_STATEMENTS = 50
MAX_STATEMENT_CHARS = 1024


@dataclass(frozen=True)
class Kind:
    """A global measurement the gateway knows: its key in ``measurements``,
    display name, LOINC code and display, and UCUM unit."""

    key: str
    name: str
    loinc: str
    loinc_display: str
    unit: str


#: The measurements the gateway maps to LOINC, in report order.
KINDS: tuple[Kind, ...] = (
    Kind("heart_rate", "Heart rate", "8867-4", "Heart rate", "/min"),
    Kind("rr_interval", "RR interval", "8637-1", "R-R interval by EKG", "ms"),
    Kind("pr_interval", "PR interval", "8625-6", "P-R interval", "ms"),
    Kind("qrs_duration", "QRS duration", "8633-0", "QRS duration", "ms"),
    Kind("qt_interval", "QT interval", "8634-8", "Q-T interval", "ms"),
    Kind("qtc_interval", "QTc interval", "8636-3", "Q-T interval corrected", "ms"),
    Kind("p_axis", "P axis", "8626-4", "P wave axis", "deg"),
    Kind("qrs_axis", "QRS axis", "8632-2", "QRS axis", "deg"),
    Kind("t_axis", "T axis", "8638-9", "T wave axis", "deg"),
)
BY_KEY: dict[str, Kind] = {k.key: k for k in KINDS}

#: (coding scheme, code value) -> measurement key.  MDC codes are written
#: ``partition:code``; the 32-bit form is converted before the look-up.
CODES: dict[tuple[str, str], str] = {
    # SCP-ECG (pydicom's Mortara ELI 250 sample)
    ("SCPECG", "5.10.2.1-3"): "rr_interval",
    ("SCPECG", "5.13.5-7"): "pr_interval",
    ("SCPECG", "5.13.5-9"): "qrs_duration",
    ("SCPECG", "5.13.5-11"): "qt_interval",
    ("SCPECG", "5.10.2.5-5"): "qtc_interval",
    ("SCPECG", "5.10.3-11"): "p_axis",
    ("SCPECG", "5.10.3-13"): "qrs_axis",
    ("SCPECG", "5.10.3-15"): "t_axis",
    # MDC (PS3.16 CIDs 3227, 3228, 3229, 3689; 11073-10101)
    ("MDC", "2:16770"): "heart_rate",  # MDC_ECG_HEART_RATE, 147842
    ("MDC", "2:16000"): "rr_interval",  # CID 3689
    ("MDC", "2:16168"): "rr_interval",  # CID 3228 (the two CIDs disagree: both accepted)
    ("MDC", "2:15872"): "pr_interval",
    ("MDC", "2:16156"): "qrs_duration",
    ("MDC", "2:16160"): "qt_interval",
    ("MDC", "2:15876"): "qtc_interval",
    ("MDC", "2:16128"): "p_axis",
    ("MDC", "2:16132"): "qrs_axis",
    ("MDC", "2:16136"): "t_axis",
    # LOINC itself (a GE MAC sends 8867-4 "Heart rate")
    **{("LN", k.loinc): k.key for k in KINDS},
}

#: UCUM unit (as carts write it) -> (canonical unit, factor).  ``bpm`` is not
#: UCUM but unambiguous.
UNITS: dict[str, tuple[str, float]] = {
    "ms": ("ms", 1.0),
    "s": ("ms", 1000.0),
    "us": ("ms", 0.001),
    "/min": ("/min", 1.0),
    "1/min": ("/min", 1.0),
    "{beats}/min": ("/min", 1.0),
    "{beat}/min": ("/min", 1.0),
    "bpm": ("/min", 1.0),
    "/s": ("/min", 60.0),
    "Hz": ("/min", 60.0),
    "deg": ("deg", 1.0),
    "rad": ("deg", 180.0 / math.pi),
}


@dataclass
class CartReport:
    """What the cart measured and said.

    ``measurements``: key -> ``{"value", "unit", "code" (LOINC or None),
    "name", "source" ("cart" or "derived"), "cart_code"}`` (JSON-ready; known
    kinds in :data:`KINDS` order, then the others as the cart listed them).
    ``statements``: the cart's interpretation texts, in its order."""

    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    statements: list[str] = field(default_factory=list)


def mdc_code(value: str) -> str:
    """An MDC code as DICOM writes it (``partition:code``), from that form
    (spaces allowed: PS3.16 prints ``2: 33792``) or the 11073 32-bit number."""
    text = value.replace(" ", "")
    if text.isascii() and text.isdigit():
        number = int(text)
        return f"{number >> 16}:{number & 0xFFFF}"
    return text


#: The elements read here, by tag: pydicom looks a keyword up three times (~5 us each value).
_TAGS = {
    "ConceptNameCodeSequence": 0x0040A043,
    "MeasurementUnitsCodeSequence": 0x004008EA,
    "ConceptCodeSequence": 0x0040A168,
    "CodeValue": 0x00080100,
    "LongCodeValue": 0x00080119,
    "CodingSchemeDesignator": 0x00080102,
    "CodeMeaning": 0x00080104,
    "ReferencedWaveformChannels": 0x0040A0B0,
    "NumericValue": 0x0040A30A,
    "UnformattedTextValue": 0x00700006,
}


def _get(item: Any, keyword: str) -> Any:
    """``item.get(keyword)``'s value by the keyword's tag, decoded by
    :func:`gateway.dicomio.values.value` (as ``get`` does, an AttributeError
    while decoding the value gives None)."""
    # here, not at the top: the ORU builder imports this module for light commands that load no pydicom
    from gateway.dicomio.values import value

    try:
        return value(item, _TAGS[keyword])
    except AttributeError:
        return None


def _code(item: Any, keyword: str) -> tuple[str, str, str] | None:
    """(scheme, value, meaning) of the first item of a code sequence."""
    seq = _get(item, keyword)
    if not seq:
        return None
    code = seq[0]
    value = str(_get(code, "CodeValue") or _get(code, "LongCodeValue") or "").strip()
    scheme = str(_get(code, "CodingSchemeDesignator") or "").strip().upper()
    if not value:
        return None
    if scheme == "MDC":
        value = mdc_code(value)
    return scheme, value, str(_get(code, "CodeMeaning") or "").strip()


def _is_global(item: Any) -> bool:
    """No channel referenced, or channel 0 (all channels of the group) only."""
    channels = _get(item, "ReferencedWaveformChannels")
    if channels is None:
        return True
    values = list(channels) if not isinstance(channels, int) else [channels]
    return all(int(c) == 0 for c in values[1::2])


def _number(value: Any) -> float | int | None:
    """A finite number, as an int when integral (982.0 -> 982)."""
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    rounded = round(number, 3)
    return int(rounded) if rounded == int(rounded) else rounded


def _text(value: Any) -> str:
    return " ".join(str(value).split())[:MAX_STATEMENT_CHARS]


def _measurement(item: Any) -> tuple[str, dict[str, Any]] | None:
    concept = _code(item, "ConceptNameCodeSequence")
    value = _number(_get(item, "NumericValue"))
    if concept is None or value is None:
        return None
    scheme, code_value, meaning = concept
    unit_code = _code(item, "MeasurementUnitsCodeSequence")
    raw_unit = unit_code[1] if unit_code else None
    unit, factor = UNITS.get(raw_unit or "", (raw_unit, 1.0))
    key = CODES.get((scheme, code_value))
    entry: dict[str, Any] = {
        "value": value,
        "unit": unit,
        "code": None,
        "name": meaning or code_value,
        "source": "cart",
        "cart_code": f"{scheme}:{code_value}",
    }
    if factor != 1.0:
        entry["value"] = _number(value * factor)
    kind = BY_KEY.get(key or "")
    if kind is not None and unit == kind.unit:
        entry.update(code=kind.loinc, name=kind.name)
        return kind.key, entry
    # unknown code, or a known one in a unit that is not its own: kept as written
    if kind is not None:
        entry["note"] = f"unit {raw_unit!r} is not a {kind.unit} unit; not mapped to LOINC {kind.loinc}"
    return f"{scheme}:{code_value}", entry


#: NumericValue, UnformattedTextValue, ConceptCodeSequence: an item without
#: any of them is neither a measurement nor a statement.
_NUMERIC_VALUE, _TEXT_VALUE, _CONCEPT_CODE = 0x0040A30A, 0x00700006, 0x0040A168
#: The same as keywords: a reader may leave out the annotation items holding
#: none of them (:func:`extract` does not look at those).
VALUE_KEYWORDS = ("NumericValue", "UnformattedTextValue", "ConceptCodeSequence")


def extract(ds: Any) -> CartReport:
    """The cart's global measurements and statements in ``ds`` (a pydicom
    data set with its WaveformAnnotationSequence; none gives an empty report).

    Never raises for odd values: an item that cannot be read is left out."""
    report = CartReport()
    found: dict[str, dict[str, Any]] = {}
    try:
        items = list(ds.get("WaveformAnnotationSequence") or [])
    except Exception:  # noqa: BLE001 - a broken sequence carries no usable annotation
        items = []
    for item in items:
        try:
            if not (_NUMERIC_VALUE in item or _TEXT_VALUE in item or _CONCEPT_CODE in item):
                continue  # a fiducial point (most items of a cart's file): nothing to read, nothing decoded
            if not _is_global(item):
                continue
            text = _get(item, "UnformattedTextValue")
            if text is not None and _NUMERIC_VALUE not in item:
                if _text(text) and len(report.statements) < MAX_STATEMENTS:
                    report.statements.append(_text(text))
                continue
            measured = _measurement(item)
            if measured is not None:
                found.setdefault(*measured)  # the first value of a kind wins
                continue
            coded = _code(item, "ConceptCodeSequence")  # a coded statement
            if coded is not None and coded[2] and len(report.statements) < MAX_STATEMENTS:
                report.statements.append(_text(coded[2]))
        except Exception:  # noqa: BLE001 - one odd item does not lose the others
            continue
    rr = found.get("rr_interval")
    if "heart_rate" not in found and rr is not None and rr["value"] > 0:
        found["heart_rate"] = {
            "value": int(round(60000 / rr["value"])),
            "unit": "/min",
            "code": "8867-4",
            "name": "Heart rate",
            "source": "derived",
            "derived_from": "rr_interval",
        }
    report.measurements = {k.key: found.pop(k.key) for k in KINDS if k.key in found} | found
    return report


def loinc_check_digit_ok(code: str) -> bool:
    """LOINC's mod-10 check digit (the digit after the hyphen) is right."""
    body, _, check = code.partition("-")
    if not (body.isdigit() and check.isdigit() and len(check) == 1):
        return False
    digits = [int(d) for d in reversed(body)]
    total = 0
    for i, d in enumerate(digits):
        if i % 2 == 0:  # from the right: double every other digit, starting with the last
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return (10 - total % 10) % 10 == int(check)


def display_value(entry: Mapping[str, Any]) -> str:
    """``982 ms``, ``61 /min``, ``52°``: one measurement as a person reads it."""
    value, unit = entry.get("value"), entry.get("unit") or ""
    if unit == "deg":
        return f"{value}\u00b0"
    return f"{value} {unit}".strip()
