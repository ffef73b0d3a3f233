"""Versions of one SOP Instance UID: which one holds the patient, which ones
were quarantined at the door, and when a result is a correction.

A cart may send an instance again with other bytes (a re-export, a fixed
header): that is a new version of the same SOP Instance UID, for the same
patient.  A new version may never move the ECG to another patient: the
patient identity (PatientID + IssuerOfPatientID) of the first version
accepted at the door is the reference, and a version with another identity
is quarantined (``rejected``, :data:`IDENTITY_CHANGED_REASON`, no ORU).  A
same-patient version is processed, and its ORU is a correction when an
earlier version's result already went (or is going) to the EHR.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.store.models import HL7_DELIVERED, HL7_PENDING, EcgInstance, Hl7Message

#: Flag of a row refused at the door (kept as ``spool/rejected/<sha256>.dcm``).
REJECTED_AT_RECEIVE = "rejected_at_receive"
#: Flag of a version quarantined because its patient identity differs from the reference.
IDENTITY_CHANGED = "identity_changed"
IDENTITY_CHANGED_REASON = "patient identity changed for an existing SOP Instance UID"
#: Audit action written when a version is quarantined for its identity.
IDENTITY_CHANGED_AUDIT = "quarantine_identity_change"


def quarantined(flags: list[Any] | None) -> bool:
    """True for a version refused at the door or quarantined for its patient
    identity (its flags say so): it never stands for its SOP Instance UID."""
    return bool({REJECTED_AT_RECEIVE, IDENTITY_CHANGED} & set(flags or []))


def patient_identity(patient_id: str | None, issuer: str | None) -> tuple[str, str]:
    """What must stay the same across versions: (PatientID, IssuerOfPatientID), absent = ''."""
    return (patient_id or "", issuer or "")


def reference_version(session: Session, sop_instance_uid: str) -> Any | None:
    """The first version of ``sop_instance_uid`` not quarantined (id,
    version, patient_id, issuer_of_patient_id), or None when there is none.
    Only later versions are quarantined, and versions are deleted only all
    together (retention), so the answer never changes while any is kept."""
    rows = session.execute(
        select(
            EcgInstance.id,
            EcgInstance.version,
            EcgInstance.patient_id,
            EcgInstance.issuer_of_patient_id,
            EcgInstance.flags,
        )
        .where(EcgInstance.sop_instance_uid == sop_instance_uid)
        .order_by(EcgInstance.version)
    ).all()
    return next((row for row in rows if not quarantined(row.flags)), None)


def identity_conflict(session: Session, ecg: EcgInstance) -> Any | None:
    """The reference version when ``ecg`` is a later version with another
    patient identity; None when ``ecg`` may be processed."""
    reference = reference_version(session, ecg.sop_instance_uid)
    if reference is None or reference.id == ecg.id or reference.version > ecg.version:
        return None
    same = patient_identity(reference.patient_id, reference.issuer_of_patient_id) == patient_identity(
        ecg.patient_id, ecg.issuer_of_patient_id
    )
    return None if same else reference


def corrected_version(session: Session, ecg: EcgInstance) -> int | None:
    """The id of the earlier version of ``ecg``'s SOP Instance UID whose
    result the EHR has or will get (its first with an outbox row pending or
    delivered): ``ecg``'s ORU corrects that one.  None when there is none
    (then ``ecg``'s ORU is final)."""
    return session.scalar(
        select(EcgInstance.id)
        .join(Hl7Message, Hl7Message.ecg_id == EcgInstance.id)
        .where(
            EcgInstance.sop_instance_uid == ecg.sop_instance_uid,
            EcgInstance.version < ecg.version,
            Hl7Message.status.in_((HL7_PENDING, HL7_DELIVERED)),
        )
        .order_by(EcgInstance.version)
        .limit(1)
    )
