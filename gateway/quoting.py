"""Data-set values inside human-readable reasons, written as one printable line.

Reasons (why an ECG was rejected, why a file was refused) are stored, logged,
shown in the admin view and sent in HL7.  A value taken from a data set (a
channel label, a code value or meaning, a unit, a library's exception text
about the bytes) may hold any character, including CR, VT (0x0B) and FS
(0x1C), which end HL7 segments and MLLP frames, and NEL or U+2028, which
other readers treat as line breaks.  Every such value goes into a reason
through one of the two functions here:

* :func:`quote` writes a value the way Python's ``repr`` writes a string
  (``'A\\x1c\\r\\x0bMSH'``): quoted, backslash doubled, every character that is
  not printable (C0, DEL, C1, U+2028/U+2029, other format and unassigned
  characters) as ``\\r``, ``\\n``, ``\\t``, ``\\xNN``, ``\\uNNNN`` or
  ``\\UNNNNNNNN``; cut after ``limit`` characters (``...`` marks the cut);
* :func:`printable` does the same to free text (an exception's message)
  without the quotes and without doubling backslashes, so printable text
  reads exactly as before.
"""

from __future__ import annotations

#: Characters of a quoted value kept before the cut.
QUOTE_LIMIT = 64
#: Characters of free text (an exception message) kept before the cut.
TEXT_LIMIT = 200

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escaped(text: str, backslash: bool) -> str:
    if text.isprintable() and not (backslash and "\\" in text):
        return text  # the common case: nothing to do
    return "".join("\\\\" if ch == "\\" and backslash else ch if ch.isprintable() else _escape_char(ch) for ch in text)


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as a quoted, printable, bounded string: ``'V1'``, ``'A\\r\\x0b'``,
    ``'XXXX...'`` (cut after ``limit`` characters)."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    return "'" + _escaped(text[:limit], True).replace("'", "\\'") + "'" + ("..." if cut else "")


def printable(text: object, limit: int = TEXT_LIMIT) -> str:
    """Free text (e.g. ``str(exc)``) as one printable, bounded line: characters
    that are not printable written as in :func:`quote`, cut after ``limit``
    characters (``...`` marks the cut)."""
    text = text if isinstance(text, str) else str(text)
    cut = len(text) > limit
    return _escaped(text[:limit], False) + ("..." if cut else "")
