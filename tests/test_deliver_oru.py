"""ORU^R01 building (no database, no network), parsed back with the independent
python ``hl7`` package."""

from __future__ import annotations

from types import SimpleNamespace

import hl7
import pytest

from gateway import FINDINGS
from gateway.config import Hl7Config
from gateway.deliver.mllp import MllpError, frame_problem, parse_ack
from gateway.deliver.oru import (
    MORE,
    REASON_LIMIT,
    OruBuildError,
    OruOptions,
    build_oru,
    dicom_dt_to_hl7,
    dicom_pn_to_xpn,
    escape,
    escape_bounded,
    order_key,
    payload_codec,
    short_reason,
)
from gateway.deliver.sender import backoff_delay

PROBS = {"1dAVb": 0.61234567, "RBBB": 0.01, "LBBB": 0.00012, "SB": 0.3, "AF": 0.95, "ST": 0.1}


def ecg(**kw):
    values = dict(
        patient_id="12^3",
        issuer_of_patient_id="HOSP",
        patient_name="O'Brien^Anne-Marie^^Dr|x&y",
        patient_birth_date="19700101",
        patient_sex="F",
        accession_number="ACC~1\\2",
        placer_order_number="PL|1",
        filler_order_number="FI&1",
        requested_procedure_id="RP1",
        study_instance_uid="1.2.840.1.2",
        acquisition_datetime="20240102030405.123456+0100",
        error=None,
        sop_instance_uid="1.2.840.1.3",
        id=7,
    )
    values.update(kw)
    return SimpleNamespace(**values)


def prediction(**kw):
    values = dict(
        probabilities=dict(PROBS), findings=["AF", "1dAVb"], quality_flags=[], model_sha256="ab" * 32, demo_model=False
    )
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
        ("8601-7", "270492004", "SCT", "A"),
        ("8601-7", "164889003", "SCT", "A"),
    ]  # SNOMED CT: 1dAVb, AF
    by_code = {str(r[3][0][0]): str(r[5]) for r in rows if str(r[2]) == "ST"}
    assert by_code["QUALITY"] == "noisy V1"
    assert by_code["MODEL_SHA256"] == "ab" * 32
    assert by_code["113014"] == "1.2.840.1.2"
    assert "MODEL_DEMO" not in by_code
    assert all(str(r[11]) == "F" for r in rows)


def test_demo_model_is_marked_and_processing_id_is_d():
    msg = hl7.parse(build_oru(ecg(), prediction(demo_model=True), Hl7Config(), "C"))
    assert msg["MSH.F11"] == "D"
    # issue 17: a demo model's read is never final, whatever the caller asked for
    assert msg["OBR.F25"] == "P" and {str(r[11]) for r in obx_rows(msg)} == {"P"}
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
    cfg = Hl7Config(
        include_pv1=True,
        pv1_patient_class="E",
        order_code="34534-8^12 lead EKG panel^LN",
        probability_coding_system="99ECG",
        probability_codes={"AF": "AFIB-P"},
        sending_application="GW^1.2.3^ISO",
    )
    msg = hl7.parse(build_oru(ecg(), prediction(), cfg, "C"))
    assert msg["PV1.F2"] == "E"
    assert msg["OBR.F4.R1.C1"] == "34534-8"
    assert msg["MSH.F3.R1.C2"] == "1.2.3"
    nm = {str(r[3][0][0]): str(r[3][0][2]) for r in obx_rows(msg) if str(r[2]) == "NM"}
    assert nm["AFIB-P"] == "99ECG" and nm["RBBB_PROB"] == "99ECG"


@pytest.mark.parametrize(
    "charset, name, family, msh18",
    [
        ("UNICODE UTF-8", "Müller^Zoë", "Müller", "UNICODE UTF-8"),
        ("8859/1", "Müller^Zoë", "Müller", "8859/1"),
        ("ASCII", "Müller^Zoë", "Muller", "ASCII"),
    ],
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
    [
        ({"patient_id": None}, "PID-3: the ECG has no Patient ID"),
        ({"patient_id": "SECRET" * 40}, "PID-3"),
        ({"accession_number": "SECRET" * 40}, "OBR-18"),
    ],
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
    [
        ("20240102030405.123456+0100", "20240102030405.1234+0100"),
        ("20240102030405", "20240102030405"),
        ("202401020304", "202401020304"),
        ("2024", "2024"),
        ("20240102030405.5", "20240102030405.5"),
        ("", ""),
        (None, ""),
        ("not a date", ""),
        ("2024-01-02", ""),
    ],
)
def test_dicom_dt_to_hl7(dt, ts):
    assert dicom_dt_to_hl7(dt) == ts


@pytest.mark.parametrize(
    "pn, xpn",
    [
        ("Doe^John^Q^Dr^Jr", "Doe^John^Q^Jr^Dr"),
        ("Doe", "Doe"),
        ("", ""),
        (None, ""),
        ("Yamada^Tarou=山田^太郎", "Yamada^Tarou"),
        ("=山田^太郎", "山田^太郎"),
        ("A^B^^^III", "A^B^^III"),
    ],
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
    [
        ('[hl7.probability_codes]\nAFIB = "X"\n', "hl7.probability_codes: unknown finding 'AFIB'"),
        ('[hl7]\nprobability_coding_system = "L^X"\n', "hl7.probability_coding_system: String should match pattern"),
        ('[hl7]\ntls_cert = "{cert}"\n', "hl7: tls_cert and tls_key go together"),
    ],
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
    assert cfg.probability_codes == {
        "1dAVb": "1DAVB_PROB",
        "RBBB": "RBBB_PROB",
        "LBBB": "LBBB_PROB",
        "SB": "SB_PROB",
        "AF": "AFIB-P",
        "ST": "ST_PROB",
    }


# --- issue 13 §1: no control character reaches the wire ---------------------------------------------------------

ATTACK_LABEL = "A\x1c\r\x0bMSH!#$%*!LAB!LAB!EHR!HOSPITAL!20260101!!ADT#A08!INJ1!P!2.5.1\rPID!1!!666666!!Hacked#Ed\rZ"
CONTROLS = "".join(map(chr, range(0x20))) + "\x7f" + "".join(map(chr, range(0x80, 0xA0))) + "\u2028\u2029\ud800"


def segment_types(er7):
    return [s[:3] for s in er7.split("\r")]


def test_escape_replaces_every_control_character_and_escapes_delimiters():
    assert escape("a" + CONTROLS + "b") == "a" + "?" * len(CONTROLS) + "b"
    assert escape("x\r|\x0b^\x1c&~\\") == "x?\\F\\?\\S\\?\\T\\\\R\\\\E\\"


def test_escape_bounded_never_cuts_inside_an_escape_sequence():
    assert escape_bounded("ab|", 5) == ("ab\\F\\", False)
    assert escape_bounded("ab|", 4) == ("ab", True)
    assert escape_bounded("a |b", 4) == ("a", True)  # trailing blank of a cut dropped
    assert escape_bounded("|" * 67, 199) == ("\\F\\" * 66, True)


@pytest.mark.parametrize(
    "field",
    [
        "patient_id",
        "issuer_of_patient_id",
        "patient_name",
        "accession_number",
        "placer_order_number",
        "filler_order_number",
        "requested_procedure_id",
        "study_instance_uid",
        "error",
    ],
)
def test_control_characters_in_any_ecg_value_never_reach_the_message(field):
    value = "V" + CONTROLS + "MSH|^~\\&|X\rPID|1||666666"
    rejected = field == "error"
    er7 = build_oru(ecg(**{field: value}), None if rejected else prediction(quality_flags=[value]), Hl7Config(), "C")
    assert not any(ch in er7.replace("\r", "") for ch in CONTROLS)
    msg = hl7.parse(er7)
    assert len(msg.segments("MSH")) == 1 and len(msg.segments("PID")) == 1
    assert segment_types(er7)[:5] == ["MSH", "PID", "ORC", "OBR", "OBX"]
    assert frame_problem(er7.encode("utf-8")) is None


def test_the_attack_label_through_normalise_is_one_message_with_the_reason_quoted():
    """The attack of issue 13 §1 as far as the builder: the worker's reason quotes the label repr-style."""
    import ecg_variants as v
    from gateway.normalise import NormaliseError, normalise_dataset

    for label in (ATTACK_LABEL, ATTACK_LABEL.replace("\x1c", "").replace("\x0b", "")):  # and CR only
        ds = v.load_sample()
        channel = v.rhythm(ds).ChannelDefinitionSequence[0]
        del channel.ChannelSourceSequence
        del channel.ChannelSensitivityUnitsSequence
        channel.ChannelLabel = label
        with pytest.raises(NormaliseError) as exc:
            normalise_dataset(ds)
        reason = str(exc.value)
        assert reason.isprintable() and reason.startswith("channel 1 ('A")
        er7 = build_oru(ecg(error=reason), None, Hl7Config(), "C")
        assert segment_types(er7) == ["MSH", "PID", "ORC", "OBR", "OBX", "OBX"]
        msg = hl7.parse(er7)
        assert msg["MSH.F10"] == "C" and msg["PID.F3.R1.C1"] == "12^3"
        [impression] = [r for r in msg.segments("OBX") if str(r[3][0][0]) == "8601-7"]
        sent, full = msg.unescape(str(impression[5])), "ECG could not be analysed: " + reason
        assert sent == full or (sent.endswith(MORE) and full.startswith(sent[: -len(MORE)]))
        assert "\\x1c\\r\\x0bMSH" in sent or "\\rMSH" in sent  # the label, readable, repr-style


def test_frame_problem_refuses_what_would_break_the_frame_or_the_segments():
    good = build_oru(ecg(), prediction(), Hl7Config(), "C").encode()
    assert frame_problem(good) is None and frame_problem(good + b"\r") is None
    assert "0x0B" in frame_problem(good.replace(b"|F|", b"|\x0b|", 1))
    assert "0x1C" in frame_problem(good + b"\x1c\rMSH|^~\\&|X")
    assert "0x0B" in frame_problem(good + b"\x1c\r\x0bMSH|^~\\&|X")
    assert "does not end a segment" in frame_problem(good.replace(b"ORC|RE", b"ORC|R\rE!", 1))
    assert "second MSH" in frame_problem(good + b"\rMSH|^~\\&|LAB")
    assert "control byte 0x0A" in frame_problem(good.replace(b"\r", b"\n", 1))
    assert "MSH" in frame_problem(b"PID|1")


# --- issue 13 §3: lengths are handled, never a failed message because a DICOM value was long -----------------


def test_short_reason_keeps_whole_problems_then_points_to_the_admin_view():
    flat = "12 of 12 leads unusable: " + "; ".join(
        f"{lead}: flat (peak-to-peak 0.000 mV)" for lead in ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2")
    )
    out = short_reason(flat)
    assert len(out) <= REASON_LIMIT and out.endswith(MORE)
    assert out.startswith("12 of 12 leads unusable: I: flat (peak-to-peak 0.000 mV);")
    assert short_reason("recording shorter than 8 s") == "recording shorter than 8 s"
    one_long = short_reason("x|" * 200)  # no "; " to cut at: the first problem is cut, escapes kept whole
    assert len(one_long) <= REASON_LIMIT and one_long.endswith("x" + MORE) and one_long.count("\\F\\") > 10


@pytest.mark.parametrize("reason", ["e" * 200, "|" * 400, "12 of 12 leads unusable: " + "; ".join(["I: flat"] * 80)])
def test_any_long_reason_is_sent_short(reason, caplog):
    er7 = build_oru(ecg(error=reason), None, Hl7Config(), "C")
    obx5 = hl7.parse(er7).segments("OBX")[0][5]
    assert len(str(obx5)) <= len("ECG could not be analysed: ") + REASON_LIMIT
    assert "sent shortened" in caplog.text and "ecg 7" in caplog.text


def test_long_issuer_is_mapped_else_cut_with_a_warning_naming_no_phi(caplog):
    long = "UNIVERSITY-HOSPITAL-X"
    mapped = hl7.parse(
        build_oru(ecg(issuer_of_patient_id=long), prediction(), Hl7Config(assigning_authorities={long: "UHX"}), "C")
    )
    assert mapped["PID.F3.R1.C4"] == "UHX" and caplog.text == ""
    cut = hl7.parse(
        build_oru(ecg(issuer_of_patient_id=long, patient_name="Secretname^Jo"), prediction(), Hl7Config(), "C")
    )
    assert cut["PID.F3.R1.C4"] == "UNIVERSITY-HOSPITAL-" and cut["PID.F3.R1.C1"] == "12^3"
    [record] = caplog.records
    assert record.levelname == "WARNING" and "'UNIVERSITY-HOSPITAL-X'" in record.getMessage()
    assert "assigning_authorities" in record.getMessage()
    assert "12^3" not in caplog.text and "Secretname" not in caplog.text
    # an issuer with delimiters is cut on its escaped form, never inside an escape sequence
    er7 = build_oru(ecg(issuer_of_patient_id="AB&CD" * 5), prediction(), Hl7Config(), "C")
    assert hl7.parse(er7)["PID.F3.R1.C4"] == "AB&CD" * 2 + "AB&C"  # "AB\\T\\CD" x2 + "AB\\T\\C": 20


def test_long_name_component_is_cut_with_a_warning(caplog):
    msg = hl7.parse(build_oru(ecg(patient_name="Q" * 250 + "^Jo"), prediction(), Hl7Config(), "C"))
    assert msg["PID.F5.R1.C1"] == "Q" * 199 and msg["PID.F5.R1.C2"] == "Jo"
    assert "PID-5: a name component longer than 199" in caplog.text and "QQQ" not in caplog.text


@pytest.mark.parametrize(
    "field, path",
    [
        ("patient_id", "PID.F3.R1.C1"),
        ("accession_number", "OBR.F18"),
        ("placer_order_number", "ORC.F2"),
        ("filler_order_number", "ORC.F3"),
        ("requested_procedure_id", "OBR.F19"),
    ],
)
def test_identifiers_the_receiver_accepts_always_fit(field, path):
    # the receiver keeps at most 64 characters of a header value; escaping at most triples them
    worst = "|^&~\\" * 12 + "|^&~"
    assert len(worst) == 64
    msg = hl7.parse(build_oru(ecg(**{field: worst}), prediction(), Hl7Config(), "C"))
    assert msg[path] == worst  # (python-hl7 unescapes)


def test_long_quality_flag_is_cut_and_marked():
    er7 = build_oru(ecg(), prediction(quality_flags=["q" * 300]), Hl7Config(), "C")
    [flag] = [r for r in hl7.parse(er7).segments("OBX") if str(r[3][0][0]) == "QUALITY"]
    assert str(flag[5]) == "q" * (199 - len(MORE)) + MORE


def test_free_text_outside_the_charset_is_replaced_identity_is_an_error():
    er7 = build_oru(ecg(error="Signal 山田 à revoir"), None, Hl7Config(charset="ASCII"), "C")
    assert "Signal ?? a revoir" in er7
    with pytest.raises(OruBuildError, match="PID-3: characters not representable"):
        build_oru(ecg(patient_id="山田"), prediction(), Hl7Config(charset="ASCII"), "C")


# --- issue 14 §10: filler order number, PID-3.5, result status ------------------------------------------------


def test_filler_order_number_is_the_carts_else_the_gateways_id_in_its_namespace():
    assert hl7.parse(build_oru(ecg(), prediction(), Hl7Config(), "C"))["ORC.F3"] == "FI&1"
    own = hl7.parse(build_oru(ecg(filler_order_number=None, id=123), prediction(), Hl7Config(), "C"))
    assert (own["ORC.F3.R1.C1"], own["ORC.F3.R1.C2"], own["OBR.F3.R1.C1"], own["OBR.F3.R1.C2"]) == (
        "123",
        "ECGGW",
        "123",
        "ECGGW",
    )
    ns = hl7.parse(
        build_oru(
            ecg(filler_order_number="  ", id=5),
            prediction(),
            Hl7Config(filler_namespace="CARDIO"),
            "C",
            options=OruOptions(filler_id="4"),
        )
    )
    assert (ns["OBR.F3.R1.C1"], ns["OBR.F3.R1.C2"]) == ("4", "CARDIO")
    with pytest.raises(OruBuildError, match="ORC-3"):
        build_oru(ecg(filler_order_number=None, id=None), prediction(), Hl7Config(), "C")


@pytest.mark.parametrize(
    "type_code, issuer, cx",
    [
        ("MR", "HOSP", "12\\S\\3^^^HOSP^MR"),
        ("PI", None, "12\\S\\3^^^^PI"),
        ("", "HOSP", "12\\S\\3^^^HOSP"),
        ("", None, "12\\S\\3"),
    ],
)
def test_pid_3_5_identifier_type_code(type_code, issuer, cx):
    er7 = build_oru(ecg(issuer_of_patient_id=issuer), prediction(), Hl7Config(identifier_type_code=type_code), "C")
    assert er7.split("\r")[1].split("|")[3] == cx


def test_a_correction_is_obr_25_and_obx_11_c():
    msg = hl7.parse(build_oru(ecg(), prediction(), Hl7Config(), "C", options=OruOptions(result_status="C")))
    assert msg["OBR.F25"] == "C" and {str(r[11]) for r in msg.segments("OBX")} == {"C"}


@pytest.mark.parametrize("name", [None, "", "^^", " ^ ", "=^"])
def test_an_ecg_without_a_name_is_sent_with_name_type_unspecified(name):
    msg = hl7.parse(build_oru(ecg(patient_name=name), prediction(), Hl7Config(), "C"))
    assert [msg[f"PID.F5.R1.C{i}"] for i in range(1, 8)] == ["", "", "", "", "", "", "U"]
    assert msg["PID.F3.R1.C1"] == "12^3"
