"""The normalise building blocks: lead codes, units, G.711, the DICOM encoder, quality."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest

from gateway.normalise import OUTPUT_LEADS, NormaliseError, normalise_dataset
from gateway.normalise.decode import G711_TABLES
from gateway.normalise.encode import GENERAL_32BIT_ECG, make_ecg_dataset
from gateway.normalise.leads import identify_lead, lead_from_code, lead_from_text
from gateway.normalise.quality import clipped_fraction, signal_flags
from gateway.normalise.resample import plan_window, resampling_factors
from gateway.normalise.units import UnknownUnitError, millivolts_per_unit


@pytest.mark.parametrize(
    "code, lead",
    [
        ("2:1", "I"),
        ("5.6.3-9-1", "I"),
        ("2:2", "II"),
        ("5.6.3-9-8", "V6"),
        ("2:61", "III"),
        ("5.6.3-9-64", "aVF"),
        ("2:65", "-aVR"),
        ("131073", "I"),
        ("131134", "aVR"),
        (" 2:3 ", "V1"),
    ],
)
def test_lead_codes_in_both_schemes(code, lead):
    assert lead_from_code(code) == (True, lead)


@pytest.mark.parametrize("code", ["2:31", "2:38", "2:111", "5.6.3-9-114", "131103"])
def test_derived_lead_codes_are_unknown_not_guessed(code):
    assert lead_from_code(code) == (True, None)
    # The text of such a channel often names a lead; the code decides.
    assert identify_lead(code, "MDC", "Lead V1 (derived)", "V1").lead is None


@pytest.mark.parametrize(
    "text, lead",
    [
        ("Lead I (Einthoven)", "I"),
        ("Lead II", "II"),
        ("lead iii", "III"),
        ("aVR", "aVR"),
        ("AVL", "aVL"),
        ("Lead_aVF", "aVF"),
        ("V1", "V1"),
        ("v6", "V6"),
        ("-aVR", "-aVR"),
        ("Lead V1 derived", None),
        ("V7", None),
        ("Lead IV", None),
        ("", None),
    ],
)
def test_lead_text(text, lead):
    assert lead_from_text(text) == lead


def test_identify_lead_order_of_evidence():
    assert identify_lead("5.6.3-9-2", "SCPECG", "Lead I", "V1").identified_by == "code"
    assert identify_lead("", "", "Lead III", "V1") == identify_lead("", "", "Lead III", "").__class__(
        "III", "", "code meaning"
    )
    assert identify_lead("X99", "99LOCAL", "nonsense", "V4").identified_by == "channel label"
    assert identify_lead("X99", "99LOCAL", "", "").lead is None


@pytest.mark.parametrize(
    "unit, factor",
    [
        ("uV", 1e-3),
        ("mV", 1.0),
        ("V", 1e3),
        ("nV", 1e-6),
        ("10*-6.V", 1e-3),
        ("10*-3.V", 1.0),
        ("\u00b5V", 1e-3),
        ("\u03bcV", 1e-3),
    ],
)
def test_units(unit, factor):
    assert millivolts_per_unit(unit) == pytest.approx(factor)


@pytest.mark.parametrize("unit", ["MV", "UV", "mmHg", "", "kV?", "10*x.V", "uv"])
def test_unknown_units_are_errors(unit):
    with pytest.raises(UnknownUnitError, match="unknown channel sensitivity unit"):
        millivolts_per_unit(unit)


def test_g711_tables_match_the_recommendation():
    # Known G.711 points; and, where Python still ships it, audioop's 16-bit expansion.
    assert G711_TABLES["MB"][[0x00, 0x80, 0xFF, 0x7F]].tolist() == [-8031, 8031, 0, 0]
    assert G711_TABLES["AB"][[0xD5, 0x55, 0xAA, 0x2A]].tolist() == [1, -1, 4032, -4032]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import audioop
    except ImportError:
        return
    codes = bytes(range(256))
    np.testing.assert_array_equal(np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2") // 4, G711_TABLES["MB"])
    np.testing.assert_array_equal(np.frombuffer(audioop.alaw2lin(codes, 2), "<i2") // 8, G711_TABLES["AB"])


@pytest.mark.parametrize("interpretation", ["MB", "AB"])
def test_eight_bit_companded_waveform(interpretation):
    table = G711_TABLES[interpretation]
    order = np.argsort(table, kind="stable")
    t = np.arange(5000) / 500
    wave = 1000 * np.sin(2 * np.pi * 1.1 * t)  # in linear G.711 units
    # Nearest 8-bit code for each linear value, per lead (scaled differently).
    linear = np.outer(wave, np.linspace(0.5, 2.0, 12)).clip(table.min(), table.max())
    pos = np.clip(np.searchsorted(table[order], linear), 1, 255)
    nearer = np.where(np.abs(table[order][pos - 1] - linear) <= np.abs(table[order][pos] - linear), pos - 1, pos)
    codes = order[nearer].astype(np.uint8)
    ds = make_ecg_dataset(np.zeros((5000, 12)), 500, OUTPUT_LEADS)
    group = ds.WaveformSequence[0]
    group.WaveformBitsAllocated, group.WaveformSampleInterpretation = 8, interpretation
    group.WaveformData = codes.tobytes()
    group.WaveformPaddingValue = b"\x00"  # code 0 is not used by a sine this small
    for channel in group.ChannelDefinitionSequence:
        channel.WaveformBitsStored = 8
    result = normalise_dataset(ds)  # 1 uV per linear unit: leads peak at 0.5 .. 2 mV
    peaks = np.abs(result.signal[500:3500]).max(axis=0)
    np.testing.assert_allclose(peaks, np.linspace(0.5, 2.0, 12), rtol=0.06)  # 8-bit steps
    assert result.report["source"]["sample_interpretation"] == interpretation


def test_make_ecg_dataset_is_a_complete_writable_file(tmp_path):
    signal = np.zeros((5000, 3))
    signal[:, 0] = np.linspace(-1, 1, 5000)
    signal[0, 1] = 40.0  # beyond int16 at 1 uV: clipped to the range
    ds = make_ecg_dataset(
        signal,
        500,
        ["I", "II", "V1"],
        resolution_uv=1.0,
        code_scheme="MDC",
        patient_id="P1",
        patient_name="Doe^Jane",
        accession_number="A1",
        study_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.5",
        Manufacturer="ACME",
        InstitutionName="General",
    )
    path = tmp_path / "ecg.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID == "1.2.3.5"
    assert (back.PatientID, str(back.PatientName), back.AccessionNumber, back.StudyInstanceUID) == (
        "P1",
        "Doe^Jane",
        "A1",
        "1.2.3.4",
    )
    assert (back.Manufacturer, back.InstitutionName, back.Modality) == ("ACME", "General", "ECG")
    group = back.WaveformSequence[0]
    assert (group.MultiplexGroupLabel, group.SamplingFrequency, group.NumberOfWaveformChannels) == ("RHYTHM", 500, 3)
    assert [c.ChannelSourceSequence[0].CodeValue for c in group.ChannelDefinitionSequence] == ["2:1", "2:2", "2:3"]
    raw = back.waveform_array(0)
    assert raw[0, 1] == 32767 and raw[-1, 0] == 1000 and raw[0, 0] == -1000


def test_make_ecg_dataset_32bit_and_round_trip():
    rng = np.random.default_rng(1)
    signal = rng.normal(0, 0.3, (4000, 12))
    ds = make_ecg_dataset(signal, 400, OUTPUT_LEADS, resolution_uv=0.5, bits=32, sop_class_uid=GENERAL_32BIT_ECG)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert back.SOPClassUID == GENERAL_32BIT_ECG and back.WaveformSequence[0].WaveformSampleInterpretation == "SL"
    result = normalise_dataset(back)  # 400 Hz: no resampling, only 48 + 48 padding
    np.testing.assert_allclose(result.signal[48:-48], signal, atol=0.00025 + 1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"leads": ["I", "II"]}, "does not match 2 leads"),
        ({"bits": 8}, "bits must be 16 or 32"),
        ({"code_scheme": "LOINC"}, "code_scheme must be SCPECG or MDC"),
    ],
)
def test_make_ecg_dataset_rejects_bad_arguments(kwargs, message):
    args = {"signal_mv": np.zeros((10, 3)), "fs": 500, "leads": ["I", "II", "V1"], **kwargs}
    with pytest.raises(ValueError, match=message):
        make_ecg_dataset(**args)


def test_resampling_factors_and_window():
    assert resampling_factors("1000") == (2, 5)
    assert resampling_factors("500") == (4, 5)
    assert resampling_factors("250") == (8, 5)
    assert resampling_factors("240") == (5, 3)
    assert resampling_factors(400) == (1, 1)
    w = plan_window(10000, 1000, 2, 5)
    assert (w.pad_before, w.pad_after, w.source_start, w.source_stop) == (48, 48, 0, 10000)
    w = plan_window(4097 * 5, 2000, 1, 5)  # 4097 output samples: crop 0 before, 1 after
    assert (w.crop_before, w.crop_after, w.offset) == (0, 1, 0)


def test_signal_flags_direct():
    x = np.zeros((3, 100))
    x[1] = np.linspace(-1, 1, 100)
    x[2, 5] = np.nan
    flags, unusable = signal_flags(x, ["A", "B", "C"])
    assert flags == ["A: flat (peak-to-peak 0.000 mV)", "C: non-finite values (1 samples)"]
    assert unusable == {"A", "C"}
    x[1, 50] = 12.5
    flags, unusable = signal_flags(x[1:2], ["B"])
    assert flags == ["B: excessive amplitude (12.5 mV > 10 mV)"] and unusable == {"B"}


def test_clipped_fraction():
    x = (1000 * np.sin(np.linspace(0, 20 * np.pi, 10000))).astype(np.int16)
    assert clipped_fraction(x, (-32768, 32767), 1000, 0.005) == 0.0  # smooth 5 mV peaks: not plateaus
    assert clipped_fraction(np.clip(x, -500, 500), (-32768, 32767), 1000, 0.005) > 0.3  # analog saturation at 2.5 mV
    assert clipped_fraction(np.clip(x, -500, 500), (-32768, 32767), 1000, 0.001) == 0.0  # 0.5 mV plateau: not counted
    assert clipped_fraction(np.clip(x, -2048, 900), (-2048, 900), 1000, 0.00001) > 0  # touches the converter rail
    assert clipped_fraction(np.full(100, 7), (-10, 10), 1000, 1.0) == 0.0  # constant: the flat check speaks
    valid = np.zeros(x.size, bool)
    assert clipped_fraction(x, (-1, 1), 1000, 1.0, valid=valid) == 0.0  # nothing valid to judge


def test_normalise_error_carries_reason_and_report():
    err = NormaliseError("because", {"a": 1})
    assert (str(err), err.reason, err.report) == ("because", "because", {"a": 1, "error": "because"})
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("up, down", [(2, 5), (4, 5), (8, 5), (5, 3), (400, 1999)])
def test_cached_filter_is_scipys_default(up, down):
    from scipy.signal import resample_poly

    from gateway.normalise.resample import _filter

    x = np.random.default_rng(0).normal(size=(2, 3000))
    np.testing.assert_array_equal(
        resample_poly(x, up, down, axis=1, window=_filter(up, down)), resample_poly(x, up, down, axis=1)
    )
