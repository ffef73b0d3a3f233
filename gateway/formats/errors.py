"""The one error the format readers raise."""

from __future__ import annotations


class FormatError(ValueError):
    """The file cannot be read as the format it was recognised as.

    ``str(exc)`` is the reason stored with the ECG (a ``rejected`` row) and
    printed by ``ingest``: it names the element or attribute at fault, never
    a patient value.
    """
