"""Variants of pydicom's real Mortara ECG (waveform_ecg.dcm), built in code.

Every builder takes a data set and returns a modified deep copy; the real
header (patient, study, annotations, the MEDIAN BEAT group) stays as the cart
wrote it.  Other stages' tests use these to send the same variants end to end:

    ds = ecg_variants.new_uids(ecg_variants.eight_lead(ecg_variants.load_sample()))
    ecg_variants.save(ds, tmp_path / "eight.dcm")
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy.signal import resample_poly

from gateway.normalise.encode import GENERAL_32BIT_ECG
from gateway.normalise.leads import lead_from_code

#: Facts of the real file the tests rely on.
SAMPLE_RATE_HZ = 1000
SAMPLE_SAMPLES = 10000
SAMPLE_UV_PER_COUNT = 1.25
SAMPLE_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def load_sample() -> Dataset:
    """pydicom's waveform_ecg.dcm, freshly read."""
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))


def save(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM file (with file meta) and return the path."""
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def rhythm(ds: Dataset) -> Dataset:
    """The RHYTHM multiplex group of ``ds`` (the one the builders modify)."""
    return next(g for g in ds.WaveformSequence if str(g.get("MultiplexGroupLabel", "")).upper() == "RHYTHM")


def raw_samples(group: Dataset) -> np.ndarray:
    """(samples, channels) integers of a 16/32-bit group."""
    dtype = "<i2" if group.WaveformBitsAllocated == 16 else "<i4"
    return np.frombuffer(group.WaveformData, dtype=dtype).reshape(group.NumberOfWaveformSamples, -1).copy()


def channel_leads(group: Dataset) -> list[str | None]:
    """Lead of each channel, from its code value."""
    return [lead_from_code(str(ch.ChannelSourceSequence[0].CodeValue))[1] for ch in group.ChannelDefinitionSequence]


def _set_samples(group: Dataset, samples: np.ndarray) -> None:
    group.NumberOfWaveformSamples, group.NumberOfWaveformChannels = samples.shape
    group.WaveformData = np.ascontiguousarray(samples).tobytes()


def _copy(ds: Dataset) -> tuple[Dataset, Dataset]:
    out = copy.deepcopy(ds)
    return out, rhythm(out)


def new_uids(ds: Dataset) -> Dataset:
    """Fresh SOP Instance, Series and Study UIDs (to send a variant again as new)."""
    out = copy.deepcopy(ds)
    out.SOPInstanceUID = generate_uid()
    out.SeriesInstanceUID = generate_uid()
    out.StudyInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


def with_rate(ds: Dataset, fs: int) -> Dataset:
    """The rhythm resampled (polyphase) to ``fs`` Hz, as a cart at that rate would store it."""
    out, group = _copy(ds)
    old = int(float(group.SamplingFrequency))
    g = np.gcd(fs, old)
    resampled = resample_poly(raw_samples(group).astype(np.float64), fs // g, old // g, axis=0)
    _set_samples(group, np.clip(np.round(resampled), -32768, 32767).astype("<i2"))
    group.SamplingFrequency = str(fs)
    return out


def keep_channels(ds: Dataset, leads: list[str]) -> Dataset:
    """Only the channels of ``leads``, in that order."""
    out, group = _copy(ds)
    present = channel_leads(group)
    index = [present.index(lead) for lead in leads]
    channels = list(group.ChannelDefinitionSequence)
    group.ChannelDefinitionSequence = [copy.deepcopy(channels[i]) for i in index]
    _set_samples(group, raw_samples(group)[:, index])
    return out


def eight_lead(ds: Dataset) -> Dataset:
    """I, II, V1-V6 only, like GE and other 8-lead carts."""
    return keep_channels(ds, ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"])


def drop_lead(ds: Dataset, lead: str) -> Dataset:
    """Without the channel of ``lead``."""
    return keep_channels(ds, [x for x in channel_leads(rhythm(ds)) if x != lead])


def shuffled(ds: Dataset, seed: int = 0) -> Dataset:
    """Channels in a random (seeded) order."""
    leads = channel_leads(rhythm(ds))
    order = np.random.default_rng(seed).permutation(len(leads))
    return keep_channels(ds, [leads[i] for i in order])


def millivolts_with_baseline(ds: Dataset, baseline_mv: float = 0.5) -> Dataset:
    """Same physical signal in mV units, with ChannelBaseline and a correction factor.

    sensitivity 0.000625 mV x correction 2 = the original 1.25 uV; the samples
    are shifted so that raw * 0.00125 + baseline equals the original exactly
    (baseline_mv must be a multiple of 1.25 uV).
    """
    out, group = _copy(ds)
    lsb_mv = SAMPLE_UV_PER_COUNT / 1000
    shift = round(baseline_mv / lsb_mv)
    assert abs(shift * lsb_mv - baseline_mv) < 1e-12, "baseline must be a whole number of LSBs"
    _set_samples(group, (raw_samples(group).astype(np.int32) - shift).astype("<i2"))
    for channel in group.ChannelDefinitionSequence:
        channel.ChannelSensitivity = "0.000625"
        channel.ChannelSensitivityCorrectionFactor = "2"
        channel.ChannelBaseline = f"{baseline_mv:g}"
        unit = channel.ChannelSensitivityUnitsSequence[0]
        unit.CodeValue, unit.CodeMeaning = "mV", "millivolt"
    return out


def with_unit(ds: Dataset, unit: str, sensitivity: str) -> Dataset:
    """Every channel's unit code and sensitivity replaced (raw samples unchanged)."""
    out, group = _copy(ds)
    for channel in group.ChannelDefinitionSequence:
        channel.ChannelSensitivity = sensitivity
        channel.ChannelSensitivityUnitsSequence[0].CodeValue = unit
    return out


def mdc_codes(ds: Dataset) -> Dataset:
    """Lead codes in the MDC scheme (2:N) instead of SCPECG (5.6.3-9-N)."""
    out, group = _copy(ds)
    for channel in group.ChannelDefinitionSequence:
        code = channel.ChannelSourceSequence[0]
        number = str(code.CodeValue).rsplit("-", 1)[1]
        code.CodeValue, code.CodingSchemeDesignator = f"2:{number}", "MDC"
        if "CodingSchemeVersion" in code:
            del code.CodingSchemeVersion
    return out


def general_32bit(ds: Dataset) -> Dataset:
    """General 32-bit ECG Waveform Storage: SL samples, same values."""
    out, group = _copy(ds)
    out.SOPClassUID = out.file_meta.MediaStorageSOPClassUID = GENERAL_32BIT_ECG
    for g in out.WaveformSequence:
        samples = raw_samples(g).astype("<i4")
        g.WaveformBitsAllocated = 32
        g.WaveformSampleInterpretation = "SL"
        _set_samples(g, samples)
        for channel in g.ChannelDefinitionSequence:
            channel.WaveformBitsStored = 32
    return out


def with_duration(ds: Dataset, seconds: float) -> Dataset:
    """The rhythm cut to, or repeated up to, ``seconds``."""
    out, group = _copy(ds)
    samples = raw_samples(group)
    n = int(round(seconds * float(group.SamplingFrequency)))
    _set_samples(group, np.resize(samples, (n, samples.shape[1])).astype(samples.dtype))
    return out


def median_beat_only(ds: Dataset) -> Dataset:
    """Only the MEDIAN BEAT group, as some exports send."""
    out = copy.deepcopy(ds)
    out.WaveformSequence = [
        g for g in out.WaveformSequence if "MEDIAN" in str(g.get("MultiplexGroupLabel", "")).upper()
    ]
    return out
