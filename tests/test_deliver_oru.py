"""ORU^R01 building (no database, no network), parsed back with the independent
python ``hl7`` package."""

from __future__ import annotations

from types import SimpleNamespace

import hl7
import pytest

from gateway import FINDINGS
from gateway.config import Hl7Config
from gateway.deliver.mllp import MllpError, parse_ack
from gateway.deliver.oru import (
    FINDING_SNOMED,
    OruBuildError,
    build_oru,
    dicom_dt_to_hl7,
    dicom_pn_to_xpn,
    escape,
    order_key,
    payload_codec,
)
from gateway.deliver.sender import backoff_delay

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


def obx_rows(msg):
    return [seg for seg in msg.segments("OBX")]


def test_round_trip_of_names_ids_and_order_fields():
    er7 = build_oru(ecg(), prediction(), Hl7Config(), "CTRL1")
    msg = hl7.parse(er7)
    assert msg["MSH.F9"] == "ORU^R01^ORU_R01" or msg["MSH.F9.R1.C2"] == "R01"
    assert (msg["MSH.F10"], msg["MSH.F11"], msg["MSH.F12"], msg["MSH.F18"]) == ("CTRL1", "P", "2.5.1", "UNICODE UTF-8")
    assert (msg["MSH.F3"], msg["MSH.F5"], msg["MSH.F6"]) == ("ECGGW", "EHR", "HOSPITAL")
    assert msg["PID.F3.R1.C1"] == "12^3"
    assert msg["PID.F3.R1.C4"] == "HOSP"
    # DICOM family^given^middle^prefix -> XPN family^given^middle^suffix^prefix
    assert [msg[f"PID.F5.R1.C{i}"] for i in (1, 2, 3, 4, 5)] == ["O'Brien", "Anne-Marie", "", "", "Dr|x&y"]
    assert (msg["PID.F7"], msg["PID.F8"]) == ("19700101", "F")
    assert msg["OBR.F18"] == "ACC~1\\2"
    assert (msg["ORC.F2"], msg["OBR.F2"], msg["ORC.F3"], msg["OBR.F3"]) == ("PL|1", "PL|1", "FI&1", "FI&1")
    assert msg["OBR.F4"] == "11524-6^EKG study^LN" or msg["OBR.F4.R1.C1"] == "11524-6"
    assert (msg["OBR.F7"], msg["OBR.F25"], msg["OBR.F19"]) == ("20240102030405.1234+0100", "F", "RP1")
    assert not any(s[0][0] == "PV1" for s in msg)


def test_observations_probabilities_findings_model_and_study():
    er7 = build_oru(ecg(), prediction(quality_flags=["noisy V1"]), Hl7Config(), "C")
    rows = obx_rows(hl7.parse(er7))
    assert [str(r[1]) for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    nm = [r for r in rows if str(r[2]) == "NM"]
    assert [str(r[3][0][0]) for r in nm] == [f"{c.upper()}_PROB" for c in FINDINGS]
    assert all(str(r[3][0][2]) == "L" for r in nm)
    assert [float(str(r[5])) for r in nm] == [round(PROBS[c], 4) for c in FINDINGS]
    cwe = [r for r in rows if str(r[2]) == "CWE"]
    # model output order, not the order of the findings list
    assert [(str(r[3][0][0]), str(r[5][0][0]), str(r[5][0][2]), str(r[8])) for r in cwe] == [
        ("8601-7", FINDING_SNOMED["1dAVb"], "SCT", "A"), ("8601-7", FINDING_SNOMED["AF"], "SCT", "A")]
    by_code = {str(r[3][0][0]): str(r[5]) for r in rows if str(r[2]) == "ST"}
    assert by_code["QUALITY"] == "noisy V1"
    assert by_code["MODEL_SHA256"] == "ab" * 32
    assert by_code["113014"] == "1.2.840.1.2"
    assert "MODEL_DEMO" not in by_code
    assert all(str(r[11]) == "F" for r in rows)


def test_demo_model_is_marked_and_processing_id_is_d():
    msg = hl7.parse(build_oru(ecg(), prediction(demo_model=True), Hl7Config(), "C"))
    assert msg["MSH.F11"] == "D"
    assert any(str(r[3][0][0]) == "MODEL_DEMO" and "NOT FOR CLINICAL USE" in str(r[5]) for r in obx_rows(msg))


def test_no_finding_is_one_statement():
    rows = obx_rows(hl7.parse(build_oru(ecg(), prediction(findings=[]), Hl7Config(), "C")))
    impressions = [r for r in rows if str(r[3][0][0]) == "8601-7"]
    assert len(impressions) == 1
    assert str(impressions[0][2]) == "ST" and str(impressions[0][8]) == "N"
    assert "None of 1dAVb, RBBB, LBBB, SB, AF, ST" in str(impressions[0][5])


def test_rejected_ecg_carries_the_reason_instead_of_findings():
    msg = hl7.parse(build_oru(ecg(status="rejected", error="only 3 leads & no V1|V2"), None, Hl7Config(), "C"))
    rows = obx_rows(msg)
    assert not [r for r in rows if str(r[2]) in ("NM", "CWE")]
    text = [r for r in rows if str(r[3][0][0]) == "8601-7"]
    assert len(text) == 1
    assert msg.unescape(str(text[0][5])) == "ECG could not be analysed: only 3 leads & no V1|V2"
    assert msg["PID.F3.R1.C1"] == "12^3"


def test_configured_codes_pv1_and_order_code():
    cfg = Hl7Config(include_pv1=True, pv1_patient_class="E", order_code="34534-8^12 lead EKG panel^LN",
                    probability_coding_system="99ECG", probability_codes={"AF": "AFIB-P"},
                    sending_application="GW^1.2.3^ISO")
    msg = hl7.parse(build_oru(ecg(), prediction(), cfg, "C"))
    assert msg["PV1.F2"] == "E"
    assert msg["OBR.F4.R1.C1"] == "34534-8"
    assert msg["MSH.F3.R1.C2"] == "1.2.3"
    nm = {str(r[3][0][0]): str(r[3][0][2]) for r in obx_rows(msg) if str(r[2]) == "NM"}
    assert nm["AFIB-P"] == "99ECG" and nm["RBBB_PROB"] == "99ECG"


@pytest.mark.parametrize(
    "charset, name, family, msh18",
    [("UNICODE UTF-8", "Müller^Zoë", "Müller", "UNICODE UTF-8"),
     ("8859/1", "Müller^Zoë", "Müller", "8859/1"),
     ("ASCII", "Müller^Zoë", "Muller", "ASCII")],
)
def test_non_ascii_names_in_the_configured_charset(charset, name, family, msh18):
    er7 = build_oru(ecg(patient_name=name), prediction(), Hl7Config(charset=charset), "C")
    msg = hl7.parse(er7)
    assert msg["MSH.F18"] == msh18
    assert msg["PID.F5.R1.C1"] == family
    er7.encode(payload_codec(er7))  # the sender's encoding of this payload cannot fail


def test_name_not_representable_in_charset_is_a_clear_error():
    with pytest.raises(OruBuildError, match=r"PID-5: characters not representable in MSH-18 charset 'ASCII'"):
        build_oru(ecg(patient_name="山田^太郎"), prediction(), Hl7Config(charset="ASCII"), "C")


@pytest.mark.parametrize(
    "changes, expected",
    [({"patient_id": None}, "PID-3: the ECG has no Patient ID"),
     ({"issuer_of_patient_id": "SECRET-ISSUER-" + "X" * 40}, "PID-3"),
     ({"accession_number": "SECRET" * 40}, "OBR-18")],
)
def test_invalid_ecg_raises_naming_the_field_not_the_value(changes, expected):
    with pytest.raises(OruBuildError) as exc:
        build_oru(ecg(**changes), prediction(), Hl7Config(), "C")
    assert expected in str(exc.value)
    assert "SECRET" not in str(exc.value)


@pytest.mark.parametrize("bad", [None, 1.5, float("nan"), "0.3"])
def test_bad_probability_is_an_error(bad):
    probs = dict(PROBS, AF=bad)
    with pytest.raises(OruBuildError, match="probability of AF"):
        build_oru(ecg(), prediction(probabilities=probs), Hl7Config(), "C")


def test_rejected_without_reason_and_no_prediction_is_an_error():
    with pytest.raises(OruBuildError, match="no prediction"):
        build_oru(ecg(error=None), None, Hl7Config(), "C")


def test_escape_handles_every_delimiter_and_literal_escape_sequences():
    assert escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    # text that already looks like an escape sequence is escaped too
    assert escape("\\H\\") == "\\E\\H\\E\\"


@pytest.mark.parametrize(
    "dt, ts",
    [("20240102030405.123456+0100", "20240102030405.1234+0100"), ("20240102030405", "20240102030405"),
     ("202401020304", "202401020304"), ("2024", "2024"), ("20240102030405.5", "20240102030405.5"),
     ("", ""), (None, ""), ("not a date", ""), ("2024-01-02", "")],
)
def test_dicom_dt_to_hl7(dt, ts):
    assert dicom_dt_to_hl7(dt) == ts


@pytest.mark.parametrize(
    "pn, xpn",
    [("Doe^John^Q^Dr^Jr", "Doe^John^Q^Jr^Dr"), ("Doe", "Doe"), ("", ""), (None, ""),
     ("Yamada^Tarou=山田^太郎", "Yamada^Tarou"), ("=山田^太郎", "山田^太郎"), ("A^B^^^III", "A^B^^III")],
)
def test_pn_to_xpn(pn, xpn):
    assert dicom_pn_to_xpn(pn, "UNICODE UTF-8") == xpn


def test_order_key_is_the_patient_or_the_sop_instance():
    assert order_key(ecg()) == "HOSP|12^3"
    assert order_key(ecg(issuer_of_patient_id=None)) == "|12^3"
    assert order_key(ecg(patient_id="")) == "sop:1.2.840.1.3"


def test_parse_ack_any_version_and_bad_acks():
    ack = parse_ack("MSH|^~\\&|EHR|H|GW|G|2024||ACK|X|P|2.3\rMSA|AE|C1^x|bad PID\r")
    assert (ack.code, ack.control_id, ack.text) == ("AE", "C1", "bad PID")
    with pytest.raises(MllpError, match="no MSA"):
        parse_ack("MSH|^~\\&|EHR|H|GW|G|2024||ACK|X|P|2.3\r")
    with pytest.raises(MllpError, match="MSH"):
        parse_ack("garbage")


def test_backoff_is_exponential_and_capped():
    cfg = Hl7Config(backoff_initial_s=1, backoff_max_s=10)
    assert [backoff_delay(n, cfg) for n in (1, 2, 3, 4, 5, 6, 1000)] == [1, 2, 4, 8, 10, 10, 10]


@pytest.mark.parametrize(
    "toml, expected",
    [("[hl7.probability_codes]\nAFIB = \"X\"\n", "hl7.probability_codes: unknown finding 'AFIB'"),
     ('[hl7]\nprobability_coding_system = "L^X"\n', "hl7.probability_coding_system: String should match pattern"),
     ('[hl7]\ntls_cert = "{cert}"\n', "hl7: tls_cert and tls_key go together")],
)
def test_bad_hl7_config_is_one_line_naming_the_key(tmp_path, toml, expected):
    from gateway.config import ConfigError, load_config

    cert = tmp_path / "c.pem"
    cert.write_text("x")
    path = tmp_path / "g.toml"
    path.write_text(toml.replace("{cert}", str(cert)))
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_probability_codes_left_out_keep_their_default():
    cfg = Hl7Config(probability_codes={"AF": "AFIB-P"})
    assert cfg.probability_codes == {"1dAVb": "1DAVB_PROB", "RBBB": "RBBB_PROB", "LBBB": "LBBB_PROB",
                                     "SB": "SB_PROB", "AF": "AFIB-P", "ST": "ST_PROB"}
