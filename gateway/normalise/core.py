"""normalise_dataset: a DICOM ECG -> the model's (4096, 12) float32 input plus a report."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from gateway.normalise import quality
from gateway.normalise.decode import (
    Channel,
    RawGroup,
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


# -- the steps every format shares (pure: values in, a typed result or NormaliseError out) ------------------------


@dataclass(frozen=True)
class Rate:
    """A sampling rate the model input can be made from."""

    hz: float
    #: Rational resampling factors to the model's 400 Hz (``resampling_factors``).
    up: int
    down: int


def sampling_rate(hz: float, text: str, shown: str) -> Rate:
    """Check a sampling rate: 100-2000 Hz and a supported resampling ratio.

    ``text`` is the rate as written (the exact factors come from it);
    ``shown`` is how the reason quotes it.  Raises :class:`NormaliseError`.
    """
    if not (math.isfinite(hz) and MIN_RATE_HZ <= hz <= MAX_RATE_HZ):
        raise NormaliseError(f"sampling rate {shown} Hz is outside {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz")
    up, down = resampling_factors(text)
    if max(up, down) > MAX_UP_DOWN:
        raise NormaliseError(f"sampling rate {shown} Hz needs resampling by {up}/{down}: unsupported")
    return Rate(hz, up, down)


def check_duration(duration_s: float, params: NormaliseParams) -> None:
    """Raises :class:`NormaliseError` when the recording is shorter than ``params.min_duration_s``."""
    if duration_s < params.min_duration_s:
        raise NormaliseError(f"recording is {duration_s:.2f} s, shorter than the minimum {params.min_duration_s:g} s")


@dataclass(frozen=True)
class LeadAssignment:
    """Which channel carries each lead, and the channels that carry none."""

    #: lead -> (channel index, negate): -aVR is carried as aVR, negated.
    found: dict[str, tuple[int, bool]]
    unknown: list[dict[str, Any]]
    duplicates: list[dict[str, Any]]
    inverted: list[str]

    def report(self) -> dict[str, Any]:
        """The report's ``leads_found`` (model order), ``leads_unknown``, ``leads_duplicate``, ``leads_inverted``."""
        return {
            "leads_found": [lead for lead in OUTPUT_LEADS if lead in self.found],
            "leads_unknown": self.unknown,
            "leads_duplicate": self.duplicates,
            "leads_inverted": self.inverted,
        }


def assign_leads(channels: Iterable[tuple[int, str | None, dict[str, Any]]]) -> LeadAssignment:
    """Leads from ``(channel index, lead or None, the channel's entry in
    leads_unknown)``: the first channel of a lead wins, the others are duplicates."""
    found: dict[str, tuple[int, bool]] = {}
    unknown: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []
    inverted: list[str] = []
    for index, lead, unknown_entry in channels:
        if lead is None:
            unknown.append(unknown_entry)
            continue
        negate = lead == NEGATIVE_AVR
        lead = "aVR" if negate else lead
        if lead in found:
            duplicates.append({"channel": index + 1, "lead": lead, "kept_channel": found[lead][0] + 1})
            continue
        found[lead] = (index, negate)
        if negate:
            inverted.append(lead)
    return LeadAssignment(found, unknown, duplicates, inverted)


def lead_identification(methods: dict[str, str]) -> dict[str, list[str]]:
    """How each lead was identified, as {method: [leads in model order]} (the report's ``lead_identification``)."""
    out: dict[str, list[str]] = {}
    for lead in OUTPUT_LEADS:
        if lead in methods:
            out.setdefault(methods[lead], []).append(lead)
    return out


def derivable_leads(found: Mapping[str, object]) -> list[str]:
    """The same rule for every format: I, II and V1-V6 must be there (else
    :class:`NormaliseError`); the III, aVR, aVL, aVF missing are returned:
    derived from I and II (the report's ``leads_derived``)."""
    missing = [lead for lead in ("I", "II", *PRECORDIAL_LEADS) if lead not in found]
    if missing:
        raise NormaliseError(f"missing lead{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return [lead for lead in DERIVABLE_LEADS if lead not in found]


@dataclass
class LeadSignals:
    """Leads in mV over the window's source rows, with what was seen on the way."""

    mv: dict[str, np.ndarray] = field(default_factory=dict)
    #: lead -> bool mask of padded samples (NaN in ``mv``), only for leads with any.
    gaps: dict[str, np.ndarray] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    unusable: set[str] = field(default_factory=set)

    def note_clipping(self, lead: str, fraction: float) -> None:
        """Flag a lead clipped for ``fraction`` of its samples; unusable from ``quality.CLIPPED_UNUSABLE`` on."""
        if fraction > 0:
            self.flags.append(f"{lead}: clipped ({100 * fraction:.1f}% of samples)")
            if fraction >= quality.CLIPPED_UNUSABLE:
                self.unusable.add(lead)


# -- DICOM --------------------------------------------------------------------------------------------------------


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
    """The DICOM steps in order; ``report`` gains each step's part as it
    succeeds, so a failure's report holds what was learned before it."""
    index, why = select_multiplex_group(ds)
    group = ds.WaveformSequence[index]
    report["multiplex_group"] = {
        "index": index,
        "label": dicom_text(group.get("MultiplexGroupLabel")),
        "originality": dicom_text(group.get("WaveformOriginality")),
        "chosen_by": why,
    }
    rate = dicom_rate(group)
    raw = decode_raw(group, is_little_endian(ds))
    n_samples = raw.samples.shape[0]
    duration = n_samples / rate.hz
    report["source"] = {
        "sampling_frequency_hz": rate.hz,
        "samples": n_samples,
        "duration_s": round(duration, 6),
        "channels": raw.samples.shape[1],
        "bits_allocated": raw.bits_allocated,
        "sample_interpretation": raw.interpretation,
    }
    check_duration(duration, params)

    channels = read_channels(group)
    report.update(channels_report(channels))
    leads = assign_leads(
        (ch.index, ch.lead.lead, {"channel": ch.index + 1, "code": ch.lead.code, "label": ch.label}) for ch in channels
    )
    report.update(leads.report())
    report["lead_identification"] = lead_identification(
        {lead: channels[index].lead.identified_by for lead, (index, _) in leads.found.items()}
    )
    derived = derivable_leads(leads.found)
    report["leads_derived"] = derived

    window = plan_window(n_samples, rate.hz, rate.up, rate.down)
    signals = scale_channels(raw, channels, leads.found, window, rate.hz)
    return to_model_input(signals, derived, rate, window, params, report)


def dicom_rate(group: Dataset) -> Rate:
    """The group's SamplingFrequency, from the DS text exactly as written; raises :class:`NormaliseError`."""
    text = raw_text(group, "SamplingFrequency")
    try:
        hz = float(text)
    except ValueError:
        raise NormaliseError(f"SamplingFrequency {quote(text)} is not a number") from None
    return sampling_rate(hz, text, printable(text, 32))


def channels_report(channels: list[Channel]) -> dict[str, Any]:
    """The report's ``channels``, ``units`` and (when any) ``sample_skew_ignored_channels``."""
    out: dict[str, Any] = {
        "channels": [ch.as_report() for ch in channels],
        "units": sorted({ch.unit for ch in channels}),
    }
    skewed = [ch.index + 1 for ch in channels if ch.skew]
    if skewed:
        out["sample_skew_ignored_channels"] = skewed
    return out


def scale_channels(
    raw: RawGroup, channels: list[Channel], found: Mapping[str, tuple[int, bool]], window: Window, fs: float
) -> LeadSignals:
    """Each found lead's rows of the window in mV; padded samples become NaN
    (gaps), never numbers; clipping flagged."""
    rows = slice(window.source_start, window.source_stop)
    out = LeadSignals()
    columns = np.ascontiguousarray(raw.samples[rows].T)  # one copy: per-lead maths on strided columns is ~2x slower
    for lead, (col, negate) in found.items():
        ch = channels[col]
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught later as non-finite
            x = columns[col] * ch.mv_per_count + ch.baseline_mv
        if negate:
            x = -x
        valid = None
        if raw.padding is not None and raw.padding[rows, col].any():
            out.gaps[lead] = raw.padding[rows, col]
            valid = ~out.gaps[lead]
            x[out.gaps[lead]] = np.nan
        out.mv[lead] = x
        out.note_clipping(
            lead,
            quality.clipped_fraction(
                columns[col],
                raw.rails[col],
                fs,
                ch.mv_per_count,
                ch.baseline_mv,
                valid,
                plateaus=raw.bits_allocated > 8,
            ),
        )
    return out


# -- from leads in mV to the model input (every format) ----------------------------------------------------------


def to_model_input(
    leads: LeadSignals, derived: list[str], rate: Rate, window: Window, params: NormaliseParams, report: dict[str, Any]
) -> NormalisedEcg:
    """The shared way from leads in mV (the window's source rows; padded
    samples NaN and marked in ``leads.gaps``) to the model input: derived limb
    leads, gap and non-finite checks, resampling to 400 Hz, padding or
    cropping to 4096 samples, quality flags, gain.  Every input format
    (DICOM, Philips XML, aECG) ends here; ``report`` gains each step's part."""
    out_leads = params.output_leads
    n_rows = window.source_stop - window.source_start
    _add_derived(leads, derived, n_rows)
    x = np.stack([leads.mv[lead] for lead in out_leads])  # (leads, rows)
    report["gaps"] = _note_gaps(leads, out_leads, rate.hz, n_rows)
    zeroed = _zero_non_finite(x, leads, out_leads)
    if leads.gaps:
        x[np.isnan(x)] = 0.0  # the padded samples, reported above as gaps

    y = resample_to_model(x, rate.up, rate.down, window)
    report["resample"] = {"from_hz": rate.hz, "to_hz": MODEL_RATE_HZ, "up": rate.up, "down": rate.down}
    report["fit"] = {
        "pad_before": window.pad_before,
        "pad_after": window.pad_after,
        "crop_before": window.crop_before,
        "crop_after": window.crop_after,
    }
    content = y[:, window.pad_before : MODEL_SAMPLES - window.pad_after]
    checked = [lead for lead in out_leads if lead not in zeroed]
    signal_flags, signal_unusable = quality.signal_flags(content[[out_leads.index(lead) for lead in checked]], checked)
    flags = leads.flags + signal_flags
    unusable = leads.unusable | signal_unusable
    report["quality_flags"] = flags
    report["unusable_leads"] = [lead for lead in out_leads if lead in unusable]
    report["output_leads"] = list(out_leads)
    if len(unusable) > len(out_leads) // 2:
        raise NormaliseError(f"{len(unusable)} of {len(out_leads)} leads unusable: {'; '.join(flags)}")
    signal = _apply_gain(y, params.gain, out_leads, flags)
    report["gain"] = params.gain
    return NormalisedEcg(signal, report, flags)


def _add_derived(leads: LeadSignals, derived: list[str], n_rows: int) -> None:
    """III, aVR, aVL, aVF computed from I and II where missing; their gaps are I's and II's."""
    if not derived:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        computed = derive_limb_leads(leads.mv["I"], leads.mv["II"])
    for lead in derived:
        leads.mv[lead] = computed[lead]
        gap = leads.gaps.get("I", np.zeros(n_rows, bool)) | leads.gaps.get("II", np.zeros(n_rows, bool))
        if gap.any():
            leads.gaps[lead] = gap


def _note_gaps(leads: LeadSignals, out_leads: tuple[str, ...], fs: float, n_rows: int) -> dict[str, Any]:
    """The report's ``gaps`` (per lead: samples, seconds, fraction); flags
    each, unusable from ``quality.GAP_UNUSABLE`` on."""
    gaps: dict[str, Any] = {}
    for lead in out_leads:
        if lead in leads.gaps:
            count = int(leads.gaps[lead].sum())
            gaps[lead] = {"samples": count, "seconds": round(count / fs, 4), "fraction": round(count / n_rows, 4)}
            leads.flags.append(f"{lead}: gap {count / fs:.2f} s (padding)")
            if count / n_rows >= quality.GAP_UNUSABLE:
                leads.unusable.add(lead)
    return gaps


def _zero_non_finite(x: np.ndarray, leads: LeadSignals, out_leads: tuple[str, ...]) -> set[str]:
    """Zero (in place) each lead of ``x`` with a non-finite value outside its
    gaps: overflowing header values can make infinities, never fed as numbers.
    Returns the zeroed leads (flagged, unusable)."""
    zeroed: set[str] = set()
    for row, lead in enumerate(out_leads):
        bad = ~np.isfinite(x[row])
        if lead in leads.gaps:
            bad &= ~leads.gaps[lead]
        if bad.any():
            leads.flags.append(f"{lead}: non-finite values ({int(bad.sum())} samples; lead zeroed)")
            zeroed.add(lead)
            x[row] = 0.0
    leads.unusable |= zeroed
    return zeroed


def _apply_gain(y: np.ndarray, gain: float, out_leads: tuple[str, ...], flags: list[str]) -> np.ndarray:
    """(4096, leads) float32 = ``y`` x gain; raises :class:`NormaliseError` beyond float32 (absurd scale)."""
    signal = np.ascontiguousarray((y * gain).T, dtype=np.float32)
    overflow = [lead for lead, column in zip(out_leads, signal.T, strict=True) if not np.isfinite(column).all()]
    if overflow:  # the model must never see Inf
        raise NormaliseError(
            f"normalised signal is not finite (float32 overflow) in {', '.join(overflow)}: {'; '.join(flags)}"
        )
    return signal
