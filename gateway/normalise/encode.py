"""The inverse of normalise: millivolt signals -> a complete, writable DICOM ECG.

Used by tests, by the commissioning command that turns the published test set
into cart-like DICOM, and by other stages' tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from gateway.normalise.leads import LEAD_BY_NUMBER
from gateway.timeutil import utcnow

TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
AMBULATORY_ECG = "1.2.840.10008.5.1.4.1.1.9.1.3"
GENERAL_32BIT_ECG = "1.2.840.10008.5.1.4.1.1.9.1.4"
HEMODYNAMIC_WAVEFORM = "1.2.840.10008.5.1.4.1.1.9.2.1"

_NUMBER_BY_LEAD = {lead: number for number, lead in LEAD_BY_NUMBER.items()}
_MEANING = {"I": "Lead I (Einthoven)", "II": "Lead II", "III": "Lead III", "-aVR": "Lead -aVR"}


def lead_code(lead: str, code_scheme: str = "SCPECG") -> Dataset:
    """A ChannelSourceSequence item for ``lead`` in the SCPECG or MDC scheme."""
    number = _NUMBER_BY_LEAD[lead]
    item = Dataset()
    if code_scheme == "SCPECG":
        item.CodeValue, item.CodingSchemeDesignator, item.CodingSchemeVersion = f"5.6.3-9-{number}", "SCPECG", "1.3"
    elif code_scheme == "MDC":
        item.CodeValue, item.CodingSchemeDesignator = f"2:{number}", "MDC"
    else:
        raise ValueError(f"code_scheme must be SCPECG or MDC, not {code_scheme!r}")
    item.CodeMeaning = _MEANING.get(lead, f"Lead {lead}")
    return item


def _unit(code: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodingSchemeVersion, item.CodeMeaning = (
        code,
        "UCUM",
        "1.4",
        meaning,
    )
    return item


def make_ecg_dataset(
    signal_mv: np.ndarray,
    fs: float,
    leads: Sequence[str],
    *,
    resolution_uv: float = 1.0,
    code_scheme: str = "SCPECG",
    sop_class_uid: str = TWELVE_LEAD_ECG,
    bits: int = 16,
    patient_id: str = "",
    patient_name: str = "",
    accession_number: str = "",
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    **header: Any,
) -> Dataset:
    """A complete DICOM ECG (file meta included) with one RHYTHM multiplex group.

    ``signal_mv`` is (samples, channels) in millivolts, one column per entry of
    ``leads``.  Samples are ``round(mV * 1000 / resolution_uv)`` clipped to the
    16- or 32-bit range; ChannelSensitivity is ``resolution_uv`` in uV.
    Extra keyword arguments are set as DICOM attributes by keyword.
    """
    signal = np.asarray(signal_mv, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[1] != len(leads):
        raise ValueError(f"signal shape {signal.shape} does not match {len(leads)} leads")
    if bits not in (16, 32):
        raise ValueError("bits must be 16 or 32")
    dtype = np.dtype("<i2" if bits == 16 else "<i4")
    info = np.iinfo(dtype)
    samples = np.clip(np.round(signal * 1000.0 / resolution_uv), info.min, info.max).astype(dtype)

    sop_instance_uid = sop_instance_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.Modality = "ECG"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    # Waveform Identification makes these Type 1; "now", as a cart would (override via **header).
    now = utcnow()
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.ReferringPhysicianName = ds.StudyID = ""
    ds.AccessionNumber = accession_number
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.Manufacturer = ""
    ds.AcquisitionContextSequence = []

    group = Dataset()
    group.MultiplexGroupTimeOffset = "0"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(leads)
    group.NumberOfWaveformSamples = samples.shape[0]
    group.SamplingFrequency = f"{fs:g}"
    group.MultiplexGroupLabel = "RHYTHM"
    group.ChannelDefinitionSequence = []
    for lead in leads:
        channel = Dataset()
        channel.ChannelSourceSequence = [lead_code(lead, code_scheme)]
        channel.ChannelSensitivity = f"{resolution_uv:g}"
        channel.ChannelSensitivityUnitsSequence = [_unit("uV", "microvolt")]
        channel.ChannelSensitivityCorrectionFactor = "1"
        channel.ChannelBaseline = "0"
        channel.ChannelSampleSkew = "0"
        channel.WaveformBitsStored = bits
        group.ChannelDefinitionSequence.append(channel)
    group.WaveformBitsAllocated = bits
    group.WaveformSampleInterpretation = "SS" if bits == 16 else "SL"
    group.WaveformData = samples.tobytes()
    ds.WaveformSequence = [group]
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    return ds
