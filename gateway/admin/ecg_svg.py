"""The model input drawn on ECG paper, as an SVG string (pure: array in, text out).

Standard 12-lead print layout: 25 mm/s, 10 mm/mV, 1 mm minor and 5 mm major
grid; three rows of four 2.5 s panels (I aVR V1 V4 / II aVL V2 V5 / III aVF V3
V6), each column showing the next 2.5 s of the recording, and a 10 s lead II
rhythm strip below.  One SVG user unit is one millimetre, and the root element
is sized in mm, so a print at 100 % is true to scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

import numpy as np

MM_PER_S = 25.0
MM_PER_MV = 10.0
PANEL_S = 2.5
STRIP_S = 10.0
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
ROW_MM = 30.0  # 3 mV per row: enough for most QRS complexes
MARGIN_MM = 10.0  # left margin with the 1 mV calibration pulse
TOP_MM = 5.0

_GRID = (
    "<defs>"
    '<pattern id="ecg-minor" width="1" height="1" patternUnits="userSpaceOnUse">'
    '<path d="M 1 0 L 0 0 0 1" fill="none" stroke="#f6c9c9" stroke-width="0.06"/></pattern>'
    '<pattern id="ecg-major" width="5" height="5" patternUnits="userSpaceOnUse">'
    '<rect width="5" height="5" fill="url(#ecg-minor)"/>'
    '<path d="M 5 0 L 0 0 0 5" fill="none" stroke="#e58c8c" stroke-width="0.18"/></pattern>'
    "</defs>"
)


def recording_span(signal: np.ndarray) -> tuple[int, int]:
    """First and one-past-last sample that is not the centred zero padding
    (rows where every lead is exactly 0 at either end)."""
    nonzero = np.flatnonzero(np.any(signal != 0, axis=1))
    if nonzero.size == 0:
        return 0, signal.shape[0]
    return int(nonzero[0]), int(nonzero[-1]) + 1


def _points(values: np.ndarray, x0: float, baseline: float, fs: float, gain: float) -> str:
    x = x0 + np.arange(values.size) * (MM_PER_S / fs)
    y = baseline - np.nan_to_num(values.astype(np.float64) / gain) * MM_PER_MV
    return " ".join(f"{a:.2f},{b:.2f}" for a, b in zip(x, y, strict=True))


def _calibration(x0: float, baseline: float) -> str:
    # 1 mV for 0.2 s: 10 mm tall, 5 mm wide.
    return (
        f'<path class="calibration" d="M {x0:.2f} {baseline:.2f} h 2 v -{MM_PER_MV:g} h 5 v {MM_PER_MV:g} h 2" '
        'fill="none" stroke="#000" stroke-width="0.25"/>'
    )


def _trace(cls: str, lead: str, values: np.ndarray, x0: float, baseline: float, fs: float, gain: float) -> str:
    label = (
        f'<text x="{x0 + 1:.2f}" y="{baseline - ROW_MM / 2 + 5:.2f}" font-size="3.5" font-family="sans-serif">'
        f"{escape(lead)}</text>"
    )
    line = (
        f'<polyline points="{_points(values, x0, baseline, fs, gain)}" fill="none" stroke="#000" '
        'stroke-width="0.22" stroke-linejoin="round"/>'
    )
    return f'<g class="{cls}" data-lead={quoteattr(lead)}>{label}{line}</g>'


def ecg_svg(
    signal: np.ndarray,
    leads: Sequence[str],
    fs: float = 400.0,
    gain: float = 1.0,
) -> str:
    """Render ``signal`` (samples x 12 leads, in mV times ``gain``) as ECG paper.

    ``leads`` names the columns (any order; the layout picks by name).
    Leading and trailing all-zero rows (the model input's centred padding)
    are skipped, so time 0 is the start of the recording.  Raises
    ``ValueError`` when the array is not 2-D with one column per lead name or
    a lead of the layout is missing.
    """
    signal = np.asarray(signal)
    if signal.ndim != 2 or signal.shape[1] != len(leads):
        raise ValueError(f"expected a (samples, {len(leads)}) array, got shape {signal.shape}")
    column = {name: i for i, name in enumerate(leads)}
    missing = [name for row in LAYOUT for name in row if name not in column]
    if missing:
        raise ValueError(f"leads missing for the 3x4 layout: {', '.join(missing)}")
    if gain <= 0:
        raise ValueError("gain must be positive")
    start, stop = recording_span(signal)
    panel_n = int(round(PANEL_S * fs))
    panel_mm = PANEL_S * MM_PER_S
    width = MARGIN_MM + STRIP_S * MM_PER_S + 5.0
    height = TOP_MM + ROW_MM * (len(LAYOUT) + 1) + 2.0

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="ecg-paper" viewBox="0 0 {width:g} {height:g}" '
        f'width="{width:g}mm" height="{height:g}mm" data-mm-per-s="{MM_PER_S:g}" data-mm-per-mv="{MM_PER_MV:g}" '
        'role="img" aria-label="12-lead ECG, 25 mm/s, 10 mm/mV">',
        _GRID,
        f'<rect class="ecg-grid" width="{width:g}" height="{height:g}" fill="#fff"/>',
        f'<rect class="ecg-grid" width="{width:g}" height="{height:g}" fill="url(#ecg-major)"/>',
    ]
    for r, row in enumerate(LAYOUT):
        baseline = TOP_MM + ROW_MM * r + ROW_MM / 2
        parts.append(_calibration(0.5, baseline))
        for c, lead in enumerate(row):
            a = min(start + c * panel_n, stop)
            values = signal[a : min(a + panel_n, stop), column[lead]]
            x0 = MARGIN_MM + c * panel_mm
            parts.append(_trace("lead-panel", lead, values, x0, baseline, fs, gain))
            if c:  # the lead-change tick of printed ECGs
                parts.append(
                    f'<line x1="{x0:.2f}" x2="{x0:.2f}" y1="{baseline - 3:.2f}" y2="{baseline + 3:.2f}" '
                    'stroke="#000" stroke-width="0.25"/>'
                )
    baseline = TOP_MM + ROW_MM * len(LAYOUT) + ROW_MM / 2
    parts.append(_calibration(0.5, baseline))
    strip = signal[start : min(start + int(round(STRIP_S * fs)), stop), column[RHYTHM_LEAD]]
    parts.append(_trace("rhythm-strip", RHYTHM_LEAD, strip, MARGIN_MM, baseline, fs, gain))
    parts.append(
        f'<text x="{width - 2:g}" y="{height - 1:g}" font-size="2.5" text-anchor="end" '
        'font-family="sans-serif">25 mm/s  10 mm/mV</text></svg>'
    )
    return "".join(parts)
