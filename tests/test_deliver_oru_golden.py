"""build_oru's ER7 is frozen byte for byte: golden messages generated from the
hl7apy field-by-field implementation (before the fast path), with the message
time pinned through ``now=``.  Then: the fast path equals that field-by-field
build (``build_oru_reference``) in output and in errors, for any input.

Regenerate (only when a change of output is intended and reviewed):
    .venv/bin/python tests/fixtures/oru_golden/regenerate.py
"""

from __future__ import annotations

from datetime import UTC, datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import Hl7Config
from gateway.deliver import oru
from gateway.deliver.oru import OruBuildError, OruOptions, OverRead, build_oru, build_oru_reference

GOLDEN = Path(__file__).parent / "fixtures" / "oru_golden"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
from test_deliver_oru import PROBS, ecg, prediction  # noqa: E402 - the shared ORU inputs


def _mortara() -> dict:
    """The measurements of pydicom's Mortara sample as the worker stores them."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from gateway.report.measurements import extract

    return extract(dcmread(get_testdata_file("waveform_ecg.dcm"))).measurements


MORTARA_MEASUREMENTS = _mortara()


#: name -> (ecg, prediction or None, config, control id[, options])
CASES = {
    "processed_findings_special_chars": (ecg(), prediction(), Hl7Config(), "CTRL1"),
    # issue 17: an AI read as sent by default ([hl7] ai_result_status = "P"): OBR-25 and every OBX-11 P
    "ai_read_preliminary": (ecg(), prediction(), Hl7Config(), "PRE-1", OruOptions(result_status="P")),
    "processed_no_findings_quality_flags": (
        ecg(patient_id="P-77", patient_name="Doe^John^Q^Dr^Jr", patient_sex="m"),
        prediction(findings=[], quality_flags=["noisy V1", "lead off|V2^&~\\x"], probabilities={k: 0.0 for k in PROBS}),
        Hl7Config(),
        "C2",
    ),
    "rejected_with_reason": (ecg(status="rejected", error="only 3 leads & no V1|V2"), None, Hl7Config(), "REJ-1"),
    "demo_model_pv1_configured_codes": (
        ecg(patient_sex="X", acquisition_datetime="202401020304"),
        prediction(
            demo_model=True,
            findings=["1dAVb", "RBBB", "LBBB", "SB", "AF", "ST"],
            probabilities={k: 1.0 for k in PROBS},
            model_sha256="0123456789abcdef" * 4,
        ),
        Hl7Config(
            include_pv1=True,
            pv1_patient_class="E",
            order_code="34534-8^12 lead EKG panel^LN",
            probability_coding_system="99ECG",
            probability_codes={"AF": "AFIB-P"},
            sending_application="GW^1.2.3^ISO",
            sending_facility="Cardio Lab",
            receiving_application="EHR",
            receiving_facility="H1^2.16.1^ISO",
        ),
        "12345678901234567890",
    ),
    "missing_optional_fields": (
        ecg(
            issuer_of_patient_id=None,
            patient_name="Doe",
            patient_birth_date=None,
            patient_sex=None,
            accession_number=None,
            placer_order_number=None,
            filler_order_number=None,
            requested_procedure_id=None,
            study_instance_uid=None,
            acquisition_datetime=None,
        ),
        prediction(findings=["SB"]),
        Hl7Config(),
        "C5",
    ),
    "malformed_optional_values_dropped": (
        ecg(
            patient_birth_date="1970-01-01",
            patient_sex="  ",
            acquisition_datetime="not a date",
            patient_name="Doe^^^^",
            accession_number="   ",
            placer_order_number=" P1 ",
            filler_order_number="",
        ),
        prediction(findings=["ST", "AF", "unknown"]),
        Hl7Config(include_pv1=True),
        "C6",
    ),
    "non_ascii_utf8": (
        ecg(
            patient_name="Müller^Zoë",
            issuer_of_patient_id="Hôpital",
            accession_number="Ä1",
            requested_procedure_id="山田",
        ),
        prediction(),
        Hl7Config(),
        "C7",
    ),
    "non_ascii_ideographic_utf8": (ecg(patient_name="=山田^太郎=やまだ^たろう"), prediction(), Hl7Config(), "C8"),
    "non_ascii_latin1": (
        ecg(patient_name="Müller^Zoë", issuer_of_patient_id="Hôpital"),
        prediction(),
        Hl7Config(charset="8859/1"),
        "C9",
    ),
    "non_ascii_ascii_folded": (
        ecg(patient_name="Müller^Zoë^Ångström", issuer_of_patient_id="Hôpital", error="Signal à revoir"),
        None,
        Hl7Config(charset="ASCII"),
        "C10",
    ),
    "rejected_latin1_rounding": (
        ecg(error="Überlauf: lead I clipped", patient_id="A\\B", study_instance_uid="2.25.99"),
        None,
        Hl7Config(charset="8859/1", include_pv1=True),
        "C11",
    ),
    # issue 13 §1: control characters from the data set (here raw in every text; the worker's reasons
    # quote labels repr-style first) are replaced by "?", never sent
    "control_characters_replaced": (
        ecg(
            patient_id="P\r1",
            patient_name="Doe\x0b^Jo\x1che",
            accession_number="A\x85\u2028",
            error="channel 1 (A\x1c\r\x0bMSH|^~\\&|LAB\rPID|1||666666): no unit\x7f",
        ),
        None,
        Hl7Config(receiving_facility="HOSP\rZ"),
        "C13",
    ),
    # issue 13 §3: a long reason is sent short (full reason in the database), a long issuer is mapped or cut
    "long_reason_and_issuer": (
        ecg(
            error="12 of 12 leads unusable: "
            + "; ".join(
                f"{lead}: flat (peak-to-peak 0.000 mV)"
                for lead in ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
            ),
            issuer_of_patient_id="UNIVERSITY-HOSPITAL-X",
            filler_order_number=None,
        ),
        None,
        Hl7Config(),
        "C14",
    ),
    "issuer_mapped_correction_no_type_code": (
        ecg(issuer_of_patient_id="UNIVERSITY-HOSPITAL-X", filler_order_number=None, id=123),
        prediction(),
        Hl7Config(
            assigning_authorities={"UNIVERSITY-HOSPITAL-X": "UHX"}, identifier_type_code="", filler_namespace="GW1"
        ),
        "C15",
        OruOptions(result_status="C", filler_id="99"),
    ),
    "probabilities_rounding_half": (
        ecg(acquisition_datetime="20240102030405.5-0500"),
        prediction(
            probabilities={"1dAVb": 0.00005, "RBBB": 0.99995, "LBBB": 0.12345, "SB": 1, "AF": 0, "ST": 0.5},
            findings=["RBBB"],
        ),
        Hl7Config(),
        "C12",
    ),
    # issue 16 §1: the cart's measurements (NM, LOINC, UCUM; the derived heart rate marked in OBX-17) and its
    # statements (ST, marked as the device's in OBX-18), before the AI's observations; unknown codes not sent
    "cart_measurements_and_statements": (
        ecg(
            measurements=MORTARA_MEASUREMENTS,
            cart_statements=["RITMO SINUSALE", "ECG NORMALE", "ST|T ^ change"],
            manufacturer="Mortara Instrument, Inc.",
            device_model="ELI 250",
            device_serial="A&1",
        ),
        prediction(),
        Hl7Config(),
        "C16",
    ),
    "rejected_with_cart_measurements": (
        ecg(
            error="only 3 leads",
            measurements={
                "heart_rate": {"value": 69, "unit": "/min", "code": "8867-4", "name": "Heart rate", "source": "cart"},
                "qtc_interval": {
                    "value": 412.5,
                    "unit": "ms",
                    "code": "8636-3",
                    "name": "QTc interval",
                    "source": "cart",
                },
                "MDC:2:16016": {
                    "value": 70,
                    "unit": "/min",
                    "code": None,
                    "name": "Ventricular rate",
                    "source": "cart",
                },
            },
            cart_statements=[],
        ),
        None,
        Hl7Config(charset="8859/1"),
        "C17",
    ),
    # issue 16 §3: the PDF report in one ED OBX, base64 (validated with a placeholder, then filled in)
    "embedded_pdf": (
        ecg(),
        prediction(findings=[]),
        Hl7Config(embed_pdf=True),
        "C18",
        OruOptions(report_pdf=b"%PDF-1.4\n%\xe2\xe3\xcf\xd3 |^~\\& not a real report\n%%EOF\n"),
    ),
    # the physician over-read (issue 17): OBR-32 and OBX-16 = the reader, the AI's findings as AI observations
    "over_read_final_reader_edits": (
        ecg(),
        prediction(),
        Hl7Config(),
        "C19",
        OruOptions(
            result_status="F",
            over_read=OverRead(
                findings=("RBBB", "AF"),
                reader_id="D123",
                family_name="Rossi",
                given_name="Anna Maria",
                authority="HOSP",
                at=datetime(2024, 5, 6, 7, 0, 0, tzinfo=UTC),
                statements=("Sinus rhythm | normal axis", "Compare with prior ^ ECG"),
                comment="Checked & signed",
            ),
        ),
    ),
    # a physician's text over ST's 199 characters: TX pieces, OBX-4 "k.1", "k.2", ..., cut at blanks
    "over_read_long_texts": (
        ecg(),
        prediction(),
        Hl7Config(),
        "C21",
        OruOptions(
            result_status="F",
            over_read=OverRead(
                findings=("SB",),
                reader_id="D123",
                family_name="Rossi",
                authority="HOSP",
                at=datetime(2024, 5, 6, 8, 0, 0, tzinfo=UTC),
                statements=(
                    "Sinus bradycardia at 48/min | PR 190 ms ^ QRS 96 ms & QTc 410 ms ~ "
                    + "no acute repolarisation changes, " * 6
                    + "compare with the prior tracing of 2024-01-02.",
                    "Short one.",
                ),
                comment="Discussed with the ward. " * 30 + "Signed.",
            ),
        ),
    ),
    "over_read_corrected_none_confirmed": (
        ecg(patient_name="Müller^Zoë"),
        prediction(),
        Hl7Config(charset="ASCII"),
        "C20",
        OruOptions(
            result_status="C",
            over_read=OverRead(
                findings=(),
                reader_id="smith.j",
                family_name="Smith-Müller",
                authority="ECGGW",
                at=datetime(2024, 5, 6, 7, 30, 0, tzinfo=UTC),
            ),
        ),
    ),
}


def build(name: str, fn=build_oru) -> str:
    ecg_, prediction_, cfg, control_id, *options = CASES[name]
    return fn(ecg_, prediction_, cfg, control_id, now=NOW, options=options[0] if options else OruOptions())


def test_every_case_has_a_golden_file_and_no_file_is_orphaned():
    assert sorted(p.stem for p in GOLDEN.glob("*.er7")) == sorted(CASES)


@pytest.mark.parametrize("fn", [build_oru, build_oru_reference])
@pytest.mark.parametrize("name", sorted(CASES))
def test_output_is_byte_identical_to_golden(name, fn):
    expected = (GOLDEN / f"{name}.er7").read_bytes().decode("utf-8")
    assert build(name, fn) == expected


def test_golden_files_are_well_formed_er7():
    # guards the fixtures themselves: CR-separated segments, pinned time
    for path in GOLDEN.glob("*.er7"):
        text = path.read_bytes().decode("utf-8")
        segments = text.split("\r")
        assert segments[0].startswith("MSH|^~\\&|") and "\n" not in text
        assert segments[0].split("|")[6] == "20240506070809+0000"
        assert [s[:3] for s in segments if s[:3] in ("PID", "ORC", "OBR")] == ["PID", "ORC", "OBR"]


def test_now_is_sent_in_utc_and_a_naive_time_is_utc():
    from datetime import timedelta

    ecg_, prediction_, cfg, _ = CASES["processed_findings_special_chars"]
    local = NOW.astimezone(timezone(timedelta(hours=2)))
    naive = NOW.replace(tzinfo=None)
    for t in (local, naive):
        er7 = build_oru(ecg_, prediction_, cfg, "CTRL1", now=t)
        assert er7 == build("processed_findings_special_chars")


# --- the fast path (ER7 text + per-shape hl7apy validation) equals the reference ---------------------------------


def outcome(fn, *args):
    """The ER7, or the OruBuildError text, of one build."""
    try:
        return fn(*args, now=NOW)
    except OruBuildError as exc:
        return f"OruBuildError: {exc}"


def shape_of(name):
    ecg_, prediction_, cfg, control_id, *options = CASES[name]
    return oru._render_er7(oru._oru_segments(ecg_, prediction_, cfg, control_id, NOW, *options))[1]


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_cases_take_the_fast_path(name):
    # a shape hl7apy could not learn would silently cost ~60 ms per message
    checks = oru._shape_checks(shape_of(name))
    assert checks is not None
    assert ("DTM", "MSH-7") in checks and ("ST", "MSH-10") in checks


ERROR_CASES = {
    "sub-component in HD": (
        ecg(),
        prediction(),
        Hl7Config(receiving_application="EHR&X"),
        "C",
        "MSH-5: MaxChildLimitReached",
    ),
    "patient id over 199": (
        ecg(patient_id="P" * 200),
        prediction(),
        Hl7Config(),
        "C",
        "PID-3: value longer than HL7 v2.5.1 allows",
    ),
    # identifiers are never cut: one longer than HL7 allows (impossible from the door: <= 64 characters) fails
    "accession over 199 once escaped": (
        ecg(accession_number="|" * 67),
        prediction(),
        Hl7Config(),
        "C",
        "OBR-18: value longer than HL7 v2.5.1 allows",
    ),
    "impossible birth date": (ecg(patient_birth_date="19701399"), prediction(), Hl7Config(), "C", "PID-7: ValueError"),
    "impossible acquisition time": (
        ecg(acquisition_datetime="20241399"),
        prediction(),
        Hl7Config(),
        "C",
        "OBR-7: ValueError",
    ),
    "long configured order code": (
        ecg(),
        prediction(),
        Hl7Config(order_code="X" * 200 + "^t^LN"),
        "C",
        "OBR-4: value longer than HL7 v2.5.1 allows",
    ),
    "long PV1 class": (
        ecg(),
        prediction(),
        Hl7Config(include_pv1=True, pv1_patient_class="C" * 21),
        "C",
        "PV1-2: value longer than HL7 v2.5.1 allows",
    ),
    "long control id": (ecg(), prediction(), Hl7Config(), "C" * 200, "MSH-10: value longer than HL7 v2.5.1 allows"),
    "two problems: the first in message order": (
        ecg(placer_order_number="p" * 200, study_instance_uid="1" * 200),
        prediction(),
        Hl7Config(),
        "C",
        "ORC-2: value longer than HL7 v2.5.1 allows",
    ),
}


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_errors_are_the_references_naming_the_field(name):
    ecg_, prediction_, cfg, control_id, expected = ERROR_CASES[name]
    assert outcome(build_oru, ecg_, prediction_, cfg, control_id) == f"OruBuildError: {expected}"
    assert outcome(build_oru_reference, ecg_, prediction_, cfg, control_id) == f"OruBuildError: {expected}"


def test_a_bad_value_in_a_known_shape_is_still_rejected():
    # the shape is learnt (and cached) from a valid message; the value check runs on every build
    build_oru(ecg(patient_birth_date="19700101"), prediction(), Hl7Config(), "C", now=NOW)
    hits = oru._shape_checks.cache_info().hits
    with pytest.raises(OruBuildError, match="^PID-7: ValueError$"):
        build_oru(ecg(patient_birth_date="19701399"), prediction(), Hl7Config(), "C", now=NOW)
    assert oru._shape_checks.cache_info().hits == hits + 1
    with pytest.raises(OruBuildError, match="^OBX-5: value longer"):
        build_oru(ecg(study_instance_uid="1" * 200), prediction(), Hl7Config(), "C", now=NOW)


@pytest.mark.parametrize(
    "changes",
    [
        {"issuer_of_patient_id": "  "},  # CX with an empty assigning authority
        {"patient_name": "Doe^ ^X"},  # blank given name
        {"error": " "},
        {"study_instance_uid": " "},
        {"acquisition_datetime": "0999"},
    ],  # hl7apy writes this DTM as 999
)
def test_values_hl7apy_would_write_differently_equal_the_reference(changes):
    kw = dict(changes)
    pred = None if "error" in kw else prediction(quality_flags=[" ", "  x  "])
    args = (ecg(**kw), pred, Hl7Config(), "C")
    assert outcome(build_oru, *args) == outcome(build_oru_reference, *args)


# Text with every ER7 delimiter, escapes, control characters, blanks, accents, ideographs and lengths around
# hl7apy's limits.
_PIECES = st.sampled_from(list("aZ09 .-'|^&~\\=éÜ山\x7f\r\n\x0b\x1c\x85\u2028") + ["\\F\\", "  ", "Ørsted"])
_short = st.lists(_PIECES, min_size=1, max_size=8).map("".join)
_long = st.lists(_PIECES, min_size=15, max_size=70).map("".join)
_text = st.one_of(st.none(), _short, _short, _short, _long)
_digits = st.one_of(
    st.none(),
    st.from_regex(r"\A\d{4,14}(\.\d{1,6})?([+-]\d{4})?\Z"),
    st.sampled_from(["19701399", "20240230", "2024-01-02", "20240102030405.123456+0100"]),
)


@pytest.mark.slow  # Hypothesis over every field; the golden cases above run in the fast tier
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    patient_id=_short,
    issuer=_text,
    name=_short,
    birth=_digits,
    sex=st.sampled_from([None, "", "M", "f", " x"]),
    accession=_text,
    placer=_text,
    filler=_text,
    requested=_text,
    study=_text,
    acquired=_digits,
    flags=st.lists(_short, max_size=2),
    findings=st.sets(st.sampled_from(list(PROBS))),
    rejected=st.booleans(),
    demo=st.booleans(),
    charset=st.sampled_from(["UNICODE UTF-8", "8859/1", "ASCII"]),
    pv1=st.booleans(),
)
def test_fast_path_equals_the_reference_for_any_input(
    patient_id,
    issuer,
    name,
    birth,
    sex,
    accession,
    placer,
    filler,
    requested,
    study,
    acquired,
    flags,
    findings,
    rejected,
    demo,
    charset,
    pv1,
):
    e = ecg(
        patient_id=patient_id,
        issuer_of_patient_id=issuer,
        patient_name=name,
        patient_birth_date=birth,
        patient_sex=sex,
        accession_number=accession,
        placer_order_number=placer,
        filler_order_number=filler,
        requested_procedure_id=requested,
        study_instance_uid=study,
        acquisition_datetime=acquired,
        error=(name or "no reason") if rejected else None,
    )
    p = None if rejected else prediction(findings=sorted(findings), quality_flags=flags, demo_model=demo)
    cfg = Hl7Config(charset=charset, include_pv1=pv1)
    assert outcome(build_oru, e, p, cfg, "C1") == outcome(build_oru_reference, e, p, cfg, "C1")
