"""What the door needs from a DICOM ECG: identity, demographics and the
shape of its waveform groups (no samples), and the check of header values
against their VRs.

The bytes are read by :func:`gateway.dicomio.reader.read` (the one DICOM
reader, fast path and ``dcmread`` behind it, held to ``[dicom]
max_dataset_mb``) with the WaveformSequence and the order's
RequestAttributesSequence; every other top-level sequence (a Mortara file
carries ~160 waveform annotation items) is skipped.  The samples are decoded
later, by the processing stage.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import MAX_VALUE_LEN

from gateway.dicomio.limits import DEFAULT_MAX_DATASET_BYTES
from gateway.dicomio.reader import DicomError, read
from gateway.dicomio.values import value as element_value
from gateway.quoting import printable

#: The top-level sequences the door reads: the waveform groups' shapes, and
#: the order numbers (RequestAttributesSequence).
HEADER_SEQUENCES = ("WaveformSequence", "RequestAttributesSequence")
_WAVEFORM_DATA = 0x54001010


@dataclass
class WaveformGroup:
    """The shape of one multiplex group (no samples)."""

    label: str | None
    originality: str | None
    channels: int | None
    samples: int | None
    sampling_frequency: float | None
    bits_allocated: int | None
    sample_interpretation: str | None
    data_bytes: int | None

    def problem(self) -> str | None:
        """Why this group cannot be decoded, or None when it can."""
        if self.data_bytes is None:
            return "no WaveformData"
        for name in ("channels", "samples", "sampling_frequency", "bits_allocated"):
            if not getattr(self, name):
                return f"missing or zero {name}"
        expected = self.channels * self.samples * self.bits_allocated // 8  # type: ignore[operator]
        if self.data_bytes < expected:
            return f"WaveformData has {self.data_bytes} bytes, {expected} expected"
        return None


@dataclass
class EcgHeader:
    """Identity and demographics of one received ECG."""

    transfer_syntax_uid: str
    dataset: Dataset = field(repr=False)
    groups: list[WaveformGroup]

    def get(self, keyword: str) -> str | None:
        """A top-level attribute as a stripped string (None when absent,
        empty, or not decodable: a garbled optional value must not refuse
        the ECG; a garbled UID is refused as invalid).  Several values are
        the DICOM text, joined by ``\\`` (never Python's list text).

        Lenient: identity and stored values go through :meth:`value`."""
        try:
            return _text(_get(self.dataset, keyword))
        except Exception:  # noqa: BLE001 - pydicom raises many types for bad values
            return None

    def value(self, keyword: str) -> str | None:
        """A top-level VM-1 text attribute checked against its VR
        (:func:`checked_text`); raises :class:`ValueProblem`."""
        return checked_text(self.dataset, keyword)

    @property
    def sop_instance_uid(self) -> str | None:
        return self.get("SOPInstanceUID")

    @property
    def sop_class_uid(self) -> str | None:
        return self.get("SOPClassUID")

    def waveform_problem(self) -> str | None:
        """Why no group is usable, or None when at least one is."""
        if not self.groups:
            return "no WaveformSequence"
        problems = [g.problem() for g in self.groups]
        if any(p is None for p in problems):
            return None
        return "no usable waveform group: " + "; ".join(f"group {i}: {p}" for i, p in enumerate(problems))


class ValueProblem(ValueError):
    """A header value breaks its VR: several values where the dictionary
    allows one, longer than the VR allows, a control character, or not text.
    The message names the problem, never the value (it may be PHI)."""


#: Maximum characters per VR (PS3.5 Table 6.2-1) beyond pydicom's table:
#: DA, DT and TM as stored (not the longer query forms).
_MAX_CHARS = {**MAX_VALUE_LEN, "DA": 8, "DT": 26, "TM": 14}
#: PN: characters per component group, groups, components per group.
_PN_GROUP_CHARS, _PN_GROUPS, _PN_COMPONENTS = 64, 3, 5
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UN"})
#: Unicode categories never allowed in a checked value: control (C0, DEL,
#: C1), format (e.g. U+202E, which reverses the text shown), surrogates,
#: line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


@functools.cache
def _tag(keyword: str) -> BaseTag | None:
    """The tag of a dictionary keyword (None when unknown), looked up once:
    pydicom's keyword access (``ds.get(keyword)``) looks it up on every call,
    which cost about as much as converting the value (~30 values per ECG)."""
    tag = tag_for_keyword(keyword)
    return None if tag is None else BaseTag(tag)


@functools.cache
def _dictionary_vr(tag: BaseTag) -> str:
    return dictionary_VR(tag)


def _get(ds: Dataset, keyword: str) -> Any:
    """``ds.get(keyword)`` (the value, None when absent) by the cached tag,
    decoded by :func:`gateway.dicomio.values.value` (pydicom's conversion
    without ``__getitem__``'s bookkeeping)."""
    tag = _tag(keyword)
    return None if tag is None else element_value(ds, tag)


def _text(value: Any) -> str | None:
    """A pydicom value as stripped text, several values joined by ``\\``
    (their DICOM encoding); None when absent or empty."""
    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v).strip() for v in value).strip() or None
    return str(value).strip() or None


def checked_text(ds: Dataset, keyword: str) -> str | None:
    """The value of ``keyword`` (a VM-1 text attribute) in ``ds``, stripped;
    None when absent or empty.

    Raises :class:`ValueProblem` when the value breaks its VR: several
    values (backslash), longer than the VR allows (PN: per component group),
    a control or format character, bytes that could not be decoded in the
    declared character set (U+FFFD), or a binary VR.  Values are never cut."""
    tag = _tag(keyword)
    if tag is None or tag not in ds:
        return None
    try:
        element = ds[tag]
        value = element.value
    except Exception:  # noqa: BLE001 - pydicom raises many types for bad values
        raise ValueProblem("cannot be decoded") from None
    if element.VR in _BINARY_VRS or isinstance(value, (bytes, bytearray)):
        raise ValueProblem(f"encoded as VR {element.VR}, not text")
    if isinstance(value, (MultiValue, list, tuple)):
        if len(value) > 1:
            raise ValueProblem(f"{len(value)} values where DICOM allows one (VM 1)")
        value = value[0] if value else None
    text = None if value is None else str(value).strip()
    if not text:
        return None
    if not text.isprintable() or "\ufffd" in text:  # the common case skips the per-character pass
        for ch in text:
            if ch == "\ufffd":
                raise ValueProblem("bytes not decodable in its character set")
            if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
                raise ValueProblem(f"control or format character U+{ord(ch):04X}")
    vr = _dictionary_vr(tag)
    if vr == "PN":
        groups = text.split("=")
        if len(groups) > _PN_GROUPS:
            raise ValueProblem(f"{len(groups)} name groups; PN allows {_PN_GROUPS}")
        for group in groups:
            if len(group) > _PN_GROUP_CHARS:
                raise ValueProblem(f"a name group of {len(group)} characters; PN allows {_PN_GROUP_CHARS}")
            if group.count("^") >= _PN_COMPONENTS:
                raise ValueProblem(f"{group.count('^') + 1} name components; PN allows {_PN_COMPONENTS}")
    elif len(text) > _MAX_CHARS.get(vr, len(text)):
        raise ValueProblem(f"{len(text)} characters; VR {vr} allows {_MAX_CHARS[vr]}")
    return text


def read_header(raw: bytes, max_bytes: int = DEFAULT_MAX_DATASET_BYTES) -> EcgHeader:
    """Identity, demographics and waveform group shapes of a DICOM Part 10 file.

    Raises :class:`~gateway.dicomio.reader.DicomError` when the bytes cannot
    be read as DICOM, and :class:`~gateway.dicomio.limits.DatasetTooLarge`
    when the file or its inflated data set is larger than ``max_bytes``.
    """
    try:
        # nested=False: the groups' shapes and the order numbers are not in sub-sequences
        ds = read(raw, max_bytes, sequences=HEADER_SEQUENCES, nested=False)
    except DicomError as exc:  # the reason stored with the refusal says what kind it is
        raise DicomError(f"not a DICOM file: {exc}") from None
    try:
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "")).strip()  # decoded here: may be garbage
        groups = [_group(item) for item in ds.get("WaveformSequence", [])]
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for garbage
        raise DicomError(f"cannot parse: {printable(exc)}") from None
    if not transfer_syntax:
        raise DicomError("no TransferSyntaxUID in the file meta information")
    return EcgHeader(transfer_syntax, ds, groups)


def _group(item: Dataset) -> WaveformGroup:
    data = item.get_item(_WAVEFORM_DATA) if _WAVEFORM_DATA in item else None
    data_bytes = None
    if data is not None:  # a raw element's length: the samples are not decoded here
        data_bytes = data.length if isinstance(data, RawDataElement) else len(data.value or b"")
    return WaveformGroup(
        label=_str(item, "MultiplexGroupLabel"),
        originality=_str(item, "WaveformOriginality"),
        channels=_int(item, "NumberOfWaveformChannels"),
        samples=_int(item, "NumberOfWaveformSamples"),
        sampling_frequency=_float(item, "SamplingFrequency"),
        bits_allocated=_int(item, "WaveformBitsAllocated"),
        sample_interpretation=_str(item, "WaveformSampleInterpretation"),
        data_bytes=data_bytes,
    )


def _number(ds: Dataset, keyword: str, convert: Callable[[Any], Any]) -> Any:
    try:
        value = _get(ds, keyword)
        return convert(value) if value not in (None, "") else None
    except Exception:  # noqa: BLE001 - pydicom raises many types (unknown VR, bad length): absent
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    return _number(ds, keyword, int)


def _float(ds: Dataset, keyword: str) -> float | None:
    return _number(ds, keyword, float)


def _str(ds: Dataset, keyword: str) -> str | None:
    try:
        return _text(_get(ds, keyword))
    except Exception:  # noqa: BLE001 - a garbled value is treated as absent
        return None
