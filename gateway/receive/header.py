"""Read what the door needs from a DICOM ECG file: identity, demographics and
the shape of its waveform groups, from the header only.

Carts write long undefined-length sequences (a Mortara file carries ~160
waveform annotation items); pydicom parses those eagerly, which costs ~15 ms
per instance, more than the network transfer itself.  So the top level and
the WaveformSequence items are walked here, every sequence we do not need is
skipped by its delimiters, and the elements we do need are handed to pydicom
as raw elements, so pydicom still does all value decoding (character sets,
VRs).  The samples themselves are decoded later, by the processing stage.

The processing stage reads its files with :func:`read_waveform_dataset`: the
same walk, but the whole WaveformSequence is built as ``pydicom.dcmread``
builds it (samples included), and anything unusual is left to dcmread.

Both reads are held to ``[dicom] max_dataset_mb`` (:mod:`gateway.receive.limits`),
including the inflation of deflated data sets and the pydicom fallbacks.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.filereader import ENCODED_VR, _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import MAX_VALUE_LEN, VR
from pydicom.values import convert_string

from gateway.quoting import printable
from gateway.receive.limits import DEFAULT_MAX_DATASET_BYTES, DatasetTooLarge, check_size, inflate, read_dicom

#: The ECG waveform storage SOP classes the gateway accepts.
ECG_STORAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.3": "Ambulatory ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.4": "General 32-bit ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.2.1": "Hemodynamic Waveform Storage",
}

#: Transfer syntaxes negotiated by the SCP.
ECG_TRANSFER_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_WAVEFORM_SEQUENCE = 0x54000100
_WAVEFORM_ANNOTATION_SEQUENCE = 0x0040B020
_WAVEFORM_DATA = 0x54001010
#: Sequences kept (with their items fully decoded by pydicom): small ones that
#: carry order numbers.
_KEPT_SEQUENCES = {0x00400275}  # RequestAttributesSequence
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
#: The same VRs as little-endian 16-bit numbers (compared without slicing bytes).
_LONG_LENGTH_VR_CODES = frozenset(int.from_bytes(vr, "little") for vr in _LONG_LENGTH_VRS)
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_TAG = struct.Struct("<HH")
_IMPLICIT = struct.Struct("<HHI")


class HeaderError(ValueError):
    """The bytes are not a DICOM file this gateway can read."""


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
            return _text(self.dataset.get(keyword))
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
    tag = tag_for_keyword(keyword)
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
    vr = dictionary_VR(tag)
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


def _skip_undefined(buf: bytes, pos: int, end: int, implicit: bool) -> int:
    """Offset just past the sequence delimiter of an undefined-length value.

    One flat loop (no recursion, no generators, one struct call per element):
    this is the hot path, run over thousands of annotation elements per file.
    Nesting is tracked by counting undefined-length values opened and
    sequence delimiters seen.
    """
    unpack_implicit, unpack_u32 = _IMPLICIT.unpack_from, _U32.unpack_from
    long_vrs = _LONG_LENGTH_VR_CODES
    depth = 1
    while True:
        if pos + 8 > end:
            raise HeaderError("truncated: sequence without delimiter")
        group, elem, length = unpack_implicit(buf, pos)
        if group == 0xFFFE:
            pos += 8
            if elem == 0xE0DD:  # sequence delimiter
                depth -= 1
                if depth == 0:
                    return pos
            elif elem == 0xE000 and length != _UNDEFINED:  # defined-length item
                pos += length
            # undefined-length item and item delimiter: step over the header only
            continue
        if implicit:
            pos += 8
        elif length & 0xFFFF in long_vrs:  # explicit VR: the VR is the low half of what was read as a length
            length = unpack_u32(buf, pos + 8)[0]
            pos += 12
        else:
            length >>= 16
            pos += 8
        if length == _UNDEFINED:
            depth += 1
        else:
            pos += length
            if pos > end:
                raise HeaderError("truncated: element runs past the end")


def _raw(buf: bytes, tag: int, vr: bytes | None, start: int, end: int, implicit: bool) -> RawDataElement:
    return RawDataElement(
        BaseTag(tag), vr.decode("ascii") if vr else None, end - start, buf[start:end], start, implicit, True
    )


def _dataset(
    buf: bytes, start: int, end: int, implicit: bool, waveform_items: list[Dataset] | None = None
) -> tuple[Dataset, int]:
    """One level's non-sequence elements as a lazily decoded Dataset (pydicom
    decodes a value when it is read), and the offset just past the item
    delimiter that ended the level (-1 when ``end`` was reached first).

    Each element is visited once: sequences we do not keep are skipped by
    their delimiters; with ``waveform_items`` (the top level), the
    WaveformSequence's items are parsed into that list on the way, so its
    value is walked once, not skipped and then walked again.
    """
    unpack, unpack_u32, long_vrs = _IMPLICIT.unpack_from, _U32.unpack_from, _LONG_LENGTH_VRS
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise HeaderError("truncated element header")
        group, elem, length = unpack(buf, pos)
        tag = group << 16 | elem
        if tag == _ITEM_DELIMITER:
            return _lazy_dataset(elements, implicit), pos + 8
        if implicit or group == 0xFFFE:
            vr = None
            pos += 8
        else:
            vr = buf[pos + 4 : pos + 6]
            if vr in long_vrs:
                if pos + 12 > end:
                    raise HeaderError("truncated element header")
                length = unpack_u32(buf, pos + 8)[0]
                pos += 12
            else:
                length >>= 16  # the 2-byte length sits after the VR, in the high half
                pos += 8
        vstart = pos
        if length == _UNDEFINED:
            if tag == _WAVEFORM_SEQUENCE and waveform_items is not None:
                pos = _waveform_items(buf, vstart, end, implicit, waveform_items, undefined=True)
                continue
            # the value keeps its sequence delimiter (pydicom reads it so)
            pos = _skip_undefined(buf, vstart, end, implicit)
        else:
            pos += length
            if pos > end:
                raise HeaderError(f"truncated: element ({group:04X},{elem:04X}) runs past the end")
        if tag == _WAVEFORM_SEQUENCE:
            if waveform_items is not None:
                _waveform_items(buf, vstart, pos, implicit, waveform_items, undefined=False)
            continue
        if tag == _WAVEFORM_DATA:
            # only its length matters here; keep the bytes out of memory copies
            elements[BaseTag(tag)] = RawDataElement(BaseTag(tag), "OW", pos - vstart, b"", vstart, implicit, True)
            continue
        if vr == b"SQ" or (vr is None and _is_sequence(buf, vstart, pos)):
            if tag not in _KEPT_SEQUENCES:
                continue
        elements[BaseTag(tag)] = _raw(buf, tag, vr, vstart, pos, implicit)
    return _lazy_dataset(elements, implicit), -1


def _lazy_dataset(elements: dict[BaseTag, RawDataElement | DataElement], implicit: bool) -> Dataset:
    ds = Dataset(elements)
    ds.set_original_encoding(implicit, True)
    return ds


def _waveform_items(buf: bytes, pos: int, end: int, implicit: bool, items: list[Dataset], *, undefined: bool) -> int:
    """Parse each item of a WaveformSequence value (from ``pos``) into
    ``items``; the offset just past the value (past its sequence delimiter
    when ``undefined``, else ``end``, the value's end)."""
    while pos + 8 <= end:
        group, elem, length = _IMPLICIT.unpack_from(buf, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQUENCE_DELIMITER:
            return pos
        if tag != _ITEM:
            raise HeaderError("unexpected tag inside a sequence")
        if length == _UNDEFINED:
            item, pos = _dataset(buf, pos, end, implicit)
            if pos < 0:
                raise HeaderError("truncated: item without delimiter")
        else:
            if pos + length > end:
                raise HeaderError("truncated: sequence item runs past the end")
            item, _ = _dataset(buf, pos, pos + length, implicit)
            pos += length
        items.append(item)
    if undefined:
        raise HeaderError("truncated: sequence without delimiter")
    return end


def _is_sequence(buf: bytes, start: int, end: int) -> bool:
    """Implicit VR: a value that starts with an item tag is a sequence."""
    if end - start < 8:
        return False
    group, elem = _TAG.unpack_from(buf, start)
    return (group << 16 | elem) == _ITEM


def _number(ds: Dataset, keyword: str, convert: Callable[[Any], Any]) -> Any:
    try:
        value = ds.get(keyword)
        return convert(value) if value not in (None, "") else None
    except Exception:  # noqa: BLE001 - pydicom raises many types (unknown VR, bad length): absent
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    return _number(ds, keyword, int)


def _float(ds: Dataset, keyword: str) -> float | None:
    return _number(ds, keyword, float)


def _str(ds: Dataset, keyword: str) -> str | None:
    try:
        return _text(ds.get(keyword))
    except Exception:  # noqa: BLE001 - a garbled value is treated as absent
        return None


class FileMetaUids(NamedTuple):
    """The UIDs of a Part 10 file's meta information (None when absent)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    transfer_syntax_uid: str | None


_META_UID_ELEMENTS = {0x0002: 0, 0x0003: 1, 0x0010: 2}  # MediaStorageSOPClass/InstanceUID, TransferSyntaxUID


def file_meta_uids(raw: bytes) -> FileMetaUids:
    """MediaStorageSOPClassUID, MediaStorageSOPInstanceUID and TransferSyntaxUID
    from the file meta (each None when absent or unreadable): what ``ingest``
    announces for a file, as the C-STORE request does for the SCP.

    Walks the file meta group (always Explicit VR Little Endian) itself
    instead of having pydicom build a FileMetaDataset; any oddity ends the
    walk (what was read so far is kept).
    """
    found: list[str | None] = [None, None, None]
    if raw[128:132] != b"DICM":
        return FileMetaUids(*found)
    pos, end = 132, len(raw)
    while pos + 8 <= end:
        group, elem, length = _IMPLICIT.unpack_from(raw, pos)
        if group != 0x0002:
            break
        if length & 0xFFFF in _LONG_LENGTH_VR_CODES:
            if pos + 12 > end:
                break
            length = _U32.unpack_from(raw, pos + 8)[0]
            pos += 12
        else:
            length >>= 16
            pos += 8
        index = _META_UID_ELEMENTS.get(elem)
        if index is not None:  # UI: ASCII, NUL- or space-padded
            found[index] = raw[pos : pos + length].decode("latin-1").rstrip("\0").strip() or None
        pos += length
    return FileMetaUids(*found)


def read_header(raw: bytes, max_bytes: int = DEFAULT_MAX_DATASET_BYTES) -> EcgHeader:
    """Identity, demographics and waveform group shapes of a DICOM Part 10 file.

    Raises :class:`HeaderError` when the bytes cannot be read as DICOM, and
    :class:`~gateway.receive.limits.DatasetTooLarge` when the file or its
    inflated data set is larger than ``max_bytes``.
    """
    check_size(len(raw), max_bytes)
    fp = io.BytesIO(raw)
    try:
        if read_preamble(fp, False) is None:
            raise HeaderError("not a DICOM Part 10 file (no DICM prefix)")
        file_meta = _read_file_meta_info(fp)
        transfer_syntax = str(file_meta.get("TransferSyntaxUID", "")).strip()  # decoded here: may be garbage too
    except HeaderError:
        raise
    except Exception as exc:  # pydicom raises many types for garbage
        raise HeaderError(f"not a DICOM file: {printable(exc)}") from None
    if not transfer_syntax:
        raise HeaderError("no TransferSyntaxUID in the file meta information")
    body_start = fp.tell()
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            # incomplete is accepted: some writers omit the final deflate block marker
            buf = inflate(memoryview(raw)[body_start:], max_bytes).data
        except zlib.error as exc:
            raise HeaderError(f"deflated data set cannot be inflated: {printable(exc)}") from None
        start, implicit = 0, False
    elif transfer_syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        buf, start, implicit = raw, body_start, transfer_syntax == ImplicitVRLittleEndian
    else:
        return _read_header_pydicom(raw, transfer_syntax, max_bytes)
    try:
        items: list[Dataset] = []
        ds, _ = _dataset(buf, start, len(buf), implicit, items)
        charset = ds.get("SpecificCharacterSet")
        groups = []
        for item in items:
            if charset is not None and "SpecificCharacterSet" not in item:
                item.SpecificCharacterSet = charset
            groups.append(_group(item))
    except HeaderError:
        raise
    except Exception as exc:  # noqa: BLE001 - struct, value, unknown-VR, length errors from garbage
        raise HeaderError(f"cannot parse: {printable(exc)}") from None
    ds.file_meta = file_meta
    return EcgHeader(transfer_syntax, ds, groups)


def _group(item: Dataset) -> WaveformGroup:
    data = item.get_item(BaseTag(_WAVEFORM_DATA)) if BaseTag(_WAVEFORM_DATA) in item else None
    data_bytes = None
    if data is not None:
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


def _read_header_pydicom(raw: bytes, transfer_syntax: str, max_bytes: int) -> EcgHeader:
    """Other transfer syntaxes (archive files only): pydicom reads it all."""
    try:
        ds = read_dicom(raw, max_bytes)
        groups = [_group(item) for item in ds.get("WaveformSequence", [])]
    except DatasetTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001
        raise HeaderError(f"cannot parse: {printable(exc)}") from None
    return EcgHeader(transfer_syntax, ds, groups)


# -- the processing stage's read: the waveform, without the annotations -----------------------------

log = logging.getLogger("gateway.receive.header")

_SPECIFIC_CHARACTER_SET = 0x00080005
#: VRs pydicom's reader knows; any other explicit VR makes pydicom guess
#: (implicit VR inside a sequence, or a 2-byte length), so such files are
#: left to pydicom.
_KNOWN_VRS = frozenset(ENCODED_VR)


class _Unusual(Exception):
    """An encoding the fast read leaves to pydicom (not an error by itself)."""


def read_waveform_dataset(raw: bytes, max_bytes: int = DEFAULT_MAX_DATASET_BYTES, *,
                          annotations: bool = False) -> Dataset:
    """A DICOM Part 10 ECG as the processing stage needs it, parsed fast.

    The returned data set has the file meta, every non-sequence top-level
    element (raw, decoded by pydicom on access as after ``dcmread``) and the
    whole WaveformSequence with every nested sequence, built as
    ``pydicom.dcmread`` builds them.  The other top-level sequences
    (WaveformAnnotationSequence, AcquisitionContextSequence, ...) are skipped
    by their lengths and delimiters: that is what pydicom spends most of its
    time on for a cart's file.  ``annotations=True`` parses the
    WaveformAnnotationSequence too (the cart's measurements and statements,
    :mod:`gateway.report.measurements`).

    Implicit VR LE, Explicit VR LE and Deflated Explicit VR LE are read here.
    Anything else - big endian, no preamble, a VR encoding other than the
    transfer syntax says, undefined-length values that are not sequences, a
    truncated or corrupt body - is read by ``pydicom.dcmread`` exactly as
    before, so unusual files behave as they always did.

    Raises :class:`HeaderError` (with dcmread's message) when dcmread fails
    too, and :class:`~gateway.receive.limits.DatasetTooLarge` (never falling
    back to dcmread) when the file or its inflated data set exceeds ``max_bytes``.
    """
    check_size(len(raw), max_bytes)
    try:
        return _read_waveform_fast(raw, max_bytes, annotations)
    except DatasetTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - any doubt: pydicom decides, as before
        log.debug("fast read not used (%s: %s); reading with pydicom.dcmread", type(exc).__name__, exc)
    try:
        return read_dicom(raw, max_bytes)
    except DatasetTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for garbage
        raise HeaderError(printable(exc) or type(exc).__name__) from exc


def _read_waveform_fast(raw: bytes, max_bytes: int, annotations: bool = False) -> Dataset:
    fp = io.BytesIO(raw)
    if read_preamble(fp, False) is None:
        raise _Unusual("no DICM prefix")
    file_meta = _read_file_meta_info(fp)
    transfer_syntax = file_meta.get("TransferSyntaxUID")
    body_start = fp.tell()
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        inflated = inflate(memoryview(raw)[body_start:], max_bytes)
        buf, start, implicit = inflated.data, 0, False
        if not inflated.complete:
            raise _Unusual("deflated stream without its final block")
    elif transfer_syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        buf, start, implicit = raw, body_start, transfer_syntax == ImplicitVRLittleEndian
    else:
        raise _Unusual(f"transfer syntax {transfer_syntax}")
    if len(buf) >= start + 6:
        # pydicom switches VR mode when the first element says otherwise
        looks_explicit = 0x40 < buf[start + 4] < 0x5B and 0x40 < buf[start + 5] < 0x5B
        if looks_explicit == implicit:
            raise _Unusual("the data set's VR encoding differs from its transfer syntax")
    kept = _KEPT_TOP_WITH_ANNOTATIONS if annotations else _KEPT_TOP
    elements, encoding, _ = _level(buf, start, len(buf), implicit, default_encoding, top=True, kept=kept)
    ds = Dataset(elements)
    ds.set_original_encoding(implicit, True, encoding)
    ds.file_meta = file_meta
    return ds


@functools.lru_cache(maxsize=4096)
def _is_sequence_tag(tag: int) -> bool:
    """Implicit VR: the data dictionary says whether a value is a sequence."""
    try:
        return dictionary_VR(tag) == VR.SQ
    except KeyError:
        return False


#: The top-level sequences :func:`_level` parses (the others are skipped).
_KEPT_TOP = frozenset({_WAVEFORM_SEQUENCE})
_KEPT_TOP_WITH_ANNOTATIONS = frozenset({_WAVEFORM_SEQUENCE, _WAVEFORM_ANNOTATION_SEQUENCE})


def _level(buf: bytes, pos: int, end: int, implicit: bool, encoding: str | list[str],
           top: bool = False, kept: frozenset[int] = _KEPT_TOP,
           ) -> tuple[dict[BaseTag, RawDataElement | DataElement], str | list[str], int]:
    """The elements of one data set level as pydicom's reader yields them,
    the character encodings in force at its end, and the offset past its
    item delimiter (-1 when it ran to ``end`` without one).

    At the top level only the sequences in ``kept`` (the WaveformSequence)
    are parsed; the others are skipped."""
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    unpack, unpack_u16, unpack_u32 = _IMPLICIT.unpack_from, _U16.unpack_from, _U32.unpack_from
    known, long_vrs = _KNOWN_VRS, _LONG_LENGTH_VRS
    while pos < end:
        if pos + 8 > end:
            raise HeaderError("truncated element header")
        group, elem, length = unpack(buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:
            if tag == _ITEM_DELIMITER:
                return elements, encoding, pos + 8
            raise _Unusual(f"({group:04X},{elem:04X}) inside a data set")
        if implicit:
            vr = None
            pos += 8
            is_sequence = _is_sequence_tag(tag)
        else:
            vr = buf[pos + 4 : pos + 6]
            if vr not in known:
                raise _Unusual(f"VR {vr!r} in ({group:04X},{elem:04X})")
            if vr in long_vrs:
                if pos + 12 > end:
                    raise HeaderError("truncated element header")
                length = unpack_u32(buf, pos + 8)[0]
                pos += 12
            else:
                length = unpack_u16(buf, pos + 6)[0]
                pos += 8
            is_sequence = vr == b"SQ"
        undefined = length == _UNDEFINED
        value_end = pos if undefined else pos + length
        if value_end > end:
            raise HeaderError(f"truncated: element ({group:04X},{elem:04X}) runs past the end")
        if top and tag not in kept and (is_sequence or undefined):
            # annotations, acquisition context, ...: normalise does not read them
            pos = _skip_undefined(buf, pos, end, implicit) if undefined else value_end
            continue
        if is_sequence:
            if top and BaseTag(tag) in elements:
                raise _Unusual("a top-level sequence twice")
            sequence, after = _sequence(buf, tag, pos, end if undefined else value_end, undefined, implicit, encoding)
            elements[sequence.tag] = sequence
            pos = after if undefined else value_end
            continue
        if undefined or tag == _WAVEFORM_SEQUENCE or (top and tag in kept):
            raise _Unusual(f"({group:04X},{elem:04X}) {vr!r} {'undefined length' if undefined else ''}")
        vr_text = vr.decode("ascii") if vr is not None else None
        # raw=True: b"" or None
        value = buf[pos:value_end] if length else cast("bytes | None", empty_value_for_VR(vr_text, raw=True))
        element = RawDataElement(BaseTag(tag), vr_text, length, value, pos, implicit, True)
        elements[element.tag] = element
        if tag == _SPECIFIC_CHARACTER_SET and value:
            # as pydicom's reader: the encodings for the sequences that follow
            encoding = convert_encodings(convert_string(value, True))
        pos = value_end
    return elements, encoding, -1


def _sequence(buf: bytes, tag: int, pos: int, end: int, undefined: bool, implicit: bool,
              encoding: str | list[str]) -> tuple[DataElement, int]:
    """A sequence element with every item (and nested sequence) parsed, and
    the offset past its value (past the sequence delimiter when undefined)."""
    items = []
    value_start = pos
    unpack = _IMPLICIT.unpack_from
    while undefined or pos < end:
        if pos + 8 > end:
            raise HeaderError("truncated: sequence without its delimiter")
        group, elem, length = unpack(buf, pos)
        item_tag = group << 16 | elem
        pos += 8
        if item_tag == _SEQUENCE_DELIMITER:
            break
        if item_tag != _ITEM:
            raise _Unusual(f"({group:04X},{elem:04X}) where a sequence item was expected")
        if length == _UNDEFINED:
            elements, item_encoding, after = _level(buf, pos, end, implicit, encoding)
            if after < 0:
                raise HeaderError("truncated: sequence item without its delimiter")
            pos = after
        else:
            item_end = pos + length
            if item_end > end:
                raise HeaderError("truncated: sequence item runs past the end")
            elements, item_encoding, after = _level(buf, pos, item_end, implicit, encoding)
            if after not in (-1, item_end):
                raise _Unusual("item delimiter inside a defined-length item")
            pos = item_end
        item = Dataset(elements, parent_encoding=encoding)
        item.set_original_encoding(implicit, True, item_encoding)
        item.is_undefined_length_sequence_item = length == _UNDEFINED
        items.append(item)
    return DataElement(BaseTag(tag), VR.SQ, Sequence(items), value_start, is_undefined_length=undefined), pos
