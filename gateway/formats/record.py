"""What every input format becomes: the door's values and the decoded record.

:class:`DocumentValues` is what the door reads from a non-DICOM file (cheap,
no waveform decoding): its instance UID and how it was made, and the
columns of its ``ecg_instances`` row (the same columns a DICOM header
fills).  :class:`EcgRecord` is the decoded ECG the normaliser takes
(:func:`gateway.normalise.record.normalise_record`): each lead's samples as
stored with their scale to millivolts, the sampling rate, and the
provenance (source format, how each lead was identified, what the format
derived).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The twelve leads by name, and the Cabrera display's inverted aVR.
LEAD_NAMES: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
NEGATIVE_AVR = "-aVR"

#: Columns a format may fill (the ``ecg_instances`` columns a DICOM header fills).
COLUMNS: tuple[str, ...] = (
    "sop_class_uid",
    "study_instance_uid",
    "series_instance_uid",
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "accession_number",
    "placer_order_number",
    "filler_order_number",
    "requested_procedure_id",
    "manufacturer",
    "device_model",
    "device_serial",
    "acquisition_datetime",
)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(value: str | None) -> bool:
    """A DICOM UID: digits and dots, no leading zeros, at most 64 characters."""
    return bool(value) and len(value) <= 64 and _UID.match(value) is not None  # type: ignore[arg-type]


def uid_from_uuid(text: str) -> str | None:
    """``2.25.<the UUID as a decimal integer>`` (PS3.5 B.2) when ``text`` is a
    UUID (a trailing ``.xml`` is ignored), else None."""
    text = text.strip()
    if text.lower().endswith(".xml"):
        text = text[:-4]
    try:
        return f"2.25.{uuid.UUID(text).int}"
    except ValueError:
        return None


def uid_from_bytes(*parts: bytes) -> str:
    """``2.25.<first 128 bits of SHA-256 of the parts>``: the same input gives
    the same UID, so a file sent twice is a duplicate."""
    digest = hashlib.sha256(b"\x00".join(parts)).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@dataclass
class DocumentValues:
    """What the door reads from a non-DICOM ECG file."""

    source_format: str
    #: The instance UID the row is stored under (see each reader for its rule).
    instance_uid: str
    #: How ``instance_uid`` was made, e.g. "documentname UUID" or "SHA-256 of the file".
    uid_rule: str
    #: ``ecg_instances`` columns (keys from :data:`COLUMNS`); absent ones are None.
    columns: dict[str, Any] = field(default_factory=dict)
    #: Values left out (broke their column's rules), as "element: problem" (never the value).
    dropped: list[str] = field(default_factory=list)
    #: What else the door learned (document type and version): JSON-able, no PHI.
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordLead:
    """One lead as the file stores it."""

    #: One of :data:`LEAD_NAMES`, :data:`NEGATIVE_AVR`, or None (not a lead the model uses).
    lead: str | None
    #: The file's own name or code for it ("V1", "MDC_ECG_LEAD_V1").
    code: str
    #: How it was identified, e.g. "aECG sequence code" or "Philips leadlabels".
    identified_by: str
    #: Samples as stored (integers).
    counts: np.ndarray = field(repr=False)
    mv_per_count: float
    baseline_mv: float = 0.0
    #: The smallest and largest value the file can store (clipping), None when unknown.
    rails: tuple[int, int] | None = None
    #: How the file made this lead when it is not acquired as such, e.g.
    #: "rebuilt by sierraecg from I, II and the stored residual".
    derived_by_file: str | None = None

    @property
    def millivolts(self) -> np.ndarray:
        """The samples in mV (float64)."""
        return np.asarray(self.counts, dtype=np.float64) * self.mv_per_count + self.baseline_mv

    def as_report(self, index: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "channel": index + 1,
            "lead": self.lead,
            "code": self.code,
            "identified_by": self.identified_by,
            "mv_per_count": self.mv_per_count,
            "baseline_mv": self.baseline_mv,
        }
        if self.derived_by_file:
            out["derived_by_file"] = self.derived_by_file
        return out


@dataclass(frozen=True)
class EcgRecord:
    """A decoded ECG: leads, sampling rate, provenance."""

    source_format: str
    #: The sampling rate as a decimal text (exact resampling factors) ...
    rate_text: str
    leads: tuple[RecordLead, ...]
    #: ... and what the format says beside (version, time sequence, trimmed end): JSON-able.
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def sampling_rate_hz(self) -> float:
        return float(self.rate_text)

    @property
    def n_samples(self) -> int:
        return min((len(lead.counts) for lead in self.leads), default=0)


def rate_text(hz: float) -> str:
    """A sampling rate as short decimal text (500.0 -> "500", 1/0.004 -> "250")."""
    if not 1e-6 <= hz < 1e12:  # far outside any ECG rate (refused): short, not 300 digits of 1/1e-300
        return f"{hz:.6g}"
    text = f"{hz:.6f}".rstrip("0").rstrip(".")
    return text or "0"
