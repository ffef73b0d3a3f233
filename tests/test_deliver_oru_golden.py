"""build_oru's ER7 is frozen byte for byte: golden messages generated from the
hl7apy field-by-field implementation (before the fast path), with the message
time pinned through ``now=``.

Regenerate (only when a change of output is intended and reviewed):
    ORU_GOLDEN_REGENERATE=1 .venv/bin/pytest -q tests/test_deliver_oru_golden.py
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.config import Hl7Config
from gateway.deliver.oru import build_oru

GOLDEN = Path(__file__).parent / "fixtures" / "oru_golden"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
PROBS = {"1dAVb": 0.61234567, "RBBB": 0.01, "LBBB": 0.00012, "SB": 0.3, "AF": 0.95, "ST": 0.1}


def ecg(**kw):
    values = dict(
        patient_id="12^3", issuer_of_patient_id="HOSP", patient_name="O'Brien^Anne-Marie^^Dr|x&y",
        patient_birth_date="19700101", patient_sex="F", accession_number="ACC~1\\2", placer_order_number="PL|1",
        filler_order_number="FI&1", requested_procedure_id="RP1", study_instance_uid="1.2.840.1.2",
        acquisition_datetime="20240102030405.123456+0100", error=None, sop_instance_uid="1.2.840.1.3", id=7,
    )
    values.update(kw)
    return SimpleNamespace(**values)


def prediction(**kw):
    values = dict(probabilities=dict(PROBS), findings=["AF", "1dAVb"], quality_flags=[], model_sha256="ab" * 32,
                  demo_model=False)
    values.update(kw)
    return SimpleNamespace(**values)


#: name -> (ecg, prediction or None, config, control id)
CASES = {
    "processed_findings_special_chars": (ecg(), prediction(), Hl7Config(), "CTRL1"),
    "processed_no_findings_quality_flags": (
        ecg(patient_id="P-77", patient_name="Doe^John^Q^Dr^Jr", patient_sex="m"),
        prediction(findings=[], quality_flags=["noisy V1", "lead off|V2^&~\\x"],
                   probabilities={k: 0.0 for k in PROBS}),
        Hl7Config(), "C2"),
    "rejected_with_reason": (
        ecg(status="rejected", error="only 3 leads & no V1|V2"), None, Hl7Config(), "REJ-1"),
    "demo_model_pv1_configured_codes": (
        ecg(patient_sex="X", acquisition_datetime="202401020304"),
        prediction(demo_model=True, findings=["1dAVb", "RBBB", "LBBB", "SB", "AF", "ST"],
                   probabilities={k: 1.0 for k in PROBS}, model_sha256="0123456789abcdef" * 4),
        Hl7Config(include_pv1=True, pv1_patient_class="E", order_code="34534-8^12 lead EKG panel^LN",
                  probability_coding_system="99ECG", probability_codes={"AF": "AFIB-P"},
                  sending_application="GW^1.2.3^ISO", sending_facility="Cardio Lab", receiving_application="EHR",
                  receiving_facility="H1^2.16.1^ISO"),
        "12345678901234567890"),
    "missing_optional_fields": (
        ecg(issuer_of_patient_id=None, patient_name="Doe", patient_birth_date=None, patient_sex=None,
            accession_number=None, placer_order_number=None, filler_order_number=None, requested_procedure_id=None,
            study_instance_uid=None, acquisition_datetime=None),
        prediction(findings=["SB"]), Hl7Config(), "C5"),
    "malformed_optional_values_dropped": (
        ecg(patient_birth_date="1970-01-01", patient_sex="  ", acquisition_datetime="not a date",
            patient_name="Doe^^^^", accession_number="   ", placer_order_number=" P1 ", filler_order_number=""),
        prediction(findings=["ST", "AF", "unknown"]), Hl7Config(include_pv1=True), "C6"),
    "non_ascii_utf8": (
        ecg(patient_name="Müller^Zoë", issuer_of_patient_id="Hôpital", accession_number="Ä1",
            requested_procedure_id="山田"),
        prediction(), Hl7Config(), "C7"),
    "non_ascii_ideographic_utf8": (
        ecg(patient_name="=山田^太郎=やまだ^たろう"), prediction(), Hl7Config(), "C8"),
    "non_ascii_latin1": (
        ecg(patient_name="Müller^Zoë", issuer_of_patient_id="Hôpital"), prediction(),
        Hl7Config(charset="8859/1"), "C9"),
    "non_ascii_ascii_folded": (
        ecg(patient_name="Müller^Zoë^Ångström", issuer_of_patient_id="Hôpital",
            error="Signal à revoir"), None, Hl7Config(charset="ASCII"), "C10"),
    "rejected_latin1_rounding": (
        ecg(error="Überlauf: lead I clipped", patient_id="A\\B", study_instance_uid="2.25.99"), None,
        Hl7Config(charset="8859/1", include_pv1=True), "C11"),
    "probabilities_rounding_half": (
        ecg(acquisition_datetime="20240102030405.5-0500"),
        prediction(probabilities={"1dAVb": 0.00005, "RBBB": 0.99995, "LBBB": 0.12345, "SB": 1, "AF": 0,
                                  "ST": 0.5}, findings=["RBBB"]),
        Hl7Config(), "C12"),
}


def build(name: str) -> str:
    ecg_, prediction_, cfg, control_id = CASES[name]
    return build_oru(ecg_, prediction_, cfg, control_id, now=NOW)


@pytest.mark.skipif(not os.environ.get("ORU_GOLDEN_REGENERATE"), reason="set ORU_GOLDEN_REGENERATE=1 to rewrite")
def test_regenerate_golden_files():
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        (GOLDEN / f"{name}.er7").write_bytes(build(name).encode("utf-8"))


def test_every_case_has_a_golden_file_and_no_file_is_orphaned():
    assert sorted(p.stem for p in GOLDEN.glob("*.er7")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_is_byte_identical_to_golden(name):
    expected = (GOLDEN / f"{name}.er7").read_bytes().decode("utf-8")
    assert build(name) == expected


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
