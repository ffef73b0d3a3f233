"""Read a DICOM Part 10 ECG: :func:`read`, a fast path with ``pydicom.dcmread``
behind it, held to ``[dicom] max_dataset_mb``.

Why a fast path: carts write long undefined-length sequences (a Mortara file
carries ~160 waveform annotation items) that ``dcmread`` parses eagerly, about
15 ms per file, more than the network transfer.  The gateway needs only a few
top-level sequences (the WaveformSequence; at the door also the order's
RequestAttributesSequence; for the cart's report the annotations), so the
fast path walks the bytes itself, skips every other top-level sequence by its
length or delimiters, and builds what it keeps exactly as ``dcmread`` builds
it: raw elements that pydicom decodes on access (character sets, VRs), and
sequences of such items.

The fast path reads Implicit VR LE, Explicit VR LE and Deflated Explicit VR
LE.  Anything it does not recognise - big endian, no preamble, a VR encoding
other than the transfer syntax says, an unknown VR, an undefined-length value
that is not a sequence, a deflate stream without its final block, truncated or
corrupt bytes - goes to ``dcmread``, so such files are read (or refused, with
``dcmread``'s message) exactly as ``dcmread`` reads them.  tests/test_dicomio.py
holds the two to that, over varied and garbled files.

Only public pydicom API is used (``read_preamble``, ``read_dataset``,
``RawDataElement``, ``Dataset``, ``FileDataset``); the file meta is read as
pydicom's own (private) file meta reader reads it, from those parts.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import zlib
from collections.abc import Collection, Mapping
from typing import BinaryIO, NamedTuple, cast

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import dcmread, read_dataset, read_preamble
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR, VR
from pydicom.values import convert_string

from gateway.dicomio.limits import DEFAULT_MAX_DATASET_BYTES, DatasetTooLarge, check_size, inflate
from gateway.quoting import printable

#: The ECG waveform storage SOP classes the gateway accepts.
ECG_STORAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.3": "Ambulatory ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.4": "General 32-bit ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.2.1": "Hemodynamic Waveform Storage",
}

#: Transfer syntaxes the SCP negotiates (the ones the fast path reads).
ECG_TRANSFER_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]

#: What :func:`read` keeps by default: the waveform (the worker's read).
WAVEFORM = ("WaveformSequence",)

log = logging.getLogger("gateway.dicomio")


class DicomError(ValueError):
    """The bytes are not a DICOM file this gateway can read (the message is
    ``dcmread``'s when the fast path left the file to it; never a value)."""


class _Unusual(Exception):
    """An encoding the fast path leaves to ``dcmread`` (not an error by itself)."""


def read(
    raw: bytes,
    max_bytes: int = DEFAULT_MAX_DATASET_BYTES,
    *,
    sequences: Collection[str] | None = WAVEFORM,
    nested: bool = True,
    items_with: Mapping[str, Collection[str]] | None = None,
) -> Dataset:
    """The data set of the DICOM Part 10 file ``raw``, with its file meta.

    ``sequences``: keywords of the top-level sequences wanted; every other
    top-level sequence is skipped by the fast path and absent from the data
    set (every non-sequence top-level element is there).  ``None``: all of
    them, i.e. ``dcmread``'s data set.  ``nested=False``: the items of those
    sequences without their own sequences (the door reads the waveform
    groups' shapes, not their channel definitions).  When the fast path
    leaves the file to ``dcmread``, the data set is ``dcmread``'s, with all
    its sequences.

    ``items_with``: top-level sequence keyword -> element keywords; the fast
    path keeps only the items of that sequence that hold at least one of
    those elements (the cart's report reads ~11 of the sample's 77 annotation
    items; the others are fiducial points, stepped over by their length
    without building a data set).  When the fast path leaves the file to
    ``dcmread``, every item is there.

    Raises :class:`DicomError` when the bytes cannot be read (``dcmread``
    fails too), and :class:`~gateway.dicomio.limits.DatasetTooLarge` (never
    falling back) when the file or its inflated data set exceeds ``max_bytes``.
    """
    check_size(len(raw), max_bytes)
    if sequences is not None:
        kept = _kept_tags(frozenset(sequences))  # a caller's mistake: raised, not read around
        filters = {_tag(k): _kept_tags(frozenset(v)) for k, v in (items_with or {}).items()}
        try:
            return _read_fast(raw, max_bytes, kept, nested, filters)
        except DatasetTooLarge:
            raise
        except Exception as exc:  # noqa: BLE001 - any doubt: dcmread decides
            log.debug("fast read not used (%s: %s); reading with pydicom.dcmread", type(exc).__name__, exc)
    try:
        return _read_pydicom(raw, max_bytes)
    except DatasetTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for garbage
        raise DicomError(printable(exc) or type(exc).__name__) from exc


class FileMetaUids(NamedTuple):
    """The UIDs of a Part 10 file's meta information (None when absent)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    transfer_syntax_uid: str | None


def file_meta_uids(raw: bytes) -> FileMetaUids:
    """MediaStorageSOPClassUID, MediaStorageSOPInstanceUID and TransferSyntaxUID
    of a Part 10 file (each None when absent or unreadable): what ``ingest``
    announces for a file, as the C-STORE request does for the SCP.  Reads the
    file meta only."""
    try:
        fp = io.BytesIO(raw)
        if read_preamble(fp, False) is None:
            return FileMetaUids(None, None, None)
        meta = _file_meta(fp)
    except Exception:  # noqa: BLE001 - unreadable file meta: nothing announced; the read refuses it
        return FileMetaUids(None, None, None)
    return FileMetaUids(
        *(_uid(meta, k) for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"))
    )


def _uid(meta: Dataset, keyword: str) -> str | None:
    try:
        value = meta.get(keyword)
    except Exception:  # noqa: BLE001 - a garbled value is not announced
        return None
    return str(value).rstrip("\0").strip() or None if value is not None else None


# -- the file meta and the pydicom path ----------------------------------------------------------------


def _not_group_0002(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _file_meta(fp: BinaryIO) -> FileMetaDataset:
    """The file meta group at ``fp`` (left just past it), read as pydicom's
    reader reads it: Explicit VR Little Endian, or Implicit when its first
    element cannot be decoded explicitly (pydicom issue #503)."""
    start = fp.tell()
    meta = FileMetaDataset(read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_group_0002))
    meta.set_original_encoding(is_implicit_vr=False, is_little_endian=True, character_encoding=default_encoding)
    if not meta:
        return meta
    try:
        meta[next(iter(meta.keys()))]
    except NotImplementedError:
        fp.seek(start)
        meta = FileMetaDataset(read_dataset(fp, is_implicit_VR=True, is_little_endian=True, stop_when=_not_group_0002))
        meta.set_original_encoding(is_implicit_vr=True, is_little_endian=True, character_encoding=default_encoding)
    return meta


def _read_pydicom(raw: bytes, max_bytes: int) -> Dataset:
    """``dcmread`` of ``raw``, with the inflation of a deflated data set held
    to ``max_bytes``: ``dcmread`` inflates whole (``zlib.decompress``), so for
    Deflated Explicit VR LE the body is inflated by :func:`inflate` and parsed
    by ``read_dataset``, the reader ``dcmread`` uses, giving its data set.  An
    incomplete deflate stream fails as in ``dcmread``."""
    fp = io.BytesIO(raw)
    try:
        preamble = read_preamble(fp, False)
        meta = _file_meta(fp)
        deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except Exception:  # noqa: BLE001 - dcmread below reports it as it always did
        deflated = False
    if not deflated:
        return dcmread(io.BytesIO(raw))
    inflated = inflate(memoryview(raw)[fp.tell() :], max_bytes)
    if not inflated.complete:
        raise zlib.error("Error -5 while decompressing data: incomplete or truncated stream")
    body = io.BytesIO(inflated.data)
    dataset = read_dataset(body, is_implicit_VR=False, is_little_endian=True)
    ds = FileDataset(body, dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset.original_character_set)
    return ds


# -- the fast path -------------------------------------------------------------------------------------

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_WAVEFORM_SEQUENCE = 0x54000100
_SPECIFIC_CHARACTER_SET = 0x00080005
#: Explicit VRs with a 4-byte length (after 2 reserved bytes).
_LONG_LENGTH_VRS = frozenset(str(vr).encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
#: The same VRs as little-endian 16-bit numbers (compared without slicing bytes).
_LONG_LENGTH_VR_CODES = frozenset(int.from_bytes(vr, "little") for vr in _LONG_LENGTH_VRS)
#: VRs pydicom's reader knows; with any other explicit VR pydicom guesses
#: (implicit VR inside a sequence, or a 2-byte length), so such files go to it.
_KNOWN_VRS = frozenset(str(vr).encode("ascii") for vr in STANDARD_VR)
#: The VR as text, by its two bytes (one dict look-up per element instead of a decode).
_VR_TEXT = {vr: vr.decode("ascii") for vr in _KNOWN_VRS}
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_IMPLICIT = struct.Struct("<HHI")


@functools.lru_cache(maxsize=32)
def _kept_tags(keywords: frozenset[str]) -> frozenset[int]:
    tags = {tag_for_keyword(k) for k in keywords}
    if None in tags:
        raise ValueError(f"not DICOM keywords: {sorted(k for k in keywords if tag_for_keyword(k) is None)}")
    return frozenset(cast("set[int]", tags))


def _tag(keyword: str) -> int:
    (tag,) = _kept_tags(frozenset((keyword,)))
    return tag


def _read_fast(
    raw: bytes, max_bytes: int, kept: frozenset[int], nested: bool, items_with: Mapping[int, frozenset[int]]
) -> Dataset:
    fp = io.BytesIO(raw)
    if read_preamble(fp, False) is None:
        raise _Unusual("no DICM prefix")
    file_meta = _file_meta(fp)
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
    elements, encoding, _ = _level(
        buf, start, len(buf), implicit, default_encoding, top=True, kept=kept, nested=nested, items_with=items_with
    )
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


def _skip_undefined(buf: bytes, pos: int, end: int, implicit: bool) -> int:
    """Offset just past the sequence delimiter of an undefined-length value.

    One flat loop (no recursion, one struct call per element): this is the
    hot path, run over thousands of annotation elements per file.  Nesting is
    tracked by counting undefined-length values opened and sequence
    delimiters seen.
    """
    unpack_implicit, unpack_u32 = _IMPLICIT.unpack_from, _U32.unpack_from
    long_vrs = _LONG_LENGTH_VR_CODES
    depth = 1
    while True:
        if pos + 8 > end:
            raise DicomError("truncated: sequence without delimiter")
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
                raise DicomError("truncated: element runs past the end")


def _item_tags(buf: bytes, pos: int, end: int, implicit: bool) -> tuple[set[int], int]:
    """The tags of one item's own elements (its nested sequences stepped over
    by length or delimiters), and the offset past its item delimiter (-1 when
    it ran to ``end`` without one).  What :func:`_level` would leave to
    ``dcmread`` (an unknown VR, an undefined length outside a sequence) is
    left to it here too."""
    tags: set[int] = set()
    unpack, unpack_u16, unpack_u32 = _IMPLICIT.unpack_from, _U16.unpack_from, _U32.unpack_from
    known, long_vrs = _KNOWN_VRS, _LONG_LENGTH_VRS
    while pos < end:
        if pos + 8 > end:
            raise DicomError("truncated element header")
        group, elem, length = unpack(buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:
            if tag == _ITEM_DELIMITER:
                return tags, pos + 8
            raise _Unusual(f"({group:04X},{elem:04X}) inside a data set")
        if implicit:
            pos += 8
            is_sequence = _is_sequence_tag(tag)
        else:
            vr = buf[pos + 4 : pos + 6]
            if vr not in known:
                raise _Unusual(f"VR {vr!r} in ({group:04X},{elem:04X})")
            if vr in long_vrs:
                if pos + 12 > end:
                    raise DicomError("truncated element header")
                length = unpack_u32(buf, pos + 8)[0]
                pos += 12
            else:
                length = unpack_u16(buf, pos + 6)[0]
                pos += 8
            is_sequence = vr == b"SQ"
        tags.add(tag)
        if length == _UNDEFINED:
            if not is_sequence:
                raise _Unusual(f"({group:04X},{elem:04X}) undefined length")
            pos = _skip_undefined(buf, pos, end, implicit)
        else:
            pos += length
            if pos > end:
                raise DicomError(f"truncated: element ({group:04X},{elem:04X}) runs past the end")
    return tags, -1


def _level(
    buf: bytes,
    pos: int,
    end: int,
    implicit: bool,
    encoding: str | list[str],
    top: bool = False,
    kept: frozenset[int] = frozenset(),
    nested: bool = True,
    items_with: Mapping[int, frozenset[int]] | None = None,
) -> tuple[dict[BaseTag, RawDataElement | DataElement], str | list[str], int]:
    """The elements of one data set level as pydicom's reader yields them,
    the character encodings in force at its end, and the offset past its
    item delimiter (-1 when it ran to ``end`` without one).

    At the top level only the sequences in ``kept`` are parsed; the others
    are skipped (and of a sequence in ``items_with``, only the items holding
    one of its tags are kept).  Below it every sequence is parsed, or
    (``nested=False``) every sequence is skipped."""
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    unpack, unpack_u16, unpack_u32 = _IMPLICIT.unpack_from, _U16.unpack_from, _U32.unpack_from
    known, long_vrs = _KNOWN_VRS, _LONG_LENGTH_VRS
    while pos < end:
        if pos + 8 > end:
            raise DicomError("truncated element header")
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
                    raise DicomError("truncated element header")
                length = unpack_u32(buf, pos + 8)[0]
                pos += 12
            else:
                length = unpack_u16(buf, pos + 6)[0]
                pos += 8
            is_sequence = vr == b"SQ"
        undefined = length == _UNDEFINED
        value_end = pos if undefined else pos + length
        if value_end > end:
            raise DicomError(f"truncated: element ({group:04X},{elem:04X}) runs past the end")
        if (tag not in kept if top else not nested) and (is_sequence or undefined):
            # annotations, acquisition context, ...: not wanted by this reader
            pos = _skip_undefined(buf, pos, end, implicit) if undefined else value_end
            continue
        if is_sequence:
            if top and BaseTag(tag) in elements:
                raise _Unusual("a top-level sequence twice")
            sequence, after = _sequence(
                buf,
                tag,
                pos,
                end if undefined else value_end,
                undefined,
                implicit,
                encoding,
                nested,
                items_with.get(tag) if top and items_with else None,
            )
            elements[sequence.tag] = sequence
            pos = after if undefined else value_end
            continue
        if undefined or tag == _WAVEFORM_SEQUENCE or (top and tag in kept):
            raise _Unusual(f"({group:04X},{elem:04X}) {vr!r} {'undefined length' if undefined else ''}")
        vr_text = _VR_TEXT[vr] if vr is not None else None
        # raw=True: b"" or None, as pydicom's reader gives an empty value
        value = buf[pos:value_end] if length else cast("bytes | None", empty_value_for_VR(vr_text, raw=True))
        base_tag = BaseTag(tag)
        elements[base_tag] = RawDataElement(
            tag=base_tag,
            VR=vr_text,
            length=length,
            value=value,
            value_tell=pos,
            is_implicit_VR=implicit,
            is_little_endian=True,
        )
        if tag == _SPECIFIC_CHARACTER_SET and value:
            # as pydicom's reader: the encodings for the sequences that follow
            encoding = convert_encodings(convert_string(value, True))
        pos = value_end
    return elements, encoding, -1


def _sequence(
    buf: bytes,
    tag: int,
    pos: int,
    end: int,
    undefined: bool,
    implicit: bool,
    encoding: str | list[str],
    nested: bool = True,
    required: frozenset[int] | None = None,
) -> tuple[DataElement, int]:
    """A sequence element with every item (and nested sequence) parsed, and
    the offset past its value (past the sequence delimiter when undefined).
    ``required``: only the items holding one of these tags are kept."""
    items = []
    value_start = pos
    unpack = _IMPLICIT.unpack_from
    while undefined or pos < end:
        if pos + 8 > end:
            raise DicomError("truncated: sequence without its delimiter")
        group, elem, length = unpack(buf, pos)
        item_tag = group << 16 | elem
        pos += 8
        if item_tag == _SEQUENCE_DELIMITER:
            break
        if item_tag != _ITEM:
            raise _Unusual(f"({group:04X},{elem:04X}) where a sequence item was expected")
        undefined_item = length == _UNDEFINED
        item_end = end if undefined_item else pos + length
        if item_end > end:
            raise DicomError("truncated: sequence item runs past the end")
        wanted = required is None
        if not wanted:  # read its tags first: an item not wanted is stepped over, no data set built
            tags, after = _item_tags(buf, pos, item_end, implicit)
            wanted = not tags.isdisjoint(cast("frozenset[int]", required))
        if wanted:
            elements, item_encoding, after = _level(buf, pos, item_end, implicit, encoding, nested=nested)
        if undefined_item and after < 0:
            raise DicomError("truncated: sequence item without its delimiter")
        if not undefined_item and after not in (-1, item_end):
            raise _Unusual("item delimiter inside a defined-length item")
        pos = after if undefined_item else item_end
        if not wanted:
            continue
        items.append(_item(elements, encoding, implicit, item_encoding, undefined_item))
    # already_converted: the value setter would only hand the Sequence back (~5 us a sequence, ~70 an ECG)
    element = DataElement(
        BaseTag(tag), VR.SQ, Sequence(items), value_start, is_undefined_length=undefined, already_converted=True
    )
    return element, pos


def _item_slowly(
    elements: dict[BaseTag, RawDataElement | DataElement],
    parent_encoding: str | list[str],
    implicit: bool,
    encoding: str | list[str],
    undefined: bool,
) -> Dataset:
    """A sequence item as pydicom's reader builds it (``Dataset``'s own constructor)."""
    item = Dataset(elements, parent_encoding=parent_encoding)
    item.set_original_encoding(implicit, True, encoding)
    item.is_undefined_length_sequence_item = undefined
    return item


def _blank_item_state() -> dict[str, object] | None:
    """The attributes of a blank item built by :func:`_item_slowly`, when
    :func:`_item_quickly` builds the very same object (checked here on two
    probes, so a pydicom whose ``Dataset`` holds its state otherwise gets the
    constructor again, never a half-built item); else None."""
    blank = vars(_item_slowly({}, default_encoding, False, default_encoding, False))
    state = {k: v for k, v in blank.items() if k not in _ITEM_FIELDS}
    for probe in ((True, ["iso8859", "iso_ir_126"], True), (False, "utf_8", False)):
        elements: dict[BaseTag, RawDataElement | DataElement] = {}
        slow = _item_slowly(elements, "latin_1", *probe)
        fast = _item_quickly(state, elements, "latin_1", *probe)
        if vars(fast) != vars(slow) or any(
            type(v) in (dict, list) and v is blank[k] for k, v in vars(fast).items() if k not in _ITEM_FIELDS
        ):
            return None
    return state


#: The attributes each item sets itself (the others come from the blank item's state).
_ITEM_FIELDS = frozenset(
    (
        "_dict",
        "_parent_encoding",
        "_read_implicit",
        "_read_little",
        "_read_charset",
        "is_undefined_length_sequence_item",
    )
)


def _item_quickly(
    state: dict[str, object],
    elements: dict[BaseTag, RawDataElement | DataElement],
    parent_encoding: str | list[str],
    implicit: bool,
    encoding: str | list[str],
    undefined: bool,
) -> Dataset:
    """:func:`_item_slowly`'s object without running ``Dataset.__init__``,
    whose ~17 attribute sets through ``Dataset.__setattr__`` cost ~20 us an
    item (a cart's waveform has ~100 items: ~2 ms of the worker's read).
    Mutable attributes (dicts, lists) are fresh copies for every item."""
    item = Dataset.__new__(Dataset)
    attributes = {k: (v.copy() if type(v) in (dict, list) else v) for k, v in state.items()}  # type: ignore[attr-defined]
    attributes.update(
        _dict=elements,
        _parent_encoding=parent_encoding,
        _read_implicit=implicit,
        _read_little=True,
        _read_charset=encoding,
        is_undefined_length_sequence_item=undefined,
    )
    item.__dict__.update(attributes)
    return item


_BLANK_ITEM = _blank_item_state()


def _item(
    elements: dict[BaseTag, RawDataElement | DataElement],
    parent_encoding: str | list[str],
    implicit: bool,
    encoding: str | list[str],
    undefined: bool,
) -> Dataset:
    """One sequence item of the fast path: the object ``dcmread`` builds."""
    if _BLANK_ITEM is None:
        return _item_slowly(elements, parent_encoding, implicit, encoding, undefined)
    return _item_quickly(_BLANK_ITEM, elements, parent_encoding, implicit, encoding, undefined)
