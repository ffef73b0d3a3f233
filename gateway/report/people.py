"""Header values as a person reads them (pure): a DICOM person name as
"Family, Given Middle", DICOM dates and date-times as ISO text, the age at
the recording.  Used by the web view and the PDF report."""

from __future__ import annotations

import re
from datetime import date, datetime

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,6})?([+-]\d{4})?$")


def person_name(pn: str | None) -> str:
    """DICOM PN ``Family^Given^Middle^Prefix^Suffix`` as "Family, Given
    Middle" with the prefix before and the suffix after the given names
    (``Müller^Hans^Peter^Dr`` -> "Müller, Dr Hans Peter"); the first
    non-empty component group; '' when there is no name."""
    if not pn:
        return ""
    group = next((g for g in str(pn).split("=") if g.strip("^ ")), "")
    family, given, middle, prefix, suffix = ([p.strip() for p in group.split("^")] + [""] * 5)[:5]
    rest = " ".join(p for p in (prefix, given, middle) if p)
    if suffix:
        rest = f"{rest}, {suffix}" if rest else suffix
    if family and rest:
        return f"{family}, {rest}"
    return family or rest


def dicom_date(da: str | None) -> date | None:
    """A DICOM DA (``YYYYMMDD``) as a date; None when absent or impossible."""
    m = _DA.match((da or "").strip())
    if not m:
        return None
    try:
        return date(*(int(g) for g in m.groups()))
    except ValueError:
        return None


def dicom_datetime_text(dt: str | None) -> str:
    """A DICOM DT as ``YYYY-MM-DD HH:MM:SS`` (as much as it gives, plus its
    UTC offset when it has one); the text as given when it is not a DT."""
    text = (dt or "").strip()
    m = _DT.match(text)
    if not m:
        return text
    year, month, day, hour, minute, second, offset = m.groups()
    out = "-".join(p for p in (year, month, day) if p)
    clock = ":".join(p for p in (hour, minute, second) if p)
    if clock:
        out += " " + clock + ("" if minute else "h")
    if offset:
        out += f" {offset[:3]}:{offset[3:]}"
    return out


def acquisition_date(dt: str | None) -> date | None:
    """The date part of a DICOM DT."""
    return dicom_date((dt or "").strip()[:8])


def age_years(birth: date | None, on: date | None) -> int | None:
    """Completed years from ``birth`` to ``on``; None when either is unknown
    or ``on`` is before ``birth``."""
    if birth is None or on is None or on < birth:
        return None
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def birth_and_age(birth_da: str | None, acquisition_dt: str | None, today: date | None = None) -> str:
    """ "1971-01-23 (42 y)": the birth date and the age at the recording (at
    ``today`` when the recording has no date); '' without a birth date."""
    birth = dicom_date(birth_da)
    if birth is None:
        return ""
    on = acquisition_date(acquisition_dt) or today or datetime.now().date()
    age = age_years(birth, on)
    return birth.isoformat() + (f" ({age} y)" if age is not None else "")


SEX = {"M": "male", "F": "female", "O": "other"}


def sex_text(sex: str | None) -> str:
    """DICOM PatientSex as a word ('' when absent)."""
    value = (sex or "").strip().upper()
    return SEX.get(value, value)


def split_name(full_name: str | None, username: str) -> tuple[str, str]:
    """(family, given) for HL7 from a user record's full name: "Family, Given"
    as written, else the last word is the family name ("Anna Maria Rossi" ->
    ("Rossi", "Anna Maria")); no full name: the login name as family name."""
    name = " ".join((full_name or "").split())
    if not name:
        return username, ""
    if "," in name:
        family, _, rest = name.partition(",")
        return family.strip(), rest.strip()
    *given, last = name.split(" ")
    return last, " ".join(given)
