"""normalise_record: a decoded Philips XML or aECG (:class:`gateway.formats.EcgRecord`)
-> the model's (4096, 12) float32 input plus a report, by the DICOM path's own rules.

The record's leads are already identified and scaled by their reader; from
there the way is the DICOM one (:func:`gateway.normalise.core.to_model_input`):
I, II and V1-V6 required, missing III/aVR/aVL/aVF derived from I and II,
-aVR negated, unknown and duplicate leads reported, clipping on the stored
values, the same window, resampling, quality flags and gain.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np

from gateway.formats import EcgRecord
from gateway.normalise import quality
from gateway.normalise.core import (
    MAX_RATE_HZ,
    MIN_RATE_HZ,
    NormalisedEcg,
    NormaliseParams,
    check_leads,
    lead_identification,
    to_model_input,
)
from gateway.normalise.errors import NormaliseError
from gateway.normalise.leads import NEGATIVE_AVR, OUTPUT_LEADS
from gateway.normalise.resample import MAX_UP_DOWN, plan_window, resampling_factors


def _assign(record: EcgRecord, report: dict[str, Any]) -> dict[str, tuple[int, bool]]:
    """lead -> (index in record.leads, negate); unknown and duplicate leads are reported."""
    found: dict[str, tuple[int, bool]] = {}
    unknown, duplicates, inverted = [], [], []
    for index, item in enumerate(record.leads):
        if item.lead is None:
            unknown.append({"channel": index + 1, "code": item.code})
            continue
        negate = item.lead == NEGATIVE_AVR
        lead = "aVR" if negate else item.lead
        if lead in found:
            duplicates.append({"channel": index + 1, "lead": lead, "kept_channel": found[lead][0] + 1})
            continue
        found[lead] = (index, negate)
        if negate:
            inverted.append(lead)
    report.update(
        leads_found=[lead for lead in OUTPUT_LEADS if lead in found],
        leads_unknown=unknown, leads_duplicate=duplicates, leads_inverted=inverted,
    )
    return found


def normalise_record(record: EcgRecord, params: NormaliseParams = NormaliseParams()) -> NormalisedEcg:
    """A decoded non-DICOM ECG -> (4096, 12) float32 millivolts x gain.

    Raises :class:`NormaliseError` (reason + partial report) as
    :func:`~gateway.normalise.normalise_dataset` does."""
    report: dict[str, Any] = {
        "params": {**asdict(params), "limb_lead_order": list(params.limb_lead_order)},
        "source_format": record.source_format,
        "source_document": record.details,
    }

    def fail(reason: str) -> NormaliseError:
        return NormaliseError(reason, report)

    fs_text = record.rate_text
    fs = record.sampling_rate_hz
    if not (math.isfinite(fs) and MIN_RATE_HZ <= fs <= MAX_RATE_HZ):
        raise fail(f"sampling rate {fs_text} Hz is outside {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz")
    up, down = resampling_factors(fs_text)
    if max(up, down) > MAX_UP_DOWN:
        raise fail(f"sampling rate {fs_text} Hz needs resampling by {up}/{down}: unsupported")
    n_samples = record.n_samples
    duration = n_samples / fs
    report["source"] = {
        "sampling_frequency_hz": fs, "samples": n_samples, "duration_s": round(duration, 6),
        "channels": len(record.leads),
    }
    if duration < params.min_duration_s:
        raise fail(f"recording is {duration:.2f} s, shorter than the minimum {params.min_duration_s:g} s")
    report["channels"] = [item.as_report(index) for index, item in enumerate(record.leads)]
    found = _assign(record, report)

    def method(index: int) -> str:
        item = record.leads[index]
        return f"{item.identified_by}; {item.derived_by_file}" if item.derived_by_file else item.identified_by

    report["lead_identification"] = lead_identification({lead: method(i) for lead, (i, _) in found.items()})
    derived = check_leads(found, report)

    window = plan_window(n_samples, fs, up, down)
    rows = slice(window.source_start, window.source_stop)
    flags: list[str] = []
    unusable: set[str] = set()
    source: dict[str, np.ndarray] = {}
    for lead, (index, negate) in found.items():
        item = record.leads[index]
        counts = np.asarray(item.counts[:n_samples][rows])
        with np.errstate(over="ignore", invalid="ignore"):
            x = counts * item.mv_per_count + item.baseline_mv
        source[lead] = -x if negate else x
        # rails unknown (aECG): only plateaus at the lead's own extremes count
        rails = item.rails or (int(counts.min(initial=0)) - 1, int(counts.max(initial=0)) + 1)
        fraction = quality.clipped_fraction(counts, rails, fs, item.mv_per_count, item.baseline_mv)
        if fraction > 0:
            flags.append(f"{lead}: clipped ({100 * fraction:.1f}% of samples)")
            if fraction >= quality.CLIPPED_UNUSABLE:
                unusable.add(lead)
    return to_model_input(source, {}, flags, unusable, derived, fs, (up, down), window, params, report)
