"""Header values as a person reads them (gateway.report.people)."""

from __future__ import annotations

from datetime import date

import pytest

from gateway.report.people import age_years, birth_and_age, dicom_date, dicom_datetime_text, person_name, sex_text


@pytest.mark.parametrize(
    "pn, text",
    [
        ("Müller^Hans^Peter^Dr", "Müller, Dr Hans Peter"),
        ("DOE^JANE", "DOE, JANE"),
        ("Doe^John^^^Jr", "Doe, John, Jr"),
        ("Anonymous", "Anonymous"),
        ("^Given", "Given"),
        ("=山田^太郎", "山田, 太郎"),  # no alphabetic group: the ideographic one
        ("^^^^", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_person_name(pn, text):
    assert person_name(pn) == text


def test_dates_and_age():
    assert dicom_date("19710123") == date(1971, 1, 23)
    assert dicom_date("19711399") is None and dicom_date("1971-01-23") is None and dicom_date(None) is None
    assert dicom_datetime_text("20130125105919") == "2013-01-25 10:59:19"
    assert dicom_datetime_text("20130125105919.5+0100") == "2013-01-25 10:59:19 +01:00"
    assert dicom_datetime_text("201301") == "2013-01" and dicom_datetime_text("garbage") == "garbage"
    assert age_years(date(1971, 1, 23), date(2013, 1, 22)) == 41
    assert age_years(date(1971, 1, 23), date(2013, 1, 23)) == 42
    assert age_years(date(2000, 1, 1), date(1999, 1, 1)) is None
    assert birth_and_age("19710123", "20130125105919") == "1971-01-23 (42 y)"
    assert birth_and_age("19710123", None, today=date(2020, 6, 1)) == "1971-01-23 (49 y)"
    assert birth_and_age(None, "20130125") == "" and birth_and_age("2001", "2013") == ""
    assert (sex_text("F"), sex_text("m"), sex_text("X"), sex_text(None)) == ("female", "male", "X", "")
