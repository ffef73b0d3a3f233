"""normalise_dataset on pydicom's real ECG and variants built from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian
from scipy.signal import resample_poly

import ecg_variants as v
from gateway.config import NormaliseConfig
from gateway.normalise import OUTPUT_LEADS, NormaliseError, NormaliseParams, normalise_dataset
from gateway.normalise.encode import GENERAL_32BIT_ECG, make_ecg_dataset

LSB_MV = v.SAMPLE_UV_PER_COUNT / 1000


@pytest.fixture(scope="module")
def sample() -> Dataset:
    return v.load_sample()


@pytest.fixture(scope="module")
def reference(sample):
    return normalise_dataset(sample)


def expected_from_sample(sample: Dataset) -> np.ndarray:
    """Independent recipe: pydicom's waveform_array (uV) -> mV -> 400 Hz -> 48 + 48 zeros."""
    mv = sample.waveform_array(0) / 1000.0
    return np.pad(resample_poly(mv, 2, 5, axis=0), ((48, 48), (0, 0)))


def reason(ds: Dataset, params: NormaliseParams = NormaliseParams()) -> NormaliseError:
    with pytest.raises(NormaliseError) as exc:
        normalise_dataset(ds, params)
    return exc.value


# --- the real file ---------------------------------------------------------------------------


def test_sample_shape_units_padding_and_order(sample, reference):
    signal = reference.signal
    assert signal.shape == (4096, 12) and signal.dtype == np.float32 and signal.flags.c_contiguous
    assert (signal[:48] == 0).all() and (signal[-48:] == 0).all()
    assert (signal[48] != 0).any() and (signal[-49] != 0).any()
    lead_ii = signal[:, 1]
    assert 0.5 < lead_ii.max() < 3.0  # R wave in millivolts
    np.testing.assert_allclose(signal, expected_from_sample(sample), atol=1e-5)
    assert reference.quality_flags == []


def test_sample_report_explains_itself(reference):
    r = reference.report
    json.dumps(r)  # stored per ECG as JSON
    assert r["params"] == {
        "gain": 1.0,
        "limb_lead_order": ["I", "II", "III", "aVR", "aVL", "aVF"],
        "min_duration_s": 8.0,
    }
    assert r["multiplex_group"] == {
        "index": 0,
        "label": "RHYTHM",
        "originality": "ORIGINAL",
        "chosen_by": "label RHYTHM",
    }
    assert r["source"]["sampling_frequency_hz"] == 1000 and r["source"]["samples"] == 10000
    assert r["units"] == ["uV"]
    assert r["leads_found"] == list(OUTPUT_LEADS) and r["leads_derived"] == []
    assert r["resample"] == {"from_hz": 1000.0, "to_hz": 400, "up": 2, "down": 5}
    assert r["fit"] == {"pad_before": 48, "pad_after": 48, "crop_before": 0, "crop_after": 0}
    assert r["output_leads"] == list(OUTPUT_LEADS)
    assert r["quality_flags"] == [] and r["unusable_leads"] == [] and r["gaps"] == {}
    assert r["channels"][2]["lead"] == "III" and r["channels"][2]["mv_per_count"] == pytest.approx(LSB_MV)
    assert r["sop_instance_uid"] == "1.3.6.1.4.1.20029.40.20130125105919.5407.1.1"


# --- variants of the real file ---------------------------------------------------------------


@pytest.mark.parametrize("fs, up, down, tolerance_mv", [(500, 4, 5, 0.01), (250, 8, 5, 0.1)])
def test_other_rates_give_the_same_signal(sample, reference, fs, up, down, tolerance_mv):
    result = normalise_dataset(v.with_rate(sample, fs))
    assert result.report["resample"]["up"] == up and result.report["resample"]["down"] == down
    assert result.report["fit"]["pad_before"] == 48
    assert np.abs(result.signal - reference.signal).max() < tolerance_mv
    assert np.corrcoef(result.signal.ravel(), reference.signal.ravel())[0, 1] > 0.999


def test_eight_lead_cart_derives_limb_leads_within_one_lsb(sample, reference):
    result = normalise_dataset(v.eight_lead(sample))
    assert result.report["leads_derived"] == ["III", "aVR", "aVL", "aVF"]
    assert result.report["leads_found"] == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    derived = result.signal[:, 2:6] - reference.signal[:, 2:6]
    assert np.abs(derived).max() <= LSB_MV
    np.testing.assert_array_equal(result.signal[:, [0, 1, *range(6, 12)]], reference.signal[:, [0, 1, *range(6, 12)]])


@pytest.mark.parametrize(
    "build",
    [v.millivolts_with_baseline, v.mdc_codes, v.shuffled, lambda ds: v.shuffled(ds, seed=7), v.general_32bit],
    ids=["mV+baseline", "MDC", "shuffled", "shuffled7", "SL-32bit"],
)
def test_equivalent_encodings_give_identical_input(sample, reference, build):
    result = normalise_dataset(build(sample))
    np.testing.assert_allclose(result.signal, reference.signal, atol=1e-6)


def test_mv_baseline_report_and_32bit_class(sample):
    r = normalise_dataset(v.millivolts_with_baseline(sample, 0.5)).report
    assert r["units"] == ["mV"] and r["channels"][0]["baseline_mv"] == 0.5
    r32 = normalise_dataset(v.general_32bit(sample)).report
    assert r32["sop_class_uid"] == GENERAL_32BIT_ECG
    assert r32["source"]["bits_allocated"] == 32 and r32["source"]["sample_interpretation"] == "SL"


def test_twenty_seconds_is_centre_cropped_exactly(sample):
    long = v.with_duration(sample, 20)
    result = normalise_dataset(long)
    assert result.report["fit"] == {"pad_before": 0, "pad_after": 0, "crop_before": 1952, "crop_after": 1952}
    # Resampling only the rows near the centre must equal resampling everything then cropping.
    full = resample_poly(long.waveform_array(0) / 1000.0, 2, 5, axis=0)
    np.testing.assert_allclose(result.signal, full[1952 : 1952 + 4096], atol=1e-5)


def test_five_seconds_is_rejected_and_the_minimum_is_configurable(sample):
    short = v.with_duration(sample, 5)
    err = reason(short)
    assert str(err) == "recording is 5.00 s, shorter than the minimum 8 s"
    assert err.report["source"]["duration_s"] == 5.0 and err.report["error"] == str(err)
    result = normalise_dataset(short, NormaliseParams(min_duration_s=4))
    assert result.report["fit"]["pad_before"] == 1048 and result.report["fit"]["pad_after"] == 1048


def test_missing_v3_is_rejected_naming_it(sample):
    err = reason(v.drop_lead(sample, "V3"))
    assert str(err) == "missing lead V3"
    assert "V3" not in err.report["leads_found"] and "V2" in err.report["leads_found"]


def test_missing_leads_are_all_named(sample):
    ds = v.keep_channels(sample, ["II", "III", "V1", "V2", "V4", "V5", "V6"])
    assert str(reason(ds)) == "missing leads I, V3"


def test_eight_lead_without_ii_cannot_derive(sample):
    assert str(reason(v.drop_lead(v.eight_lead(sample), "II"))) == "missing lead II"


def test_median_beat_only_is_rejected(sample):
    assert str(reason(v.median_beat_only(sample))) == "only a median beat waveform (no rhythm multiplex group)"


def test_no_waveform_is_rejected(sample):
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    err = reason(ds)
    assert "no WaveformSequence" in str(err) and err.report["sop_instance_uid"] == "1.2.3"


# --- parameters ------------------------------------------------------------------------------


def test_gain_and_limb_lead_order(sample, reference):
    params = NormaliseParams(gain=2.0, limb_lead_order=("I", "II", "III", "aVL", "aVF", "aVR"))
    result = normalise_dataset(sample, params)
    assert result.report["output_leads"][:6] == ["I", "II", "III", "aVL", "aVF", "aVR"]
    assert result.report["params"]["gain"] == 2.0
    np.testing.assert_allclose(result.signal[:, [3, 4, 5]], 2 * reference.signal[:, [4, 5, 3]], atol=1e-6)
    np.testing.assert_allclose(result.signal[:, 6:], 2 * reference.signal[:, 6:], atol=1e-6)


def test_params_from_config_and_validation():
    params = NormaliseParams(**NormaliseConfig().model_dump())
    assert params == NormaliseParams() and isinstance(params.limb_lead_order, tuple)
    with pytest.raises(ValueError, match="limb_lead_order"):
        NormaliseParams(limb_lead_order=["I", "I", "III", "aVR", "aVL", "aVF"])
    with pytest.raises(ValueError, match="gain"):
        NormaliseParams(gain=0)
    with pytest.raises(ValueError, match="min_duration_s"):
        NormaliseParams(min_duration_s=float("nan"))


# --- multiplex group choice ------------------------------------------------------------------


def test_rhythm_label_wins_wherever_it_is(sample, reference):
    ds = v.new_uids(sample)
    ds.WaveformSequence = [ds.WaveformSequence[1], ds.WaveformSequence[0]]
    result = normalise_dataset(ds)
    assert result.report["multiplex_group"]["index"] == 1
    np.testing.assert_array_equal(result.signal, reference.signal)


def test_original_then_longest_without_labels(sample):
    ds = v.new_uids(sample)
    for group in ds.WaveformSequence:
        del group.MultiplexGroupLabel
    assert normalise_dataset(ds).report["multiplex_group"]["chosen_by"] == "originality ORIGINAL"
    for group in ds.WaveformSequence:
        del group.WaveformOriginality
    ds.WaveformSequence = [ds.WaveformSequence[1], ds.WaveformSequence[0]]
    chosen = normalise_dataset(ds).report["multiplex_group"]
    assert chosen["chosen_by"] == "longest group" and chosen["index"] == 1


# --- leads -----------------------------------------------------------------------------------


def _channel(ds: Dataset, lead: str) -> tuple[int, Dataset]:
    group = v.rhythm(ds)
    index = v.channel_leads(group).index(lead)
    return index, group.ChannelDefinitionSequence[index]


def test_negative_avr_is_negated(sample, reference):
    ds = v.new_uids(sample)
    index, channel = _channel(ds, "aVR")
    channel.ChannelSourceSequence[0].CodeValue = "5.6.3-9-65"
    group = v.rhythm(ds)
    raw = v.raw_samples(group)
    raw[:, index] = -raw[:, index]
    group.WaveformData = raw.tobytes()
    result = normalise_dataset(ds)
    assert result.report["leads_inverted"] == ["aVR"]
    np.testing.assert_allclose(result.signal, reference.signal, atol=1e-6)


def test_unknown_and_duplicate_channels_are_reported(sample, reference):
    ds = v.keep_channels(sample, [*v.SAMPLE_LEADS, "V1", "V2"])
    group = v.rhythm(ds)
    group.ChannelDefinitionSequence[12].ChannelSourceSequence[0].CodeValue = "5.6.3-9-31"  # a "derived lead" code
    raw = v.raw_samples(group)
    raw[:, 13] = 0  # a different V2 in the duplicate channel: the first one is kept
    group.WaveformData = raw.tobytes()
    result = normalise_dataset(ds)
    assert result.report["leads_unknown"] == [{"channel": 13, "code": "SCPECG:5.6.3-9-31", "label": ""}]
    assert result.report["leads_duplicate"] == [{"channel": 14, "lead": "V2", "kept_channel": 8}]
    np.testing.assert_array_equal(result.signal, reference.signal)


def test_text_fallback_when_there_is_no_code(sample, reference):
    ds = v.new_uids(sample)
    _, v2 = _channel(ds, "V2")
    _, avl = _channel(ds, "aVL")
    del v2.ChannelSourceSequence[0].CodeValue
    v2.ChannelSourceSequence[0].CodeMeaning = "something else"
    v2.ChannelLabel = "V2"
    del avl.ChannelSourceSequence[0].CodeValue  # CodeMeaning "Lead aVL" remains
    result = normalise_dataset(ds)
    by = {c["lead"]: c["identified_by"] for c in result.report["channels"]}
    assert by["V2"] == "channel label" and by["aVL"] == "code meaning" and by["V1"] == "code"
    np.testing.assert_array_equal(result.signal, reference.signal)


# --- decoding --------------------------------------------------------------------------------


def _pad_leads(ds: Dataset, leads: list[str], rows: slice) -> Dataset:
    out = v.new_uids(ds)
    group = v.rhythm(out)
    group.WaveformPaddingValue = np.array([-32768], "<i2").tobytes()
    raw = v.raw_samples(group)
    for lead in leads:
        raw[rows, v.channel_leads(group).index(lead)] = -32768
    group.WaveformData = raw.tobytes()
    return out


def test_padding_becomes_a_reported_gap_not_signal(sample, reference):
    result = normalise_dataset(_pad_leads(sample, ["V3"], slice(0, 2000)))
    assert result.report["gaps"] == {"V3": {"samples": 2000, "seconds": 2.0, "fraction": 0.2}}
    assert result.quality_flags == ["V3: gap 2.00 s (padding)"]
    v3 = result.signal[:, 8]
    assert np.abs(v3[48 + 20 : 48 + 780]).max() < 1e-9  # zero inside the gap, not -40.96 mV
    assert v3.min() > -5
    np.testing.assert_array_equal(result.signal[:, :8], reference.signal[:, :8])
    np.testing.assert_allclose(v3[48 + 820 :], reference.signal[48 + 820 :, 8], atol=1e-6)


def test_gap_in_lead_i_propagates_to_derived_leads(sample):
    result = normalise_dataset(_pad_leads(v.eight_lead(sample), ["I"], slice(9000, 10000)))
    assert sorted(result.report["gaps"]) == ["I", "III", "aVF", "aVL", "aVR"]


def test_mostly_padded_leads_are_not_sent_to_the_model(sample):
    leads = ["I", "II", "V1", "V2", "V3", "V4", "V5"]
    err = reason(_pad_leads(sample, leads, slice(0, 6000)))
    assert str(err).startswith("7 of 12 leads unusable: I: gap 6.00 s (padding)")
    assert err.report["unusable_leads"] == ["I", "II", "V1", "V2", "V3", "V4", "V5"]


def test_big_endian_waveform_data(sample, reference):
    ds = v.new_uids(sample)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    group = v.rhythm(ds)
    group.WaveformData = v.raw_samples(group).astype(">i2").tobytes()
    np.testing.assert_array_equal(normalise_dataset(ds).signal, reference.signal)


def test_bits_stored_bounds_samples_and_sets_the_rails(sample):
    ds = v.new_uids(sample)
    for channel in v.rhythm(ds).ChannelDefinitionSequence:
        channel.WaveformBitsStored = 10  # the sample's peaks (up to 1570 counts) do not fit
    err = reason(ds)
    assert "samples outside the 10 bits stored" in str(err) and str(err).startswith("channel ")
    ds = v.new_uids(sample)
    group = v.rhythm(ds)
    for channel in group.ChannelDefinitionSequence:
        channel.WaveformBitsStored = 12
    raw = v.raw_samples(group)
    raw[:, 1] = np.clip(raw[:, 1] * 4, -2048, 2047)  # lead II saturates the 12-bit converter
    group.WaveformData = raw.tobytes()
    result = normalise_dataset(ds)
    assert len(result.quality_flags) == 1 and result.quality_flags[0].startswith("II: clipped (")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda g: setattr(g, "WaveformSampleInterpretation", "US"), "unsupported sample encoding: 16-bit US"),
        (lambda g: setattr(g, "WaveformBitsAllocated", 8), "unsupported sample encoding: 8-bit SS"),
        (lambda g: setattr(g, "WaveformData", g.WaveformData[:-2]), "WaveformData holds 239998 bytes"),
        (lambda g: setattr(g, "NumberOfWaveformSamples", 0), "empty waveform"),
        (
            lambda g: setattr(g, "ChannelDefinitionSequence", list(g.ChannelDefinitionSequence)[:11]),
            "11 channel definitions for 12 waveform channels",
        ),
        (lambda g: setattr(g, "SamplingFrequency", "99"), "sampling rate 99 Hz is outside 100-2000 Hz"),
        (lambda g: setattr(g, "SamplingFrequency", "2001"), "sampling rate 2001 Hz is outside 100-2000 Hz"),
        (
            lambda g: setattr(g, "SamplingFrequency", "499.712"),
            "sampling rate 499.712 Hz needs resampling by 3125/3904",
        ),
        (lambda g: g.__delattr__("SamplingFrequency"), "SamplingFrequency '' is not a number"),
        (
            lambda g: setattr(g.ChannelDefinitionSequence[6], "ChannelSensitivity", "0"),
            "channel 7 (V1): ChannelSensitivity '0' is not a positive number",
        ),
        (lambda g: setattr(g.ChannelDefinitionSequence[6], "ChannelSensitivity", "-1.25"), "is not a positive number"),
        (
            lambda g: g.ChannelDefinitionSequence[6].__delattr__("ChannelSensitivity"),
            "channel 7 (V1): no ChannelSensitivity",
        ),
        (
            lambda g: setattr(g.ChannelDefinitionSequence[6], "ChannelSensitivityCorrectionFactor", "0"),
            "ChannelSensitivityCorrectionFactor 0.0 is not a positive number",
        ),
        (lambda g: setattr(g.ChannelDefinitionSequence[6], "ChannelBaseline", "nan"), "ChannelBaseline"),
        (
            lambda g: setattr(g.ChannelDefinitionSequence[0].ChannelSensitivityUnitsSequence[0], "CodeValue", "mmHg"),
            "channel 1 (I): unknown channel sensitivity unit 'mmHg'",
        ),
        (
            lambda g: setattr(g.ChannelDefinitionSequence[0].ChannelSensitivityUnitsSequence[0], "CodeValue", "MV"),
            "unknown channel sensitivity unit 'MV'",
        ),
        (
            lambda g: g.ChannelDefinitionSequence[0].__delattr__("ChannelSensitivityUnitsSequence"),
            "channel 1 (I): no ChannelSensitivityUnitsSequence unit",
        ),
    ],
)
def test_bad_headers_are_errors_not_numbers(sample, change, message):
    ds = v.new_uids(sample)
    change(v.rhythm(ds))
    err = reason(ds)
    assert message in str(err)
    json.dumps(err.report)


@pytest.mark.parametrize("fs", ["100", "2000", "499.5", "240"])
def test_rates_at_and_within_the_limits(fs):
    rate = float(fs)
    t = np.arange(int(10 * rate)) / rate
    sig = np.outer(np.sin(2 * np.pi * 1.3 * t), np.linspace(0.5, 1.6, 12))
    ds = make_ecg_dataset(sig, rate, OUTPUT_LEADS)
    ds.WaveformSequence[0].SamplingFrequency = fs
    result = normalise_dataset(ds)
    assert result.report["source"]["sampling_frequency_hz"] == rate
    assert result.report["fit"]["pad_before"] == 48


# --- units -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unit, sensitivity",
    [
        ("uV", "1.25"),
        ("mV", "0.00125"),
        ("V", "0.00000125"),
        ("10*-6.V", "1.25"),
        ("10*-3.V", "0.00125"),
        ("\u00b5V", "1.25"),
        ("nV", "1250"),
    ],
)
def test_units_are_converted_to_millivolts(sample, reference, unit, sensitivity):
    result = normalise_dataset(v.with_unit(sample, unit, sensitivity))
    assert result.report["units"] == [unit]
    np.testing.assert_allclose(result.signal, reference.signal, rtol=1e-6, atol=1e-7)


def test_wrong_scale_on_every_lead_is_not_sent(sample):
    err = reason(v.with_unit(sample, "mV", "1.25"))  # uV numbers labelled mV: 1000x too large
    assert str(err).startswith("12 of 12 leads unusable: I: excessive amplitude (")


# --- quality ---------------------------------------------------------------------------------


def _zero_leads(ds: Dataset, leads: list[str]) -> Dataset:
    out = v.new_uids(ds)
    group = v.rhythm(out)
    raw = v.raw_samples(group)
    for lead in leads:
        raw[:, v.channel_leads(group).index(lead)] = 0
    group.WaveformData = raw.tobytes()
    return out


def test_one_flat_lead_is_flagged_and_still_analysed(sample):
    result = normalise_dataset(_zero_leads(sample, ["V3"]))
    assert result.quality_flags == ["V3: flat (peak-to-peak 0.000 mV)"]
    assert result.report["unusable_leads"] == ["V3"]


def test_most_leads_flat_is_rejected(sample):
    err = reason(_zero_leads(sample, ["I", "II", "V1", "V2", "V3", "V4", "V5"]))
    assert str(err).startswith("7 of 12 leads unusable: I: flat (peak-to-peak 0.000 mV); II: flat")
    assert err.report["unusable_leads"] == ["I", "II", "V1", "V2", "V3", "V4", "V5"]


def test_six_unusable_leads_are_still_analysed(sample):
    result = normalise_dataset(_zero_leads(sample, ["V1", "V2", "V3", "V4", "V5", "V6"]))
    assert len(result.report["unusable_leads"]) == 6


def test_overflowing_sensitivity_zeroes_the_lead(sample):
    ds = v.new_uids(sample)
    channel = v.rhythm(ds).ChannelDefinitionSequence[7]
    channel.ChannelSensitivity = "1.7e308"
    channel.ChannelSensitivityUnitsSequence[0].CodeValue = "V"
    result = normalise_dataset(ds)
    assert result.quality_flags == ["V2: non-finite values (10000 samples; lead zeroed)"]
    assert (result.signal[:, 7] == 0).all() and np.isfinite(result.signal).all()


def test_sample_skew_is_reported(sample):
    ds = v.new_uids(sample)
    v.rhythm(ds).ChannelDefinitionSequence[3].ChannelSampleSkew = "0.5"
    assert normalise_dataset(ds).report["sample_skew_ignored_channels"] == [4]


def _raw_ds(item: Dataset, keyword: str, text: bytes) -> None:
    """Put a value as malformed bytes, as a file would carry it (pydicom refuses to set it)."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    item[tag] = RawDataElement(tag, "DS", len(text), text, 0, False, True)


def test_malformed_numbers_in_the_file_are_named(sample):
    ds = v.new_uids(sample)
    _raw_ds(v.rhythm(ds).ChannelDefinitionSequence[0], "ChannelSensitivity", b"1,25")
    assert str(reason(ds)) == "channel 1 (I): ChannelSensitivity '1,25' is not a positive number"
    ds = v.new_uids(sample)
    _raw_ds(v.rhythm(ds), "SamplingFrequency", b"1kHz")
    assert str(reason(ds)) == "SamplingFrequency '1kHz' is not a number"


def test_one_bit_stored_is_refused(sample):
    ds = v.new_uids(sample)
    v.rhythm(ds).ChannelDefinitionSequence[4].WaveformBitsStored = 1
    assert str(reason(ds)) == "channel 5: WaveformBitsStored 1 is not usable"


def test_heavily_clipped_lead_counts_as_unusable(sample):
    ds = v.new_uids(sample)
    group = v.rhythm(ds)
    raw = v.raw_samples(group)
    raw[:, 10] = np.clip(raw[:, 10].astype(np.int32) * 8, -1000, 1000)  # V5's amplifier saturates at 1.25 mV
    group.WaveformData = raw.tobytes()
    result = normalise_dataset(ds)
    assert result.quality_flags == ["V5: clipped (11.2% of samples)"]
    assert result.report["unusable_leads"] == ["V5"]
    raw[:, 10] = np.clip(raw[:, 10].astype(np.int32) * 50, -32768, 32767)  # and one touching the converter's rails
    group.WaveformData = raw.tobytes()
    assert normalise_dataset(ds).quality_flags[0].startswith("V5: clipped (")


def test_float32_overflow_is_refused_naming_the_lead(sample):
    ds = v.new_uids(sample)
    v.rhythm(ds).ChannelDefinitionSequence[9].ChannelSensitivity = "1e300"  # uV: finite in float64, not float32
    err = reason(ds)
    assert str(err).startswith("normalised signal is not finite (float32 overflow) in V4: V4: excessive amplitude (")
