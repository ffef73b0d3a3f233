"""normalise_record: a decoded Philips XML or aECG (:class:`gateway.formats.EcgRecord`)
-> the model's (4096, 12) float32 input plus a report, by the DICOM path's own rules.

The record's leads are already identified and scaled by their reader; from
there the way is the DICOM one (:func:`gateway.normalise.core.to_model_input`):
I, II and V1-V6 required, missing III/aVR/aVL/aVF derived from I and II,
-aVR negated, unknown and duplicate leads reported, clipping on the stored
values, the same window, resampling, quality flags and gain.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from gateway.formats import EcgRecord
from gateway.normalise import quality
from gateway.normalise.core import (
    LeadSignals,
    NormalisedEcg,
    NormaliseParams,
    assign_leads,
    check_duration,
    derivable_leads,
    lead_identification,
    sampling_rate,
    to_model_input,
)
from gateway.normalise.errors import NormaliseError
from gateway.normalise.resample import plan_window


def normalise_record(record: EcgRecord, params: NormaliseParams = NormaliseParams()) -> NormalisedEcg:
    """A decoded non-DICOM ECG -> (4096, 12) float32 millivolts x gain.

    Raises :class:`NormaliseError` (reason + partial report) as
    :func:`~gateway.normalise.normalise_dataset` does."""
    report: dict[str, Any] = {
        "params": {**asdict(params), "limb_lead_order": list(params.limb_lead_order)},
        "source_format": record.source_format,
        "source_document": record.details,
    }
    try:
        return _normalise_record(record, params, report)
    except NormaliseError as exc:
        exc.report = {**report, **exc.report}
        raise


def _normalise_record(record: EcgRecord, params: NormaliseParams, report: dict[str, Any]) -> NormalisedEcg:
    """The record's steps in order; ``report`` gains each step's part as it succeeds."""
    rate = sampling_rate(record.sampling_rate_hz, record.rate_text, record.rate_text)
    n_samples = record.n_samples
    duration = n_samples / rate.hz
    report["source"] = {
        "sampling_frequency_hz": rate.hz,
        "samples": n_samples,
        "duration_s": round(duration, 6),
        "channels": len(record.leads),
    }
    check_duration(duration, params)
    report["channels"] = [item.as_report(index) for index, item in enumerate(record.leads)]
    leads = assign_leads(
        (index, item.lead, {"channel": index + 1, "code": item.code}) for index, item in enumerate(record.leads)
    )
    report.update(leads.report())

    def method(index: int) -> str:
        item = record.leads[index]
        return f"{item.identified_by}; {item.derived_by_file}" if item.derived_by_file else item.identified_by

    report["lead_identification"] = lead_identification({lead: method(i) for lead, (i, _) in leads.found.items()})
    derived = derivable_leads(leads.found)
    report["leads_derived"] = derived

    window = plan_window(n_samples, rate.hz, rate.up, rate.down)
    rows = slice(window.source_start, window.source_stop)
    signals = LeadSignals()
    for lead, (index, negate) in leads.found.items():
        item = record.leads[index]
        counts = np.asarray(item.counts[:n_samples][rows])
        with np.errstate(over="ignore", invalid="ignore"):
            x = counts * item.mv_per_count + item.baseline_mv
        signals.mv[lead] = -x if negate else x
        # rails unknown (aECG): only plateaus at the lead's own extremes count
        rails = item.rails or (int(counts.min(initial=0)) - 1, int(counts.max(initial=0)) + 1)
        signals.note_clipping(
            lead,
            quality.clipped_fraction(
                counts, rails, fs=rate.hz, mv_per_count=item.mv_per_count, baseline_mv=item.baseline_mv
            ),
        )
    return to_model_input(signals, derived, rate, window, params, report)
