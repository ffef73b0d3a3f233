"""normalise_dataset: a DICOM ECG -> the model's (4096, 12) float32 input plus a report."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from gateway.normalise import quality
from gateway.normalise.decode import (
    Channel,
    decode_raw,
    dicom_text,
    is_little_endian,
    raw_text,
    read_channels,
    select_multiplex_group,
)
from gateway.normalise.errors import NormaliseError
from gateway.normalise.leads import (
    DERIVABLE_LEADS,
    LIMB_LEADS,
    NEGATIVE_AVR,
    OUTPUT_LEADS,
    PRECORDIAL_LEADS,
    derive_limb_leads,
)
from gateway.normalise.resample import (
    MAX_UP_DOWN,
    MODEL_RATE_HZ,
    MODEL_SAMPLES,
    Window,
    plan_window,
    resample_to_model,
    resampling_factors,
)
from gateway.quoting import printable, quote

MIN_RATE_HZ = 100.0
MAX_RATE_HZ = 2000.0

#: Bump when ``normalise_dataset`` gives a different signal for any input.  Each
#: result records the version that made its input; the input itself is not
#: stored but rebuilt from the spooled original and checked against its hash.
NORMALISER_VERSION = "1"


def normaliser_version() -> str:
    """The version recorded with each result: ours and numpy's (the arithmetic's)."""
    return f"{NORMALISER_VERSION} (numpy {np.__version__})"


def input_sha256(signal: np.ndarray) -> str:
    """sha256 of a model input as little-endian float32 in C order (the .npy payload;
    independent of the .npy header, so of numpy's file-format details)."""
    return hashlib.sha256(np.ascontiguousarray(signal, dtype="<f4").tobytes()).hexdigest()


@dataclass(frozen=True)
class NormaliseParams:
    """How to normalise; recorded in every report."""

    gain: float = 1.0
    limb_lead_order: tuple[str, ...] = LIMB_LEADS
    min_duration_s: float = 8.0

    def __post_init__(self) -> None:
        # Built from config with NormaliseParams(**cfg.normalise.model_dump()): lists become tuples.
        object.__setattr__(self, "limb_lead_order", tuple(self.limb_lead_order))
        if sorted(self.limb_lead_order) != sorted(LIMB_LEADS):
            raise ValueError(f"limb_lead_order must list {', '.join(LIMB_LEADS)} once each")
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise ValueError("gain must be a positive number")
        if not (math.isfinite(self.min_duration_s) and self.min_duration_s > 0):
            raise ValueError("min_duration_s must be a positive number")

    @property
    def output_leads(self) -> tuple[str, ...]:
        """Column order of the model input."""
        return self.limb_lead_order + PRECORDIAL_LEADS


@dataclass
class NormalisedEcg:
    """The model input and what was done to produce it."""

    signal: np.ndarray  # float32 (4096, 12), mV x gain, in params.output_leads order
    report: dict[str, Any]
    quality_flags: list[str] = field(default_factory=list)


def _assign_leads(channels: list[Channel], report: dict[str, Any]) -> dict[str, tuple[int, bool]]:
    """lead -> (channel index, negate); unknown and duplicate channels are reported."""
    found: dict[str, tuple[int, bool]] = {}
    unknown, duplicates, inverted = [], [], []
    for ch in channels:
        lead = ch.lead.lead
        if lead is None:
            unknown.append({"channel": ch.index + 1, "code": ch.lead.code, "label": ch.label})
            continue
        negate = lead == NEGATIVE_AVR
        lead = "aVR" if negate else lead
        if lead in found:
            duplicates.append({"channel": ch.index + 1, "lead": lead, "kept_channel": found[lead][0] + 1})
            continue
        found[lead] = (ch.index, negate)
        if negate:
            inverted.append(lead)
    report.update(
        leads_found=[lead for lead in OUTPUT_LEADS if lead in found],
        leads_unknown=unknown, leads_duplicate=duplicates, leads_inverted=inverted,
    )
    return found


def normalise_dataset(ds: Dataset, params: NormaliseParams = NormaliseParams()) -> NormalisedEcg:
    """A DICOM ECG waveform object -> (4096, 12) float32 millivolts x gain.

    Raises :class:`NormaliseError` (reason + partial report) when the ECG cannot
    be analysed: no rhythm group, unsupported encoding or unit, a rate outside
    100-2000 Hz, too short, I/II/V1-V6 missing, or most leads unusable.
    """
    report: dict[str, Any] = {
        "params": {**asdict(params), "limb_lead_order": list(params.limb_lead_order)},
        "source_format": "dicom",
        "sop_class_uid": dicom_text(ds.get("SOPClassUID")),
        "sop_instance_uid": dicom_text(ds.get("SOPInstanceUID")),
    }
    try:
        return _normalise(ds, params, report)
    except NormaliseError as exc:
        exc.report = {**report, **exc.report}
        raise


def _normalise(ds: Dataset, params: NormaliseParams, report: dict[str, Any]) -> NormalisedEcg:
    def fail(reason: str) -> NormaliseError:
        return NormaliseError(reason, report)

    index, why = select_multiplex_group(ds)
    group = ds.WaveformSequence[index]
    report["multiplex_group"] = {
        "index": index, "label": dicom_text(group.get("MultiplexGroupLabel")),
        "originality": dicom_text(group.get("WaveformOriginality")), "chosen_by": why,
    }

    # Sampling rate and duration, from the DS text exactly as written.
    fs_text = raw_text(group, "SamplingFrequency")
    try:
        fs = float(fs_text)
    except ValueError:
        raise fail(f"SamplingFrequency {quote(fs_text)} is not a number") from None
    if not (math.isfinite(fs) and MIN_RATE_HZ <= fs <= MAX_RATE_HZ):
        raise fail(f"sampling rate {printable(fs_text, 32)} Hz is outside {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz")
    up, down = resampling_factors(fs_text)
    if max(up, down) > MAX_UP_DOWN:
        raise fail(f"sampling rate {printable(fs_text, 32)} Hz needs resampling by {up}/{down}: unsupported")
    raw = decode_raw(group, is_little_endian(ds))
    n_samples = raw.samples.shape[0]
    duration = n_samples / fs
    report["source"] = {
        "sampling_frequency_hz": fs, "samples": n_samples, "duration_s": round(duration, 6),
        "channels": raw.samples.shape[1], "bits_allocated": raw.bits_allocated,
        "sample_interpretation": raw.interpretation,
    }
    if duration < params.min_duration_s:
        raise fail(f"recording is {duration:.2f} s, shorter than the minimum {params.min_duration_s:g} s")

    # Channels -> leads.
    channels = read_channels(group)
    report["channels"] = [ch.as_report() for ch in channels]
    report["units"] = sorted({ch.unit for ch in channels})
    skewed = [ch.index + 1 for ch in channels if ch.skew]
    if skewed:
        report["sample_skew_ignored_channels"] = skewed
    found = _assign_leads(channels, report)
    report["lead_identification"] = lead_identification(
        {lead: channels[index].lead.identified_by for lead, (index, _) in found.items()})
    derived = check_leads(found, report)

    window = plan_window(n_samples, fs, up, down)
    rows = slice(window.source_start, window.source_stop)
    flags: list[str] = []
    unusable: set[str] = set()

    # Scale each present lead to mV; padded samples become NaN (gaps), never numbers.
    source: dict[str, np.ndarray] = {}
    gaps: dict[str, np.ndarray] = {}
    columns = np.ascontiguousarray(raw.samples[rows].T)  # one copy: per-lead maths on strided columns is ~2x slower
    for lead, (col, negate) in found.items():
        ch = channels[col]
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught below as non-finite
            x = columns[col] * ch.mv_per_count + ch.baseline_mv
        if negate:
            x = -x
        valid = None
        if raw.padding is not None and raw.padding[rows, col].any():
            gaps[lead] = raw.padding[rows, col]
            valid = ~gaps[lead]
            x[gaps[lead]] = np.nan
        source[lead] = x
        fraction = quality.clipped_fraction(
            columns[col], raw.rails[col], fs, ch.mv_per_count, ch.baseline_mv, valid,
            plateaus=raw.bits_allocated > 8,
        )
        if fraction > 0:
            flags.append(f"{lead}: clipped ({100 * fraction:.1f}% of samples)")
            if fraction >= quality.CLIPPED_UNUSABLE:
                unusable.add(lead)
    return to_model_input(source, gaps, flags, unusable, derived, fs, (up, down), window, params, report)


def lead_identification(methods: dict[str, str]) -> dict[str, list[str]]:
    """How each lead was identified, as {method: [leads in model order]} (the report's ``lead_identification``)."""
    out: dict[str, list[str]] = {}
    for lead in OUTPUT_LEADS:
        if lead in methods:
            out.setdefault(methods[lead], []).append(lead)
    return out


def check_leads(found: Mapping[str, object], report: dict[str, Any]) -> list[str]:
    """The same rule for every format: I, II and V1-V6 must be there (else
    :class:`NormaliseError`); III, aVR, aVL, aVF missing are derived from I
    and II (returned, and reported as ``leads_derived``)."""
    missing = [lead for lead in ("I", "II", *PRECORDIAL_LEADS) if lead not in found]
    if missing:
        raise NormaliseError(f"missing lead{'s' if len(missing) > 1 else ''} {', '.join(missing)}", report)
    derived = [lead for lead in DERIVABLE_LEADS if lead not in found]
    report["leads_derived"] = derived
    return derived


def to_model_input(
    source: dict[str, np.ndarray], gaps: dict[str, np.ndarray], flags: list[str], unusable: set[str],
    derived: list[str], fs: float, factors: tuple[int, int], window: Window, params: NormaliseParams,
    report: dict[str, Any],
) -> NormalisedEcg:
    """The shared way from leads in mV (the window's source rows; padded
    samples NaN and marked in ``gaps``) to the model input: derived limb
    leads, gap and non-finite checks, resampling to 400 Hz, padding or
    cropping to 4096 samples, quality flags, gain.  Every input format
    (DICOM, Philips XML, aECG) ends here."""
    def fail(reason: str) -> NormaliseError:
        return NormaliseError(reason, report)

    up, down = factors
    n_rows = window.source_stop - window.source_start
    if derived:
        with np.errstate(over="ignore", invalid="ignore"):
            computed = derive_limb_leads(source["I"], source["II"])
        for lead in derived:
            source[lead] = computed[lead]
            gap = gaps.get("I", np.zeros(n_rows, bool)) | gaps.get("II", np.zeros(n_rows, bool))
            if gap.any():
                gaps[lead] = gap

    x = np.stack([source[lead] for lead in params.output_leads])  # (leads, rows)
    report["gaps"] = {}
    for lead in params.output_leads:
        if lead in gaps:
            count = int(gaps[lead].sum())
            report["gaps"][lead] = {
                "samples": count,
                "seconds": round(count / fs, 4),
                "fraction": round(count / n_rows, 4),
            }
            flags.append(f"{lead}: gap {count / fs:.2f} s (padding)")
            if count / n_rows >= quality.GAP_UNUSABLE:
                unusable.add(lead)
    # Overflowing header values can make infinities: such a lead is zeroed, never fed as numbers.
    zeroed: set[str] = set()
    for row, lead in enumerate(params.output_leads):
        bad = ~np.isfinite(x[row])
        if lead in gaps:
            bad &= ~gaps[lead]
        if bad.any():
            flags.append(f"{lead}: non-finite values ({int(bad.sum())} samples; lead zeroed)")
            zeroed.add(lead)
            x[row] = 0.0
    unusable |= zeroed
    if gaps:
        x[np.isnan(x)] = 0.0  # the padded samples, reported above as gaps

    y = resample_to_model(x, up, down, window)
    report["resample"] = {"from_hz": fs, "to_hz": MODEL_RATE_HZ, "up": up, "down": down}
    report["fit"] = {
        "pad_before": window.pad_before, "pad_after": window.pad_after,
        "crop_before": window.crop_before, "crop_after": window.crop_after,
    }
    content = y[:, window.pad_before:MODEL_SAMPLES - window.pad_after]
    checked = [lead for lead in params.output_leads if lead not in zeroed]
    rows_checked = [params.output_leads.index(lead) for lead in checked]
    signal_flags, signal_unusable = quality.signal_flags(content[rows_checked], checked)
    flags += signal_flags
    unusable |= signal_unusable
    report["quality_flags"] = flags
    report["unusable_leads"] = [lead for lead in params.output_leads if lead in unusable]
    report["output_leads"] = list(params.output_leads)
    if len(unusable) > len(params.output_leads) // 2:
        raise fail(f"{len(unusable)} of {len(params.output_leads)} leads unusable: {'; '.join(flags)}")

    signal = np.ascontiguousarray((y * params.gain).T, dtype=np.float32)
    overflow = [
        lead for lead, column in zip(params.output_leads, signal.T, strict=True) if not np.isfinite(column).all()
    ]
    if overflow:  # beyond float32 (absurd scale): the model must never see Inf
        raise fail(f"normalised signal is not finite (float32 overflow) in {', '.join(overflow)}: {'; '.join(flags)}")
    report["gain"] = params.gain
    return NormalisedEcg(signal, report, flags)
