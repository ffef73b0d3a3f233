"""gateway.quoting: data-set values inside reasons are one printable, bounded line."""

from __future__ import annotations

import pytest

from gateway.quoting import QUOTE_LIMIT, TEXT_LIMIT, printable, quote


@pytest.mark.parametrize(
    "value, quoted",
    [
        ("V1", "'V1'"),
        ("A\x1c\r\x0bMSH", "'A\\x1c\\r\\x0bMSH'"),
        ("a\nb\tc", "'a\\nb\\tc'"),
        ("\x85\u2028\u2029\x7f\x00", "'\\x85\\u2028\\u2029\\x7f\\x00'"),
        ("\ud800", "'\\ud800'"),
        ("back\\slash", "'back\\\\slash'"),  # doubled, as repr does: a literal "\r" cannot pass for a CR
        ("it's", "'it\\'s'"),
        ("Müller 山田", "'Müller 山田'"),
        (12.5, "'12.5'"),
    ],
)
def test_quote_is_repr_like(value, quoted):
    assert quote(value) == quoted
    assert quote(value).isprintable()


def test_quote_and_printable_are_bounded():
    assert quote("x" * 100) == "'" + "x" * QUOTE_LIMIT + "'..."
    assert quote("\r" * 100) == "'" + "\\r" * QUOTE_LIMIT + "'..."
    assert printable("y" * 500) == "y" * TEXT_LIMIT + "..."


def test_printable_leaves_printable_text_alone_and_escapes_the_rest():
    text = "No tag to read at file position 0x1234 (path C:\\x)"
    assert printable(text) is text or printable(text) == text
    assert printable(ValueError("bad\r\x1cvalue")) == "bad\\r\\x1cvalue"
    assert printable("").isprintable()
