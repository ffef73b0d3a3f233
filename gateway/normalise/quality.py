"""Signal quality flags: which leads the model should not be trusted on.

Thresholds are physical (millivolts before the configured gain).  A lead is
unusable when flat, non-finite, too large, clipped over CLIPPED_UNUSABLE of
its samples, or padded over GAP_UNUSABLE of them; a recording with most
leads unusable is not sent to the model.
"""

from __future__ import annotations

import numpy as np

FLAT_PEAK_TO_PEAK_MV = 0.02  # a connected lead shows at least its QRS (>> 20 uV)
MAX_AMPLITUDE_MV = 10.0  # beyond any body-surface ECG: artefact or wrong units
# A plateau this long at a lead's extreme, at least PLATEAU_MIN_MV from zero, is an
# amplifier saturating; smooth waves of a few converter counts can linger shorter.
CLIPPED_MIN_RUN_S = 0.04
PLATEAU_MIN_MV = 1.0
CLIPPED_UNUSABLE = 0.05
GAP_UNUSABLE = 0.5


def _runs_at_least(mask: np.ndarray, length: int) -> np.ndarray:
    """The part of ``mask`` that lies in runs of at least ``length`` True values."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    out = np.zeros(mask.shape, dtype=bool)
    for a, b in zip(starts, stops, strict=True):
        if b - a >= length:
            out[a:b] = True
    return out


def clipped_fraction(
    samples: np.ndarray,
    rails: tuple[int, int],
    fs: float,
    mv_per_count: float,
    baseline_mv: float = 0.0,
    valid: np.ndarray | None = None,
    plateaus: bool = True,
) -> float:
    """Share of a channel's raw samples that sit on the converter's rails, or on
    a plateau (>= 40 ms, >= 1 mV from zero) at the channel's own extreme value.

    ``plateaus=False`` for coarsely quantised (8-bit companded) data, whose
    peaks sit on one code for long.
    """
    x = samples if valid is None else samples[valid]
    if x.size == 0 or x.min() == x.max():
        return 0.0  # empty or constant: the flat check speaks for it
    saturated = (x <= rails[0]) | (x >= rails[1])
    run = max(2, int(round(CLIPPED_MIN_RUN_S * fs)))
    for value in (x.max(), x.min()) if plateaus else ():
        if abs(float(value) * mv_per_count + baseline_mv) < PLATEAU_MIN_MV:
            continue
        extreme = x == value
        if np.count_nonzero(extreme) >= run:  # cheap test first: peaks are a sample or two wide
            saturated |= _runs_at_least(extreme, run)
    return float(saturated.mean())


def signal_flags(signal_mv: np.ndarray, leads: tuple[str, ...] | list[str]) -> tuple[list[str], set[str]]:
    """Flat, non-finite and excessive-amplitude flags for (leads, samples) in mV.

    Returns (flags like ``"V3: flat"``, names of the unusable leads).
    """
    flags: list[str] = []
    unusable: set[str] = set()
    for column, lead in enumerate(leads):
        x = signal_mv[column]
        finite = np.isfinite(x)
        if not finite.all():
            flags.append(f"{lead}: non-finite values ({int((~finite).sum())} samples)")
            unusable.add(lead)
            continue
        peak_to_peak = float(x.max() - x.min()) if x.size else 0.0
        if peak_to_peak < FLAT_PEAK_TO_PEAK_MV:
            flags.append(f"{lead}: flat (peak-to-peak {peak_to_peak:.3f} mV)")
            unusable.add(lead)
            continue
        amplitude = float(np.abs(x).max())
        if amplitude > MAX_AMPLITUDE_MV:
            # .1f below 1e7 mV; beyond, 3 significant digits (a hostile scale of 1e300 was 300 digits)
            shown = f"{amplitude:.1f}" if amplitude < 1e7 else f"{amplitude:.3g}"
            flags.append(f"{lead}: excessive amplitude ({shown} mV > {MAX_AMPLITUDE_MV:g} mV)")
            unusable.add(lead)
    return flags, unusable
