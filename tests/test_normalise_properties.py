"""Properties: resampling keeps amplitude and frequency; the lead derivation identities."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gateway.normalise import OUTPUT_LEADS, NormaliseParams, derive_limb_leads, normalise_dataset
from gateway.normalise.encode import make_ecg_dataset


@settings(max_examples=40, deadline=None)
@given(
    fs=st.integers(100, 2000),
    frequency=st.floats(0.5, 40.0),
    amplitude=st.floats(0.1, 5.0),
    phase=st.floats(0.0, 2 * np.pi),
)
def test_sine_survives_resampling_from_any_supported_rate(fs, frequency, amplitude, phase):
    frequency = min(frequency, 0.3 * fs)  # stay clear of the source's Nyquist band edge
    n = 10 * fs
    t = np.arange(n) / fs
    wave = amplitude * np.sin(2 * np.pi * frequency * t + phase)
    ds = make_ecg_dataset(np.repeat(wave[:, None], 12, axis=1), fs, OUTPUT_LEADS, resolution_uv=0.5, bits=32)
    result = normalise_dataset(ds, NormaliseParams(min_duration_s=9.9))
    fit = result.report["fit"]
    content = result.signal[fit["pad_before"] : 4096 - fit["pad_after"], 6].astype(np.float64)
    # Away from the edges the output is the same sine on the 400 Hz time base: amplitude and
    # frequency (a frequency error would grow into a phase error over the 10 s).
    j = np.arange(400, content.size - 400)
    ideal = amplitude * np.sin(2 * np.pi * frequency * j / 400 + phase)
    assert np.abs(content[j] - ideal).max() <= 0.02 * amplitude
    spectrum = np.abs(np.fft.rfft(content[j] * np.hanning(j.size), n=16 * j.size))
    assert abs(np.argmax(spectrum) * 400 / (16 * j.size) - frequency) < 400 / (16 * j.size)
    assert result.quality_flags == []


finite = st.floats(-20.0, 20.0, allow_nan=False, width=64)


@settings(max_examples=100, deadline=None)
@given(lead_i=arrays(np.float64, 32, elements=finite), lead_ii=arrays(np.float64, 32, elements=finite))
def test_derivation_identities(lead_i, lead_ii):
    d = derive_limb_leads(lead_i, lead_ii)
    np.testing.assert_allclose(lead_i + d["III"], lead_ii, atol=1e-9)  # Einthoven
    np.testing.assert_allclose(d["aVR"] + d["aVL"] + d["aVF"], 0.0, atol=1e-9)  # Goldberger
    np.testing.assert_allclose(d["aVL"], (lead_i - d["III"]) / 2, atol=1e-9)
    np.testing.assert_allclose(d["aVF"], (lead_ii + d["III"]) / 2, atol=1e-9)
    np.testing.assert_allclose(d["aVR"], -(lead_i + lead_ii) / 2, atol=1e-9)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_eight_lead_recordings_satisfy_the_identities_after_normalising(seed):
    rng = np.random.default_rng(seed)
    leads = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    signal = np.cumsum(rng.normal(0, 0.01, (5000, 8)), axis=0)
    signal -= signal.mean(axis=0)
    out = normalise_dataset(make_ecg_dataset(signal, 500, leads, resolution_uv=1.0)).signal.astype(np.float64)
    i, ii, iii, avr, avl, avf = out[:, :6].T
    np.testing.assert_allclose(i + iii, ii, atol=1e-5)
    np.testing.assert_allclose(avr + avl + avf, 0.0, atol=1e-5)
