"""gateway.logs: control characters never reach the log raw, text and JSON formats, library chatter."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from gateway.logs import escape_controls, native_stderr_at_debug, setup_logging

#: Every character the log must never carry raw (the line separator \n aside, which only the handler writes).
CONTROLS = [chr(c) for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]]
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
INJECTION = "A\x1c\r\x0bMSH!#$%*!LAB!LAB!EHR!HOSPITAL!20260101!!ADT#A08!INJ1!P!2.5.1\rPID!1!!666666!!Hacked#Ed\rZ"


class Captured(io.StringIO):
    def setup(self, level: str = "INFO", fmt: str = "text") -> None:
        setup_logging(level, fmt, stream=self)  # type: ignore[arg-type]


@pytest.fixture
def captured():  # type: ignore[no-untyped-def]
    """setup_logging() writing to a string; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Captured()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_escape_controls_is_repr_style():
    assert escape_controls("a\rb\x0bc\x1cd\te\nf\x7fg\x85h\u2028i\u2029") == (
        "a\\rb\\x0bc\\x1cd\\te\\nf\\x7fg\\x85h\\u2028i\\u2029"
    )
    assert escape_controls("Müller ÄÖ ✓ \\ plain") == "Müller ÄÖ ✓ \\ plain"
    assert all(not RAW_CONTROL.search(escape_controls(c)) and c not in escape_controls(c) for c in CONTROLS)


def test_text_format_escapes_message_and_args(captured):
    captured.setup("INFO", "text")
    log = logging.getLogger("gateway.test")
    log.warning("label %r rejected: %s", INJECTION, INJECTION)
    log.info("plain " + "".join(CONTROLS))
    lines = captured.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3, lines
    assert not any(RAW_CONTROL.search(line) for line in lines)
    assert lines[0].endswith(
        "rejected: A\\x1c\\r\\x0bMSH!#$%*!LAB!LAB!EHR!HOSPITAL!20260101!!ADT#A08!INJ1!P!2.5.1"
        "\\rPID!1!!666666!!Hacked#Ed\\rZ"
    )
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING gateway\.test: label ", lines[0])


def test_text_format_traceback_lines_are_indented_and_escaped(captured):
    captured.setup("INFO", "text")
    try:
        raise ValueError("bad label " + INJECTION + "\n2026-01-01 00:00:00,000 INFO forged: line")
    except ValueError:
        logging.getLogger("gateway.test").exception("ECG id=%d failed", 7)
    lines = captured.getvalue().rstrip("\n").split("\n")
    assert lines[0].endswith("ERROR gateway.test: ECG id=7 failed")
    assert lines[1] == "  Traceback (most recent call last):"
    # only the record's own first line starts at column 0: nothing can pose as a record
    assert all(line.startswith("  ") for line in lines[1:]), lines
    assert not any(RAW_CONTROL.search(line) for line in lines)
    assert "  2026-01-01 00:00:00,000 INFO forged: line" in lines


def test_json_format_one_object_per_line(captured):
    captured.setup("INFO", "json")
    log = logging.getLogger("gateway.test")
    log.warning("stored ECG id=%d label %s", 3, INJECTION)
    try:
        raise RuntimeError("boom\x0b")
    except RuntimeError:
        log.exception("failed")
    text = captured.getvalue()
    assert not RAW_CONTROL.search(text) and text.isascii()
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["level"] for r in records] == ["WARNING", "ERROR"]
    assert records[0]["logger"] == "gateway.test" and "time" in records[0]
    assert records[0]["message"] == "stored ECG id=3 label " + escape_controls(INJECTION)
    assert "RuntimeError: boom" in records[1]["exc_info"]


def test_library_chatter_below_info_unless_debug(captured):
    captured.setup("INFO")
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002, ecg report")
    logging.getLogger("pynetdicom.events").info("Received Store Request")
    assert [line.split(": ", 1)[1] for line in captured.getvalue().splitlines()] == [
        "Running upgrade 0001 -> 0002, ecg report"
    ]
    captured.setup("DEBUG")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    assert "DEBUG alembic.runtime.migration: Context impl SQLiteImpl." in captured.getvalue()


def test_native_stderr_goes_to_debug(captured, capfd):
    import os

    captured.setup("DEBUG")
    with native_stderr_at_debug("tensorflow.native"):
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\n")
    assert "DEBUG tensorflow.native: I0000 cudart_stub.cc:31] Could not find cuda drivers" in captured.getvalue()
    assert "cudart" not in capfd.readouterr().err  # not written to the real stderr
    captured.setup("INFO")
    with native_stderr_at_debug("tensorflow.native"):
        os.write(2, b"noise\n")
    assert "noise" not in captured.getvalue() and "noise" not in capfd.readouterr().err
