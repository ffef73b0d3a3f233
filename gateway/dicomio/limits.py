"""How big a DICOM data set may be, and the bounded inflation that holds
every read to it (``[dicom] max_dataset_mb``).

One limit for every path that reads DICOM bytes: the SCP while it receives
P-DATA (:mod:`gateway.receive.scp`) and :func:`gateway.dicomio.reader.read`
(the door's header read, ``ingest``, the worker, PACS, the rebuilds, and the
pydicom fallback behind it).  No pydicom here: light commands import this
module for :data:`MIB`.  It bounds the encoded data
set: the bytes as received and, for Deflated Explicit VR Little Endian, the
inflated bytes.  Inflation runs with an output bound, so a deflate stream of
a megabyte that would inflate to gigabytes (a decompression bomb) costs one
output chunk of memory and the time to inflate ``max_bytes``, never more.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.config import DEFAULT_MAX_DATASET_MB

MIB = 1024 * 1024
#: ``[dicom] max_dataset_mb``'s default (gateway.config owns it) in bytes.
DEFAULT_MAX_DATASET_BYTES = DEFAULT_MAX_DATASET_MB * MIB

_IN_CHUNK = 64 * 1024  # deflate input per call: keeps zlib's unconsumed_tail copies small
_OUT_CHUNK = 1 * MIB  # inflated output per call
#: Inflated output kept on the first pass; a bigger data set is only counted
#: there and inflated again once it is known to fit (so a bomb never holds more).
_KEEP = 2 * MIB


class DatasetTooLarge(ValueError):
    """The data set is larger than ``max_dataset_mb``: refused, not an
    unreadable file.  The message is short and names the setting."""


def limit_text(max_bytes: int) -> str:
    """``[dicom] max_dataset_mb (64 MB)``: how refusals name the limit."""
    size = f"{max_bytes // MIB} MB" if max_bytes % MIB == 0 else f"{max_bytes} bytes"
    return f"[dicom] max_dataset_mb ({size})"


def check_size(size: int, max_bytes: int) -> None:
    """Raise :class:`DatasetTooLarge` when ``size`` bytes exceed ``max_bytes``."""
    if size > max_bytes:
        raise DatasetTooLarge(f"data set of {size} bytes is larger than {limit_text(max_bytes)}")


@dataclass(frozen=True)
class Inflated:
    """An inflated data set; ``complete`` is False when the deflate stream
    ended without its final block (some writers omit it; truncation looks
    the same)."""

    data: bytes
    complete: bool


def _chunks(inflater: zlib._Decompress, deflated: bytes | memoryview) -> Iterator[bytes]:
    view = memoryview(deflated)
    for start in range(0, len(view), _IN_CHUNK):
        data: bytes | memoryview = view[start : start + _IN_CHUNK]
        while True:
            out = inflater.decompress(data, _OUT_CHUNK)
            if out:
                yield out
            if inflater.eof:
                return
            data = inflater.unconsumed_tail
            # a full output chunk may leave output pending inside zlib: ask again
            if not data and len(out) < _OUT_CHUNK:
                break


def inflate(deflated: bytes | memoryview, max_bytes: int) -> Inflated:
    """Inflate a raw deflate stream (Deflated Explicit VR Little Endian's
    body) of at most ``max_bytes`` inflated bytes.

    Raises :class:`DatasetTooLarge` as soon as the output passes ``max_bytes``
    (memory used: about one output chunk), and ``zlib.error`` when the bytes
    are not a deflate stream.  Bytes after the end of the stream are ignored,
    as pydicom ignores them.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    kept: list[bytes] | None = []
    total = 0
    for chunk in _chunks(inflater, deflated):
        total += len(chunk)
        if total > max_bytes:
            raise DatasetTooLarge(f"deflated data set inflates to more than {limit_text(max_bytes)}")
        if kept is not None:
            kept.append(chunk)
            if total > _KEEP:
                kept = None  # count only from here; inflate again below if it fits
    if kept is not None:
        return Inflated(b"".join(kept), inflater.eof)
    # It fits, so the same stream inflates to the same `total` bytes again.
    again = zlib.decompressobj(-zlib.MAX_WBITS)
    return Inflated(again.decompress(deflated, max_bytes + 1), inflater.eof)
