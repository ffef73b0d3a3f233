"""Input formats besides DICOM: Philips Sierra XML and HL7 aECG.

Below the stages (it imports none): the door (``gateway.receive``) uses
:func:`sniff` and :func:`read_values`; the normaliser takes the
:class:`EcgRecord` that :func:`decode` returns.  Every reader raises
:class:`FormatError` with a reason that names what is wrong, never a
patient value.  See docs/inputs.md for the per-format rules (instance UID,
demographics, lead identification).
"""

from __future__ import annotations

from gateway.formats.errors import FormatError
from gateway.formats.record import DocumentValues, EcgRecord, RecordLead
from gateway.formats.sniff import Format, sniff

#: The formats other than DICOM, and their names in messages.
XML_FORMATS: dict[str, str] = {"philips": "Philips Sierra XML", "aecg": "HL7 aECG"}


def read_values(raw: bytes, source_format: str) -> DocumentValues:
    """The door's read of a non-DICOM file (no waveform decoding)."""
    if source_format == "philips":
        from gateway.formats import philips

        return philips.read_values(raw)
    if source_format == "aecg":
        from gateway.formats import aecg

        return aecg.read_values(raw)
    raise FormatError(f"no reader for format {source_format!r}")


def decode(raw: bytes, source_format: str) -> EcgRecord:
    """The decoded ECG of a non-DICOM file."""
    if source_format == "philips":
        from gateway.formats import philips

        return philips.decode(raw)
    if source_format == "aecg":
        from gateway.formats import aecg

        return aecg.decode(raw)
    raise FormatError(f"no decoder for format {source_format!r}")


__all__ = [
    "XML_FORMATS",
    "DocumentValues",
    "EcgRecord",
    "Format",
    "FormatError",
    "RecordLead",
    "decode",
    "read_values",
    "sniff",
]
