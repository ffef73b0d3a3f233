"""Helpers the XML readers share: values fitted to their columns."""

from __future__ import annotations

import re
from typing import Any

from gateway.formats.errors import FormatError

#: Column widths (``ecg_instances``).
WIDTHS: dict[str, int] = {
    "patient_id": 64,
    "issuer_of_patient_id": 64,
    "patient_name": 324,
    "patient_birth_date": 8,
    "patient_sex": 16,
    "accession_number": 64,
    "placer_order_number": 64,
    "filler_order_number": 64,
    "requested_procedure_id": 64,
    "manufacturer": 64,
    "device_model": 64,
    "device_serial": 64,
    "acquisition_datetime": 32,
    "study_instance_uid": 64,
    "series_instance_uid": 64,
    "sop_class_uid": 64,
}
#: Values that file a result under a patient or order: one that does not fit
#: is refused, never cut or guessed (as for DICOM).
IDENTITY = (
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "accession_number",
    "placer_order_number",
    "filler_order_number",
)
#: Placeholders some devices write for "no value" (Philips: ``---``).
PLACEHOLDERS = {"", "---", "--", "-"}


def put(columns: dict[str, Any], dropped: list[str], column: str, value: str | None, where: str) -> None:
    """Set ``columns[column]`` to ``value`` (stripped; placeholders are None).
    An identity value that does not fit its column (too long, control
    characters) raises :class:`FormatError` naming ``where``; another such
    value is left out and noted in ``dropped``."""
    text = (value or "").strip()
    if text in PLACEHOLDERS:
        columns.setdefault(column, None)
        return
    problem = None
    if not text.isprintable():
        problem = "control characters"
    elif len(text) > WIDTHS[column]:
        problem = f"longer than {WIDTHS[column]} characters"
    if problem is None:
        columns[column] = text
        return
    if column in IDENTITY:
        raise FormatError(f"{where}: {problem}")
    dropped.append(f"{where}: {problem}")
    columns.setdefault(column, None)


_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_TIME = re.compile(r"^(\d{2}):?(\d{2})(?::?(\d{2})(\.\d+)?)?$")


def dicom_date(text: str | None) -> str | None:
    """``YYYY-MM-DD`` or ``YYYYMMDD`` -> ``YYYYMMDD``; None when not a date."""
    match = _DATE.match((text or "").strip())
    return "".join(match.groups()) if match else None


def dicom_datetime(date: str | None, time: str | None) -> str | None:
    """An xsd date and time -> DICOM DT ``YYYYMMDDhhmmss``; None without a date."""
    day = dicom_date(date)
    if day is None:
        return None
    match = _TIME.match((time or "").strip())
    if not match:
        return day
    hh, mm, ss, frac = match.groups()
    return day + hh + mm + (ss or "00") + (frac or "")
