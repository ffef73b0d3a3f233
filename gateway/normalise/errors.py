"""The one error the normalise stage raises for input it cannot analyse."""

from __future__ import annotations

from typing import Any


class NormaliseError(ValueError):
    """The ECG cannot be analysed.

    ``str(exc)`` (= ``reason``) is the human reason stored with the ECG and sent
    in HL7; ``report`` holds whatever was learned before failing (JSON-able).
    """

    def __init__(self, reason: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.report: dict[str, Any] = dict(report or {})
        self.report["error"] = reason
