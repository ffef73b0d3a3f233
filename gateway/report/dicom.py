"""The result as DICOM objects for PACS (pure: data sets and values in, data sets out).

* :func:`encapsulated_pdf`: Encapsulated PDF Storage (1.2.840.10008.5.1.4.1.1.104.1)
  holding the one-page report, built with pydicom (highdicom has no
  Encapsulated Document class);
* :func:`comprehensive_sr`: Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33),
  built with highdicom: the findings (SNOMED CT) with each probability and
  threshold, the cart's measurements (LOINC, UCUM), the model identity.

Both take the patient and the study from the source ECG data set, go into a
new series (one per kind, per ECG) and reference the source SOP instance.
Their UIDs are chosen by the caller (stored in the outbox before the first
send), so a send repeated after a crash stores the same instance again,
never a second one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.timeutil import as_utc

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
#: Local coding scheme of the gateway's own concepts (a "99" designator: private).
LOCAL_SCHEME = "99ECGGW"
DOCUMENT_TITLE = "12-lead ECG report (AI, not confirmed by a physician)"
#: The title once a physician has over-read the result.
CONFIRMED_TITLE = "12-lead ECG report (confirmed by a physician)"

#: Patient and General Study attributes copied from the source ECG (type 2: present, maybe empty).
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "SpecificCharacterSet",
)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@dataclass(frozen=True)
class ResultValues:
    """What the AI said and what the cart measured, for the SR."""

    probabilities: Mapping[str, float]
    thresholds: Mapping[str, float]
    findings: Sequence[str]
    model_sha256: str
    gateway_version: str
    demo_model: bool
    measurements: Mapping[str, Mapping[str, Any]] | None
    cart_statements: Sequence[str]
    #: The AI result's time (the prediction's), the objects' content time.
    result_time: datetime
    #: The physician's over-read (``gateway.report.pdf.ReaderConfirmation``), if any:
    #: the SR is then final and verified by the reader, with the physician's findings.
    confirmation: Any = None
    #: The reader's name as DICOM PN ("Family^Given") for VerifyingObserverName.
    reader_pn: str = ""
    #: VerifyingOrganization of a confirmed SR.
    organization: str = "ECG gateway"


def _dicom_time(when: datetime) -> tuple[str, str]:
    when = as_utc(when)
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S")


def encapsulated_pdf(
    source: Any,
    pdf: bytes,
    *,
    series_uid: str,
    sop_uid: str,
    when: datetime,
    series_number: int = 901,
    manufacturer: str = "ECG gateway",
    software_version: str = "",
    confirmed: bool = False,
) -> Any:
    """An Encapsulated PDF data set (with file meta, Explicit VR Little Endian)
    holding ``pdf``, for the patient and study of ``source`` (the ECG's data set);
    ``confirmed``: the PDF reports a physician's over-read (its title says so)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    ds = Dataset()
    for keyword in _PATIENT_STUDY:
        if keyword in source:
            ds[keyword] = source[keyword]
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    date, time = _dicom_time(when)
    ds.SOPClassUID, ds.SOPInstanceUID = ENCAPSULATED_PDF, sop_uid
    ds.Modality = "DOC"  # per CP-749 (as DCMTK's pdf2dcm)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, series_number, 1
    ds.SeriesDescription = "ECG report (PDF)"
    ds.ConversionType = "WSD"  # workstation
    ds.Manufacturer = manufacturer
    if software_version:
        ds.SoftwareVersions = software_version
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.AcquisitionDateTime = source.get("AcquisitionDateTime", "") or ""
    ds.BurnedInAnnotation = "YES"  # the page shows the patient's name and ID
    ds.DocumentTitle = CONFIRMED_TITLE if confirmed else DOCUMENT_TITLE
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "11524-6", "LN", "EKG study"
    ds.ConceptNameCodeSequence = [title]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    # raw bytes, padded to even length (not the fragmented pixel-data encapsulation)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    ds.SourceInstanceSequence = [ref]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UID(ENCAPSULATED_PDF), UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def comprehensive_sr(
    source: Any,
    values: ResultValues,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int = 902,
    manufacturer: str = "ECG gateway",
    predecessors: Sequence[tuple[str, str]] = (),
) -> Any:
    """A Comprehensive SR of the AI result for the patient and study of
    ``source`` (the ECG's data set, also referenced as the evidence).

    ``predecessors``: (Series Instance UID, SOP Instance UID) of the earlier SR
    documents of this ECG (the AI's, earlier over-reads) whose content this one
    revises; they go in PredecessorDocumentsSequence (PS3.3 C.17.2), so a PACS
    or viewer can tell the physician's report replaces the preliminary one."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes
    from pydicom.valuerep import DA, TM

    from gateway.findings import BY_CODE, FINDINGS
    from gateway.report.measurements import BY_KEY
    from gateway.report.pdf import confirmed_line

    sr = hd.sr
    contains = sr.RelationshipTypeValues.CONTAINS
    has_properties = sr.RelationshipTypeValues.HAS_PROPERTIES
    no_units = sr.CodedConcept("1", "UCUM", "no units")

    def local(value: str, meaning: str) -> hd.sr.CodedConcept:
        return sr.CodedConcept(value, LOCAL_SCHEME, meaning)

    items: list[Any] = [
        sr.TextContentItem(
            name=codes.DCM.AlgorithmName,
            relationship_type=contains,
            value="Ribeiro et al. 2020 12-lead ECG DNN" + (" (UNTRAINED DEMO MODEL)" if values.demo_model else ""),
        ),
        sr.TextContentItem(
            name=codes.DCM.AlgorithmVersion,
            relationship_type=contains,
            value=f"model sha256 {values.model_sha256}; ECG gateway {values.gateway_version}",
        ),
        sr.CompositeContentItem(
            name=codes.DCM.SourceOfMeasurement,
            relationship_type=contains,
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        ),
        sr.TextContentItem(
            name=local("STATUS", "Result status"),
            relationship_type=contains,
            value="AI result, not confirmed by a physician"
            if values.confirmation is None
            else confirmed_line(values.confirmation),
        ),
    ]
    confirmation = values.confirmation
    if confirmation is not None:
        for code in FINDINGS:
            if code in set(confirmation.findings):
                finding = BY_CODE[code]
                items.append(
                    sr.CodeContentItem(
                        name=local("PHYSICIAN_FINDING", "Finding confirmed by the physician"),
                        value=sr.CodedConcept(finding.snomed, "SCT", finding.name),
                        relationship_type=contains,
                    )
                )
        for statement in confirmation.statements:
            items.append(
                sr.TextContentItem(
                    name=local("PHYSICIAN_STATEMENT", "Physician statement"),
                    value=str(statement)[:1024],
                    relationship_type=contains,
                )
            )
        if confirmation.comment:
            items.append(
                sr.TextContentItem(
                    name=codes.DCM.Comment, value=str(confirmation.comment)[:1024], relationship_type=contains
                )
            )
    reported = set(values.findings)
    for code in FINDINGS:
        finding = BY_CODE[code]
        concept = sr.CodedConcept(finding.snomed, "SCT", finding.name)
        children = [
            sr.NumContentItem(
                name=codes.DCM.Probability,
                value=float(values.probabilities.get(code, 0.0)),
                unit=no_units,
                relationship_type=has_properties,
            ),
            sr.NumContentItem(
                name=local("THRESHOLD", "Decision threshold"),
                value=float(values.thresholds.get(code, 0.0)),
                unit=no_units,
                relationship_type=has_properties,
            ),
            sr.CodeContentItem(
                name=local("REPORTED", "Reported (probability above threshold)"),
                value=sr.CodedConcept("373066001", "SCT", "Yes")
                if code in reported
                else sr.CodedConcept("373067005", "SCT", "No"),
                relationship_type=has_properties,
            ),
        ]
        item = sr.CodeContentItem(name=codes.DCM.Finding, value=concept, relationship_type=contains)
        item.ContentSequence = sr.ContentSequence(children)
        items.append(item)
    for key, m in (values.measurements or {}).items():
        kind = BY_KEY.get(key)
        if kind is None or m.get("code") != kind.loinc or m.get("unit") != kind.unit:
            continue
        unit = {
            "ms": sr.CodedConcept("ms", "UCUM", "millisecond"),
            "/min": sr.CodedConcept("/min", "UCUM", "per minute"),
            "deg": sr.CodedConcept("deg", "UCUM", "degree"),
        }[kind.unit]
        num = sr.NumContentItem(
            name=sr.CodedConcept(kind.loinc, "LN", kind.loinc_display),
            value=float(m["value"]),
            unit=unit,
            relationship_type=contains,
        )
        if m.get("source") == "derived":
            num.ContentSequence = sr.ContentSequence(
                [
                    sr.TextContentItem(
                        name=codes.DCM.Comment,
                        value="derived by the gateway from the cart's RR interval",
                        relationship_type=has_properties,
                    )
                ]
            )
        items.append(num)
    for statement in values.cart_statements:
        items.append(
            sr.TextContentItem(
                name=local("CART_STATEMENT", "ECG cart statement"),
                value=str(statement)[:1024],
                relationship_type=contains,
            )
        )
    root = sr.ContainerContentItem(name=sr.CodedConcept("11524-6", "LN", "EKG study"))
    root.ContentSequence = sr.ContentSequence(items)
    previous = []
    for series, instance in predecessors:
        ref = Dataset()
        ref.StudyInstanceUID, ref.SeriesInstanceUID = source.StudyInstanceUID, series
        ref.SOPClassUID, ref.SOPInstanceUID = COMPREHENSIVE_SR, instance
        previous.append(ref)
    doc = sr.ComprehensiveSR(
        evidence=[source],
        previous_versions=previous or None,
        content=root,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=confirmation is not None,
        is_verified=confirmation is not None,
        verifying_observer_name=(values.reader_pn or "Unknown") if confirmation is not None else None,
        verifying_organization=values.organization if confirmation is not None else None,
        series_description="ECG AI result (SR)" if confirmation is None else "ECG report, physician over-read (SR)",
    )
    date, time = _dicom_time(values.result_time)
    doc.ContentDate, doc.ContentTime = DA(date), TM(time)
    return doc
