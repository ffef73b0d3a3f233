"""Choose the rhythm multiplex group and decode its samples and channel headers.

pydicom's ``waveform_array`` ignores the padding value, WaveformBitsStored
and 8-bit companding, so the samples are read here with numpy directly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRBigEndian

from gateway.dicomio.values import value
from gateway.normalise.errors import NormaliseError
from gateway.normalise.leads import LeadId, identify_lead
from gateway.normalise.units import UnknownUnitError, millivolts_per_unit
from gateway.quoting import printable, quote

#: (WaveformBitsAllocated, WaveformSampleInterpretation) -> stored dtype.
STORED_DTYPES: dict[tuple[int, str], str] = {(16, "SS"): "i2", (32, "SL"): "i4", (8, "MB"): "u1", (8, "AB"): "u1"}


def _ulaw_table() -> np.ndarray:
    # ITU-T G.711 mu-law expansion to its 14-bit linear range (+-8031).
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    magnitude = ((((codes & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return (np.where(codes & 0x80, -magnitude, magnitude) >> 2).astype(np.int32)


def _alaw_table() -> np.ndarray:
    # ITU-T G.711 A-law expansion to its 13-bit linear range (+-4032).
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return (np.where(codes & 0x80, magnitude, -magnitude) >> 3).astype(np.int32)


#: 8-bit code -> G.711 linear value, per sample interpretation.
G711_TABLES: dict[str, np.ndarray] = {"MB": _ulaw_table(), "AB": _alaw_table()}


def dicom_text(value: object) -> str:
    """A decoded value as text, "" when absent; several values (a multi-valued
    label, unit or code) as their DICOM text, joined by ``\\``, never as
    Python's list text."""
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v).strip() for v in value).strip()
    return str(value).strip()


@functools.cache
def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword  # the keywords here are pydicom's
    return Tag(tag)


def value_of(item: Dataset, keyword: str) -> Any:
    """``item.get(keyword)``'s value by its tag, decoded by
    :func:`gateway.dicomio.values.value` (pydicom's conversion without
    ``__getitem__``'s bookkeeping: ~150 values an ECG).  As ``get`` does, an
    AttributeError while decoding the value gives None."""
    try:
        return value(item, _tag(keyword))
    except AttributeError:
        return None


def _text(item: Dataset, keyword: str) -> str:
    return dicom_text(value_of(item, keyword))


def raw_text(item: Dataset, keyword: str) -> str:
    """A value as the file wrote it (undecoded DS text), "" when absent.

    pydicom raises on access to a malformed DS; the raw bytes let the caller
    name the bad value instead."""
    element = item.get_item(_tag(keyword))
    if element is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return dicom_text(value)


def _number(item: Dataset, keyword: str) -> float | None:
    """A DS/IS value as float; None when absent, NaN when not a number."""
    text = raw_text(item, keyword)
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return math.nan


def count_value(item: Dataset, keyword: str) -> int | None:
    """A US/UL value (a count or bit depth) as int; None when absent or empty.

    A value pydicom cannot decode (a length that is not a whole number of
    values) or a multi-valued one is a :class:`NormaliseError` naming the
    element, not an exception escaping from the arithmetic (found by fuzzing)."""
    try:
        value = value_of(item, keyword)
    except Exception as exc:  # noqa: BLE001 - pydicom's decoding errors have no common base
        raise NormaliseError(f"{keyword} cannot be decoded: {printable(exc)}") from None
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple, MultiValue)):
        if len(value) == 1 and isinstance(value[0], int):
            return value[0]
        raise NormaliseError(f"{keyword} has {len(value)} values where one number is expected")
    raise NormaliseError(f"{keyword} {quote(value)} is not a number")


def select_multiplex_group(ds: Dataset) -> tuple[int, str]:
    """Index of the rhythm group and why it was chosen; never a median beat.

    Preference: MultiplexGroupLabel RHYTHM, else WaveformOriginality ORIGINAL,
    else the longest (the longest wins within a tier too).
    """
    groups = list(ds.get("WaveformSequence") or [])
    if not groups:
        raise NormaliseError("no WaveformSequence: not a waveform object")
    candidates = [i for i, g in enumerate(groups) if "MEDIAN" not in _text(g, "MultiplexGroupLabel").upper()]
    if not candidates:
        raise NormaliseError("only a median beat waveform (no rhythm multiplex group)")

    def duration(i: int) -> float:
        fs = _number(groups[i], "SamplingFrequency")
        n = count_value(groups[i], "NumberOfWaveformSamples") or 0
        return n / fs if fs and math.isfinite(fs) and fs > 0 else 0.0

    tiers = (
        ("label RHYTHM", [i for i in candidates if _text(groups[i], "MultiplexGroupLabel").upper() == "RHYTHM"]),
        (
            "originality ORIGINAL",
            [i for i in candidates if _text(groups[i], "WaveformOriginality").upper() == "ORIGINAL"],
        ),
        ("longest group", candidates),
    )
    reason, indices = next((tier for tier in tiers if tier[1]), tiers[-1])
    return max(indices, key=lambda i: (duration(i), -i)), reason


def is_little_endian(ds: Dataset) -> bool:
    """Byte order of WaveformData: big only for Explicit VR Big Endian files."""
    meta = getattr(ds, "file_meta", None)
    return not (meta is not None and meta.get("TransferSyntaxUID") == ExplicitVRBigEndian)


@dataclass(frozen=True)
class RawGroup:
    """A multiplex group's samples before scaling."""

    samples: np.ndarray  # (n_samples, n_channels) integers; 8-bit codes already expanded
    padding: np.ndarray | None  # bool mask of padded samples, or None when no padding value
    rails: tuple[tuple[int, int], ...]  # per channel: smallest and largest encodable value
    interpretation: str
    bits_allocated: int


def decode_raw(group: Dataset, little_endian: bool = True) -> RawGroup:
    """Read WaveformData as (samples, channels), checking size, type and bits stored."""
    bits = count_value(group, "WaveformBitsAllocated")
    interpretation = _text(group, "WaveformSampleInterpretation").upper()
    stored = STORED_DTYPES.get((bits, interpretation)) if bits is not None else None
    if bits is None or stored is None:
        raise NormaliseError(
            f"unsupported sample encoding: {bits}-bit {printable(interpretation, 16) or '(none)'}"
            " (supported: 16-bit SS, 32-bit SL, 8-bit MB/AB)"
        )
    dtype = np.dtype(("<" if little_endian else ">") + stored)
    n_channels = count_value(group, "NumberOfWaveformChannels") or 0
    n_samples = count_value(group, "NumberOfWaveformSamples") or 0
    if n_channels < 1 or n_samples < 1:
        raise NormaliseError(f"empty waveform: {n_channels} channels x {n_samples} samples")
    data = group.get("WaveformData")
    expected = n_channels * n_samples * dtype.itemsize
    if data is None or len(data) < expected:
        raise NormaliseError(
            f"WaveformData holds {0 if data is None else len(data)} bytes,"
            f" {n_channels} channels x {n_samples} samples need {expected}"
        )
    codes = np.frombuffer(data, dtype=dtype, count=n_channels * n_samples).reshape(n_samples, n_channels)

    padding = None
    pad_bytes = group.get("WaveformPaddingValue")
    if pad_bytes is not None and len(pad_bytes) >= dtype.itemsize:
        pad = np.frombuffer(bytes(pad_bytes[: dtype.itemsize]), dtype=dtype)[0]
        mask = codes == pad
        padding = mask if mask.any() else None

    if interpretation in G711_TABLES:
        table = G711_TABLES[interpretation]
        rail = (int(table.min()), int(table.max()))
        return RawGroup(table[codes], padding, (rail,) * codes.shape[1], interpretation, bits)

    full = (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    rails = [full] * n_channels
    channels = list(group.get("ChannelDefinitionSequence") or [])
    for index, channel in enumerate(channels[:n_channels]):
        bits_stored = count_value(channel, "WaveformBitsStored")
        if bits_stored is None or bits_stored >= bits:
            continue
        if bits_stored < 2:
            raise NormaliseError(f"channel {index + 1}: WaveformBitsStored {bits_stored} is not usable")
        b_lo, b_hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
        column = codes[:, index] if padding is None else codes[~padding[:, index], index]
        if column.size and (column.min() < b_lo or column.max() > b_hi):
            raise NormaliseError(
                f"channel {index + 1}: samples outside the {bits_stored} bits stored"
                f" ({int(column.min())}..{int(column.max())})"
            )
        rails[index] = (b_lo, b_hi)
    return RawGroup(codes, padding, tuple(rails), interpretation, bits)


@dataclass(frozen=True)
class Channel:
    """One channel's identity and its scale to millivolts."""

    index: int
    lead: LeadId
    label: str
    unit: str
    mv_per_count: float  # sensitivity x correction factor x unit factor
    baseline_mv: float
    skew: float

    def as_report(self) -> dict[str, object]:
        return {
            "channel": self.index + 1,
            "lead": self.lead.lead,
            "code": self.lead.code,
            "identified_by": self.lead.identified_by,
            "label": self.label,
            "unit": self.unit,
            "mv_per_count": self.mv_per_count,
            "baseline_mv": self.baseline_mv,
        }


def read_channels(group: Dataset) -> list[Channel]:
    """Identify and scale every channel of a group; bad headers are errors."""
    n_channels = count_value(group, "NumberOfWaveformChannels") or 0
    items = list(value_of(group, "ChannelDefinitionSequence") or [])
    if len(items) != n_channels:
        raise NormaliseError(f"{len(items)} channel definitions for {n_channels} waveform channels")
    out = []
    for index, item in enumerate(items):
        source = (value_of(item, "ChannelSourceSequence") or [Dataset()])[0]
        label = _text(item, "ChannelLabel")
        lead = identify_lead(
            _text(source, "CodeValue"),
            _text(source, "CodingSchemeDesignator"),
            _text(source, "CodeMeaning"),
            label,
        )
        # a label or code is data-set text: quoted (one printable line, bounded)
        name = lead.lead or (quote(label) if label else quote(lead.code) if lead.code else "?")
        where = f"channel {index + 1} ({name})"
        units = value_of(item, "ChannelSensitivityUnitsSequence") or []
        unit = _text(units[0], "CodeValue") if units else ""
        if not unit:
            raise NormaliseError(f"{where}: no ChannelSensitivityUnitsSequence unit")
        try:
            unit_mv = millivolts_per_unit(unit)
        except UnknownUnitError as exc:
            raise NormaliseError(f"{where}: {exc}") from None
        sensitivity = _number(item, "ChannelSensitivity")
        correction = _number(item, "ChannelSensitivityCorrectionFactor")
        baseline = _number(item, "ChannelBaseline")
        skew = _number(item, "ChannelSampleSkew")
        correction = 1.0 if correction is None else correction
        baseline = 0.0 if baseline is None else baseline
        if sensitivity is None:
            raise NormaliseError(f"{where}: no ChannelSensitivity")
        if not math.isfinite(sensitivity) or sensitivity <= 0:
            raise NormaliseError(
                f"{where}: ChannelSensitivity {quote(raw_text(item, 'ChannelSensitivity'))} is not a positive number"
            )
        if not math.isfinite(correction) or correction <= 0:
            raise NormaliseError(f"{where}: ChannelSensitivityCorrectionFactor {correction!r} is not a positive number")
        if not math.isfinite(baseline):
            raise NormaliseError(f"{where}: ChannelBaseline {quote(raw_text(item, 'ChannelBaseline'))} is not a number")
        out.append(
            Channel(
                index,
                lead,
                label,
                unit,
                sensitivity * correction * unit_mv,
                baseline * unit_mv,
                0.0 if skew is None or not math.isfinite(skew) else skew,
            )
        )
    return out
