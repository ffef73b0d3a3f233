"""Resampling to the model's 400 Hz and centring in its 4096-sample window."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

MODEL_RATE_HZ = 400
MODEL_SAMPLES = 4096
#: Beyond this the polyphase filter gets impractically long (rates like 499.712 Hz).
MAX_UP_DOWN = 2000


def resampling_factors(fs: float | str) -> tuple[int, int]:
    """(up, down) = 400 / fs reduced by their gcd; fs exactly as written (DS text)."""
    ratio = Fraction(MODEL_RATE_HZ) / Fraction(str(fs))
    return ratio.numerator, ratio.denominator


@dataclass(frozen=True)
class Window:
    """Which source rows to resample, and where the model's window lies in the result."""

    source_start: int
    source_stop: int
    offset: int  # first output sample of the model window within the resampled rows
    pad_before: int
    pad_after: int
    crop_before: int  # output samples dropped before the window (full-recording terms)
    crop_after: int


def plan_window(n_samples: int, fs: float, up: int, down: int) -> Window:
    """Centre pad ((4096 - n) // 2 zeros first) or centre crop of the 400 Hz signal.

    For long recordings only the rows that reach the centre window (plus a 1 s
    margin, far more than the filter's reach) are resampled.  Starting at a
    multiple of ``down`` keeps the polyphase alignment, so the window equals the
    one cut from resampling the whole recording.
    """
    n_out = math.ceil(n_samples * up / down)
    if n_out <= MODEL_SAMPLES:
        before = (MODEL_SAMPLES - n_out) // 2
        return Window(0, n_samples, 0, before, MODEL_SAMPLES - n_out - before, 0, 0)
    crop = (n_out - MODEL_SAMPLES) // 2
    margin = math.ceil(fs)
    k = max(0, math.floor((crop * down / up - margin) / down))
    start = k * down
    stop = min(n_samples, math.ceil((crop + MODEL_SAMPLES) * down / up) + margin)
    return Window(start, stop, crop - k * up, 0, 0, crop, n_out - MODEL_SAMPLES - crop)


@lru_cache(maxsize=32)
def _filter(up: int, down: int) -> np.ndarray:
    """resample_poly's own default low-pass (Kaiser, beta 5), designed once per ratio."""
    from scipy.signal import firwin

    max_rate = max(up, down)
    taps: np.ndarray = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    taps.setflags(write=False)
    return taps


def resample_to_model(x: np.ndarray, up: int, down: int, window: Window) -> np.ndarray:
    """(leads, window rows) at the source rate -> (leads, 4096) at 400 Hz.

    ``x`` holds the rows ``window.source_start:window.source_stop`` only.
    """
    from scipy.signal import resample_poly  # scipy.signal takes seconds to import: only when used

    y = resample_poly(x, up, down, axis=1, window=_filter(up, down)) if (up, down) != (1, 1) else x
    if window.pad_before or window.pad_after:
        return np.pad(y, ((0, 0), (window.pad_before, window.pad_after)))
    return y[:, window.offset : window.offset + MODEL_SAMPLES]
