"""Read-side queries shared by the CLI, the HTTP API and the web view.

One function builds the row dicts (:func:`ecg_rows`), so ``results list
--format json``, ``GET /api/ecgs`` and the CSV export agree key for key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, TypeVar

from sqlalchemy import Select, String, cast, func, select
from sqlalchemy.orm import Session

from gateway.admin.overread import confirmation_state, history, latest_confirmations
from gateway.findings import FINDINGS
from gateway.rebuild import lead_names
from gateway.store.models import (
    ECG_STATUSES,
    HL7_STATUSES,
    HL7_SUPERSEDED,
    PROCESSED,
    PROCESSING,
    RECEIVED,
    Confirmation,
    EcgInstance,
    Hl7Message,
    Prediction,
)
from gateway.store.versions import quarantined
from gateway.timeutil import as_utc

_Select = TypeVar("_Select", bound=Select[Any])


class EcgFilters(TypedDict):
    """The filters of :func:`ecg_rows` and :func:`count_ecgs` (None: not filtered)."""

    patient_id: str | None
    accession: str | None
    since: datetime | None
    until: datetime | None
    status: str | None
    finding: str | None


#: The model's six outputs, in output order (gateway.findings).
FINDING_CODES = FINDINGS
#: The keys of one row, in this order, for JSON and CSV alike.
ROW_KEYS = (
    "id",
    "sop_instance_uid",
    "study_instance_uid",
    "patient_id",
    "patient_name",
    "accession_number",
    "received_at",
    "status",
    "error",
    "probabilities",
    "findings",
    "quality_flags",
    "model_sha256",
    "demo_model",
    "hl7_status",
    "measurements",
    "cart_statements",
    "ward",
    "confirmation",
)
#: Statuses as the admin sees them: a claimed ECG is still only "received".
ROW_STATUSES = ("received", "processed", "rejected", "failed")
HL7_ROW_STATUSES = ("pending", "delivered", "failed", "not_sent")


class QueryError(ValueError):
    """A filter value the caller must fix (message names the filter)."""


def iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value else None


def parse_time(text: str, name: str = "time") -> datetime:
    """ISO 8601 date or date-time; naive values are UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{name}: not an ISO 8601 date or date-time: {text!r}") from None
    return as_utc(value)


def _validate(status: str | None, finding: str | None) -> None:
    if status is not None and status not in ROW_STATUSES:
        raise QueryError(f"status: unknown status {status!r}; use {', '.join(ROW_STATUSES)}")
    if finding is not None and finding not in FINDING_CODES:
        raise QueryError(f"finding: unknown finding {finding!r}; use {', '.join(FINDING_CODES)}")


def _filtered(
    stmt: _Select,
    *,
    patient_id: str | None,
    accession: str | None,
    since: datetime | None,
    until: datetime | None,
    status: str | None,
    finding: str | None,
    joined: bool = False,
) -> _Select:
    """``stmt`` with the filters; ``joined`` = it already joins predictions."""
    _validate(status, finding)
    if patient_id is not None:
        stmt = stmt.where(EcgInstance.patient_id == patient_id)
    if accession is not None:
        stmt = stmt.where(EcgInstance.accession_number == accession)
    # Stored as UTC (naive on SQLite): compare in UTC without tzinfo there.
    if since is not None:
        stmt = stmt.where(EcgInstance.received_at >= as_utc(since))
    if until is not None:
        stmt = stmt.where(EcgInstance.received_at < as_utc(until))
    if status == RECEIVED:
        stmt = stmt.where(EcgInstance.status.in_((RECEIVED, PROCESSING)))
    elif status is not None:
        stmt = stmt.where(EcgInstance.status == status)
    if finding is not None:
        # findings is a JSON list of distinct codes; its text holds '"AF"'
        # exactly when AF is in it, on SQLite and PostgreSQL alike.
        if not joined:
            stmt = stmt.join(Prediction, Prediction.ecg_id == EcgInstance.id)
        stmt = stmt.where(cast(Prediction.findings, String).like(f'%"{finding}"%'))
    return stmt


def hl7_status(messages: list[Hl7Message]) -> str:
    """Status of the newest non-superseded message; ``not_sent`` when none."""
    live = [m for m in messages if m.status != HL7_SUPERSEDED]
    return max(live, key=lambda m: m.id).status if live else "not_sent"


#: The columns a row is built from (one SELECT, no ORM objects: the list is hot).
_ROW_COLUMNS = (
    EcgInstance.id,
    EcgInstance.sop_instance_uid,
    EcgInstance.study_instance_uid,
    EcgInstance.patient_id,
    EcgInstance.patient_name,
    EcgInstance.accession_number,
    EcgInstance.received_at,
    EcgInstance.status,
    EcgInstance.error,
    Prediction.id.label("prediction_id"),
    Prediction.probabilities,
    Prediction.findings,
    Prediction.quality_flags,
    Prediction.model_sha256,
    Prediction.demo_model,
    EcgInstance.measurements,
    EcgInstance.cart_statements,
    EcgInstance.ward,
)


def _row(v: Any, hl7: str, confirmation: Any = None) -> dict[str, Any]:
    """A row dict from anything with the :data:`_ROW_COLUMNS` attributes."""
    has_prediction = v.prediction_id is not None
    return {
        "id": v.id,
        "sop_instance_uid": v.sop_instance_uid,
        "study_instance_uid": v.study_instance_uid,
        "patient_id": v.patient_id,
        "patient_name": v.patient_name,
        "accession_number": v.accession_number,
        "received_at": iso(v.received_at),
        "status": RECEIVED if v.status == PROCESSING else v.status,
        "error": v.error,
        "probabilities": {k: (v.probabilities or {}).get(k) for k in FINDING_CODES} if has_prediction else None,
        "findings": list(v.findings or []) if has_prediction else [],
        "quality_flags": list(v.quality_flags or []) if has_prediction else [],
        "model_sha256": v.model_sha256 if has_prediction else None,
        "demo_model": bool(v.demo_model) if has_prediction else False,
        "hl7_status": hl7,
        # the cart's own reading; None when it was never read (processed before revision 0008)
        "measurements": v.measurements,
        "cart_statements": v.cart_statements,
        "ward": v.ward,
        # the physician over-read (gateway.admin.overread): unconfirmed, confirmed or corrected
        "confirmation": confirmation_state(confirmation),
    }


def _orm_values(ecg: EcgInstance) -> Any:
    from types import SimpleNamespace

    p = ecg.prediction
    return SimpleNamespace(
        id=ecg.id,
        sop_instance_uid=ecg.sop_instance_uid,
        study_instance_uid=ecg.study_instance_uid,
        patient_id=ecg.patient_id,
        patient_name=ecg.patient_name,
        accession_number=ecg.accession_number,
        received_at=ecg.received_at,
        status=ecg.status,
        error=ecg.error,
        prediction_id=p.id if p else None,
        probabilities=p.probabilities if p else None,
        findings=p.findings if p else None,
        quality_flags=p.quality_flags if p else None,
        model_sha256=p.model_sha256 if p else None,
        demo_model=p.demo_model if p else None,
        measurements=ecg.measurements,
        cart_statements=ecg.cart_statements,
        ward=ecg.ward,
    )


def _hl7_statuses(session: Session, ecg_ids: list[int]) -> dict[int, str]:
    if not ecg_ids:
        return {}
    stmt = (
        select(Hl7Message.ecg_id, Hl7Message.id, Hl7Message.status)
        .where(Hl7Message.ecg_id.in_(ecg_ids), Hl7Message.status != HL7_SUPERSEDED)
        .order_by(Hl7Message.id)
    )
    out: dict[int, str] = {}
    for ecg_id, _id, status in session.execute(stmt):
        out[ecg_id] = status  # ascending ids: the newest wins
    return out


def ecg_rows(
    session: Session,
    *,
    patient_id: str | None = None,
    accession: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    status: str | None = None,
    finding: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """ECGs matching every given filter, newest first, as row dicts (:data:`ROW_KEYS`).

    ``since`` is inclusive, ``until`` exclusive.  ``status="received"`` also
    matches ECGs a worker has claimed.  Raises :class:`QueryError` for an
    unknown status or finding code.
    """
    if limit < 0 or offset < 0:
        raise QueryError("limit and offset must not be negative")
    stmt = _filtered(
        select(*_ROW_COLUMNS).outerjoin(Prediction, Prediction.ecg_id == EcgInstance.id),
        patient_id=patient_id,
        accession=accession,
        since=since,
        until=until,
        status=status,
        finding=finding,
        joined=True,
    )
    stmt = stmt.order_by(EcgInstance.received_at.desc(), EcgInstance.id.desc()).limit(limit).offset(offset)
    found = session.execute(stmt).all()
    statuses = _hl7_statuses(session, [v.id for v in found])
    confirmations = latest_confirmations(session, [v.id for v in found])
    return [_row(v, statuses.get(v.id, "not_sent"), confirmations.get(v.id)) for v in found]


def count_ecgs(
    session: Session,
    *,
    patient_id: str | None = None,
    accession: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    status: str | None = None,
    finding: str | None = None,
) -> int:
    """How many ECGs :func:`ecg_rows` would return without limit and offset."""
    stmt = _filtered(
        select(func.count(EcgInstance.id)),
        patient_id=patient_id,
        accession=accession,
        since=since,
        until=until,
        status=status,
        finding=finding,
    )
    return int(session.scalar(stmt) or 0)


class WorklistFilters(TypedDict):
    """The filters of :func:`worklist_rows` and :func:`count_worklist` (None: not filtered)."""

    ward: str | None
    device: str | None
    finding: str | None


def _worklist(stmt: _Select, *, ward: str | None, device: str | None, finding: str | None) -> _Select:
    """Processed ECGs with an AI result and no confirmation yet, filtered."""
    _validate(None, finding)
    stmt = stmt.where(
        EcgInstance.status == PROCESSED, ~select(Confirmation.id).where(Confirmation.ecg_id == EcgInstance.id).exists()
    )
    if ward:
        stmt = stmt.where(EcgInstance.ward == ward)
    if device:
        # one text box for the cart: manufacturer, model, serial number or calling AE title
        needle = f"%{device.strip().lower()}%"
        stmt = stmt.where(
            func.lower(EcgInstance.manufacturer).like(needle)
            | func.lower(EcgInstance.device_model).like(needle)
            | func.lower(EcgInstance.device_serial).like(needle)
            | func.lower(EcgInstance.calling_ae).like(needle)
        )
    if finding is not None:
        stmt = stmt.where(cast(Prediction.findings, String).like(f'%"{finding}"%'))
    return stmt


def worklist_rows(
    session: Session,
    *,
    ward: str | None = None,
    device: str | None = None,
    finding: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """The over-read worklist: processed ECGs not yet confirmed, oldest first, as
    row dicts; ``ward`` exact, ``device`` a case-insensitive part of the cart's
    manufacturer, model, serial or AE title, ``finding`` an AI finding code."""
    if limit < 0 or offset < 0:
        raise QueryError("limit and offset must not be negative")
    stmt = _worklist(
        select(*_ROW_COLUMNS).join(Prediction, Prediction.ecg_id == EcgInstance.id),
        ward=ward,
        device=device,
        finding=finding,
    )
    stmt = stmt.order_by(EcgInstance.received_at, EcgInstance.id).limit(limit).offset(offset)
    found = session.execute(stmt).all()
    statuses = _hl7_statuses(session, [v.id for v in found])
    return [_row(v, statuses.get(v.id, "not_sent")) for v in found]


def count_worklist(
    session: Session, *, ward: str | None = None, device: str | None = None, finding: str | None = None
) -> int:
    """How many ECGs :func:`worklist_rows` would return without limit and offset."""
    stmt = _worklist(
        select(func.count(EcgInstance.id)).join(Prediction, Prediction.ecg_id == EcgInstance.id),
        ward=ward,
        device=device,
        finding=finding,
    )
    return int(session.scalar(stmt) or 0)


def wards(session: Session) -> list[str]:
    """The wards of the ECGs waiting for a reader (for the worklist's filter)."""
    stmt = _worklist(select(EcgInstance.ward).distinct(), ward=None, device=None, finding=None)
    return sorted(w for w in session.scalars(stmt.where(EcgInstance.ward.is_not(None))) if w)


def find_ecg(session: Session, id_or_uid: str | int) -> EcgInstance | None:
    """By database id (digits) or SOP Instance UID: its newest version not
    quarantined (a version refused at the door, or one for another patient,
    never stands for the UID), else its newest version."""
    key = str(id_or_uid).strip()
    # ASCII digits only ("²".isdigit() is True), and within INTEGER: no overflow in the driver
    if key.isascii() and key.isdigit() and len(key) <= 10 and int(key) <= 2**31 - 1:
        ecg = session.get(EcgInstance, int(key))
        if ecg is not None:
            return ecg
    stmt = select(EcgInstance).where(EcgInstance.sop_instance_uid == key).order_by(EcgInstance.version.desc())
    versions = session.scalars(stmt).all()
    return next((ecg for ecg in versions if not quarantined(ecg.flags)), versions[0] if versions else None)


def _message(m: Hl7Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "control_id": m.control_id,
        "status": m.status,
        "attempts": m.attempts,
        "last_error": m.last_error,
        "payload": m.payload,
        "ack": m.ack,
        "resend_of": m.resend_of,
        "created_at": iso(m.created_at),
        "last_attempt_at": iso(m.last_attempt_at),
        "delivered_at": iso(m.delivered_at),
        "next_attempt_at": iso(m.next_attempt_at),
    }


def _confirmation(c: Any) -> dict[str, Any]:
    return {
        "id": c.id,
        "version": c.version,
        "status": c.outcome,
        "by": c.username,
        "by_name": c.full_name,
        "hl7_id": c.hl7_id,
        "user_id": c.user_id,
        "at": iso(c.created_at),
        "findings": list(c.findings or []),
        "statements": list(c.statements or []),
        "comment": c.comment,
        "changes": c.changes,
        "result_status": c.result_status,
        "hl7_message_id": c.hl7_message_id,
    }


def ecg_detail(session: Session, id_or_uid: str) -> dict[str, Any] | None:
    """Everything about one ECG: the row keys plus device, file, prediction
    (thresholds, spread, normalisation report, timings) and HL7 messages.
    None when no ECG has that id or SOP Instance UID."""
    ecg = find_ecg(session, id_or_uid)
    if ecg is None:
        return None
    messages = list(ecg.messages)
    versions = history(session, ecg.id)
    detail = _row(_orm_values(ecg), hl7_status(messages), versions[-1] if versions else None)
    detail.update(
        {
            "db_status": ecg.status,
            "version": ecg.version,
            "sop_class_uid": ecg.sop_class_uid,
            "transfer_syntax_uid": ecg.transfer_syntax_uid,
            "series_instance_uid": ecg.series_instance_uid,
            "issuer_of_patient_id": ecg.issuer_of_patient_id,
            "patient_birth_date": ecg.patient_birth_date,
            "patient_sex": ecg.patient_sex,
            "placer_order_number": ecg.placer_order_number,
            "filler_order_number": ecg.filler_order_number,
            "manufacturer": ecg.manufacturer,
            "device_model": ecg.device_model,
            "device_serial": ecg.device_serial,
            "acquisition_datetime": ecg.acquisition_datetime,
            "calling_ae": ecg.calling_ae,
            "peer_address": ecg.peer_address,
            "sha256": ecg.sha256,
            "size_bytes": ecg.size_bytes,
            "flags": list(ecg.flags or []),
            #: What normalisation learned, also for rejected ECGs.
            "report": ecg.report,
            "attempts": ecg.attempts,
            "processed_at": iso(ecg.processed_at),
            "prediction": None,
            "hl7_messages": [_message(m) for m in messages],
            #: Every over-read version, oldest first (the AI's own output stays in "prediction").
            "confirmations": [_confirmation(c) for c in versions],
        }
    )
    p = ecg.prediction
    if p is not None:
        detail["prediction"] = {
            "thresholds": p.thresholds,
            "spread": p.spread,
            "model_files": p.model_files,
            "normalisation": ecg.report,  # stored once, on the ECG
            "leads": lead_names(ecg.report),
            "gateway_version": p.gateway_version,
            "timings": p.timings,
            "created_at": iso(p.created_at),
            "has_input": p.input_sha256 is not None,
            "input_sha256": p.input_sha256,
            "normaliser_version": p.normaliser_version,
        }
    return detail


def status_counts(session: Session) -> dict[str, int]:
    """ECG rows per database status (every status, zeros included)."""
    counts = dict.fromkeys(ECG_STATUSES, 0)
    for status, n in session.execute(select(EcgInstance.status, func.count()).group_by(EcgInstance.status)):
        counts[status] = n
    return counts


def hl7_counts(session: Session) -> dict[str, int]:
    """Outbox rows per status."""
    counts = dict.fromkeys(HL7_STATUSES, 0)
    for status, n in session.execute(select(Hl7Message.status, func.count()).group_by(Hl7Message.status)):
        counts[status] = n
    return counts


def report_summary(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines of a normalisation report an admin reads first (missing keys are left out)."""

    def get(*path: str) -> Any:
        value: Any = report
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def text(value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(str(v) for v in value) or "none"
        if isinstance(value, dict):
            return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
        return str(value)

    formats = {"dicom": "DICOM", "philips": "Philips Sierra XML", "aecg": "HL7 aECG"}
    document = get("source_document", "document")
    rows = [
        (
            "Source format",
            get("source_format")
            and formats.get(get("source_format"), get("source_format"))
            + (f" ({document})" if document and document != formats.get(get("source_format")) else ""),
        ),
        (
            "Source",
            get("source", "sampling_frequency_hz")
            and f"{get('source', 'sampling_frequency_hz')} Hz, {get('source', 'duration_s')} s, "
            f"{get('source', 'channels')} channels",
        ),
        ("Units", get("units")),
        (
            "Resampled",
            get("resample")
            and f"{get('resample', 'from_hz')} Hz -> {get('resample', 'to_hz')} Hz"
            f" (up {get('resample', 'up')}, down {get('resample', 'down')})",
        ),
        ("Padding", get("fit") and f"{get('fit', 'pad_before')} before, {get('fit', 'pad_after')} after"),
        ("Gain", get("gain") if get("gain") is not None else get("params", "gain")),
        ("Leads found", get("leads_found")),
        (
            "Leads identified by",
            get("lead_identification")
            and "; ".join(f"{how}: {', '.join(leads)}" for how, leads in get("lead_identification").items()),
        ),
        ("Leads derived", get("leads_derived")),
        ("Model lead order", get("output_leads")),
        ("Unusable leads", get("unusable_leads")),
        ("Gaps", get("gaps")),
        ("Quality flags", get("quality_flags")),
    ]
    return [(label, text(value)) for label, value in rows if value is not None and value != ""]
