"""Normalise: a DICOM ECG data set, or a decoded Philips XML / aECG record,
-> the model's (4096, 12) float32 input (pure functions).

``normalise_dataset(ds, params)`` (and ``normalise_record(record, params)``) returns a :class:`NormalisedEcg` (signal,
report, quality flags) or raises :class:`NormaliseError` whose text is the
reason stored with the ECG and sent in HL7.
"""

from gateway.normalise.core import (
    NORMALISER_VERSION,
    NormalisedEcg,
    NormaliseParams,
    input_sha256,
    normalise_dataset,
    normaliser_version,
)
from gateway.normalise.errors import NormaliseError
from gateway.normalise.leads import LIMB_LEADS, OUTPUT_LEADS, PRECORDIAL_LEADS, derive_limb_leads, identify_lead
from gateway.normalise.records import normalise_record
from gateway.normalise.resample import MODEL_RATE_HZ, MODEL_SAMPLES

__all__ = [
    "LIMB_LEADS",
    "MODEL_RATE_HZ",
    "MODEL_SAMPLES",
    "NORMALISER_VERSION",
    "OUTPUT_LEADS",
    "PRECORDIAL_LEADS",
    "NormaliseError",
    "NormaliseParams",
    "NormalisedEcg",
    "derive_limb_leads",
    "identify_lead",
    "input_sha256",
    "normalise_dataset",
    "normalise_record",
    "normaliser_version",
]
