"""Logging set-up.  Log lines name SOP Instance UIDs and row ids, never PHI.

One handler on the root logger, in one of two formats (``[logging] format``):

- ``text``: ``<time> <LEVEL> <logger>: <message>``, one line per record; a
  traceback follows on lines indented by two spaces.
- ``json``: one JSON object per line (python-json-logger) with ``time``,
  ``level``, ``logger``, ``message`` and, when there is one, ``exc_info``.

Whatever a message quotes (a DICOM label, an exception text, a peer's AE
title), :class:`EscapeControlCharacters` writes every control character (C0,
DEL, C1, U+2028/U+2029) as its Python escape (``\\r``, ``\\x0b``,
``\\u2028``), so no data-set value can start a forged line in the log.

Libraries' chatter (Alembic's context and plugin lines, TensorFlow's C++ and
absl lines, pynetdicom's per-PDU lines, pydicom's per-element warnings) is
kept below INFO unless the level is DEBUG; Python warnings are log records.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, TextIO

LogFormat = Literal["text", "json"]

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

#: Library loggers that say at INFO what only matters when debugging.
_CHATTY = {
    "alembic.runtime.plugins": logging.WARNING,  # "setup plugin ..." x 7
    "pynetdicom": logging.WARNING,  # every PDU at INFO
    "pydicom": logging.ERROR,  # "value length exceeds ..." per element; the gateway names the ECG and the reason
    "absl": logging.ERROR,
    "tensorflow": logging.ERROR,
    "tensorflow.native": logging.WARNING,  # import_tensorflow_quietly(): the native start-up lines at DEBUG
    "h5py": logging.WARNING,
    "uvicorn.error": logging.WARNING,
}


#: Library INFO lines written at DEBUG instead (the logger's other INFO lines stay).
_DEMOTED = {
    "alembic.runtime.migration": ("Context impl ", "Will assume "),  # "Running upgrade a -> b" stays INFO
}


def escape_controls(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1, U+2028/U+2029)
    written as its Python escape, e.g. ``\\r``, ``\\x0b``, ``\\x1c``."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class EscapeControlCharacters(logging.Filter):
    """The one place log text is made safe: the final message (format and
    arguments merged) is escaped, so every handler writes the same text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _CONTROL.search(message):
            message = escape_controls(message)
        record.msg, record.args = message, None
        return True


class _Demote(logging.Filter):
    """Rewrites matching INFO records as DEBUG (dropped unless DEBUG is on)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and isinstance(record.msg, str) and record.msg.startswith(self.prefixes):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


class TextFormatter(logging.Formatter):
    """One line per record; traceback lines follow indented, with their own
    control characters (a quoted value inside an exception text) escaped."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        head = super().formatMessage(self._prepare(record))
        tail = ""
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for extra in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if extra:
                tail += "".join("\n  " + escape_controls(line) for line in extra.splitlines())
        return head + tail

    def _prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.message = record.getMessage()  # escaped by EscapeControlCharacters
        record.asctime = self.formatTime(record, self.datefmt)
        return record


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    # ensure_ascii: every non-ASCII character, and so every control character, is a \u escape
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        json_ensure_ascii=True,
    )


def setup_logging(level: str = "INFO", fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger: ``level``, ``fmt`` ("text" or "json") on
    ``stream`` (stderr), control characters escaped, library chatter below INFO."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(_json_formatter() if fmt == "json" else TextFormatter())
    handler.addFilter(EscapeControlCharacters())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    debug = logging.getLevelName(level) <= logging.DEBUG
    for name, quiet_level in _CHATTY.items():
        logging.getLogger(name).setLevel(logging.DEBUG if debug else max(quiet_level, logging.getLevelName(level)))
    for name, prefixes in _DEMOTED.items():
        logger = logging.getLogger(name)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, _Demote)]
        logger.addFilter(_Demote(prefixes))
    # Python warnings become log records (one escaped line each, in the chosen format); pydicom's
    # per-element validation warnings are the data-quality chatter the gateway's own reasons replace.
    logging.captureWarnings(True)
    warnings.filterwarnings("default" if debug else "ignore", category=UserWarning, module=r"pydicom(\.|$)")
    if not debug:  # TensorFlow's C++ INFO/WARNING lines after start-up; an operator's own setting wins
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextmanager
def native_stderr_at_debug(logger_name: str) -> Iterator[None]:
    """Capture what native code writes to file descriptor 2 inside the block
    (TensorFlow's absl, oneDNN and CUDA lines bypass Python logging) and log
    each line at DEBUG under ``logger_name``; at ERROR if the block raises.

    Only for a block in which no other thread logs: Python's own stderr is
    descriptor 2 too."""
    log = logging.getLogger(logger_name)
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    log.log(logging.ERROR if failed else logging.DEBUG, "%s", line)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and let it probe for GPUs with its native start-up
    lines logged at DEBUG (7 lines on a CPU-only machine otherwise)."""
    with native_stderr_at_debug("tensorflow.native"):
        import tensorflow as tf

        tf.config.list_physical_devices()
