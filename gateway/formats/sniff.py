"""Recognise an ECG file by its content, never by its name.

``sniff(raw)`` looks at the first bytes only (at most :data:`SNIFF_BYTES`):
the DICOM preamble and ``DICM`` prefix or a bare data set's first tag, else
an XML document's root element (``restingecgdata``: Philips Sierra XML;
``AnnotatedECG``: HL7 aECG).  XML is read in the encoding its byte-order mark
or first characters say (Philips 1.04 documents are UTF-16 LE with a BOM);
comments, processing instructions and a DOCTYPE before the root are skipped
(a DOCTYPE also names the root).  The namespace is not checked here: a
wrong one is for the reader to refuse with its reason.
"""

from __future__ import annotations

import codecs
import re
from typing import Literal

Format = Literal["dicom", "philips", "aecg"]

#: How much of a file is looked at.
SNIFF_BYTES = 64 * 1024

#: XML root element (local name) -> format.
XML_ROOTS: dict[str, Format] = {"restingecgdata": "philips", "AnnotatedECG": "aecg"}

#: Bare data set: the groups a PS3.10 file without preamble starts with (file meta, identification).
_DICOM_FIRST_GROUPS = (b"\x02\x00", b"\x08\x00")
_SKIP = re.compile(r"\s+|<\?.*?\?>|<!--.*?-->|<!DOCTYPE\s+(?P<doctype>[\w:.-]+)(?:[^\[>]|\[.*?\])*>", re.DOTALL)
_ROOT = re.compile(r"<(?:[\w.-]+:)?([\w.-]+)[\s/>]")


def xml_encoding(head: bytes) -> str:
    """The encoding an XML document's first bytes say (BOM, or UTF-16 without
    one, or the declaration's ``encoding``); UTF-8 otherwise."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if head.startswith(b"<\x00"):
        return "utf-16-le"
    if head.startswith(b"\x00<"):
        return "utf-16-be"
    match = re.match(rb"\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']", head[:200])
    if match:
        name = match.group(1).decode("ascii")
        try:
            codecs.lookup(name)
        except LookupError:
            return "utf-8"
        return name
    return "utf-8"


def _prolog(raw: bytes) -> tuple[str | None, bool]:
    """(root element's local name or None, whether a DOCTYPE comes first),
    from the first :data:`SNIFF_BYTES` bytes."""
    head = raw[:SNIFF_BYTES]
    try:
        text = head.decode(xml_encoding(head), errors="replace")
    except LookupError:
        return None, False
    pos = 0
    while True:
        match = _SKIP.match(text, pos)
        if match is None:
            break
        if match.group("doctype"):
            return match.group("doctype").rsplit(":", 1)[-1], True
        pos = match.end()
    if text.startswith("<!DOCTYPE", pos):  # one longer than the head: no name read, still a DOCTYPE
        return None, True
    root = _ROOT.match(text, pos)
    return (root.group(1) if root else None), False


def xml_root(raw: bytes) -> str | None:
    """The local name of an XML document's root element, from its first
    :data:`SNIFF_BYTES` bytes; None when these do not start like XML."""
    return _prolog(raw)[0]


def has_doctype(raw: bytes) -> bool:
    """True when an XML document declares a DOCTYPE before its root element."""
    return _prolog(raw)[1]


def is_dicom(raw: bytes) -> bool:
    """A PS3.10 file (128-byte preamble + ``DICM``) or a data set without one
    (starting with group 0002 or 0008 and an explicit VR or a plausible
    implicit length)."""
    if raw[128:132] == b"DICM":
        return True
    if len(raw) < 8 or raw[:2] not in _DICOM_FIRST_GROUPS:
        return False
    vr = raw[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    return int.from_bytes(raw[4:8], "little") < len(raw)


def sniff(raw: bytes) -> Format | None:
    """``"dicom"``, ``"philips"``, ``"aecg"`` or None (none of these), by content."""
    if is_dicom(raw):
        return "dicom"
    root = xml_root(raw)
    return XML_ROOTS.get(root) if root else None
