"""The outbox: ``hl7_messages`` rows are the queue.

A result is built, validated and stored in the caller's transaction, before
anything is sent; the sender (``sender.py``) marks a row delivered only on a
matching AA.  An ECG whose message cannot be built gets a ``failed`` row that
says why, so nothing disappears silently.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.deliver.oru import (
    OruBuildError,
    OruOptions,
    ResultStatus,
    build_oru,
    embedded_pdf,
    order_key,
    over_read_from,
    result_status_of,
)
from gateway.store.audit import audit
from gateway.store.models import (
    HL7_DELIVERED,
    HL7_FAILED,
    HL7_PENDING,
    HL7_SUPERSEDED,
    REJECTED,
    Confirmation,
    Hl7Message,
)
from gateway.store.versions import corrected_version
from gateway.timeutil import utcnow

if TYPE_CHECKING:
    from gateway.config import Hl7Config
    from gateway.store.models import EcgInstance, Prediction

log = logging.getLogger("gateway.deliver")


def new_control_id() -> str:
    """A unique MSH-10 (20 hex digits: the v2.5.1 length of MSH-10)."""
    return uuid.uuid4().hex[:20]


def result_options(session: Session, ecg: EcgInstance) -> OruOptions:
    """A correction (OBR-25/OBX-11 = C, the corrected version's filler order
    id) when an earlier version of the instance has a result in the outbox,
    else a final result (``gateway.store.versions.corrected_version``)."""
    return correction_options(corrected_version(session, ecg))


def correction_options(corrected_id: int | None) -> OruOptions:
    """A correction of the result of ecg ``corrected_id`` (OBR-25/OBX-11 = C,
    repeating that version's filler order id), or a final result when None."""
    return OruOptions() if corrected_id is None else OruOptions(result_status="C", filler_id=str(corrected_id))


def final_result_sent(session: Session, ecg_ids: list[int]) -> bool:
    """Whether a final result (OBR-25 F or C) for any of these ECGs is in the
    outbox, pending or delivered (the EHR has it or will)."""
    payloads = session.scalars(
        select(Hl7Message.payload).where(
            Hl7Message.ecg_id.in_(ecg_ids), Hl7Message.status.in_((HL7_PENDING, HL7_DELIVERED))
        )
    )
    return any(result_status_of(p) in ("F", "C") for p in payloads)


def ai_result_status(
    session: Session, ecg: EcgInstance, prediction: Prediction | None, cfg: Hl7Config, options: OruOptions
) -> ResultStatus:
    """OBR-25/OBX-11 of the gateway's own result for ``ecg`` (an AI read, or a
    rejection when ``prediction`` is None); a physician's over-read
    (``options.over_read``) keeps the status its caller chose.

    An AI read is P (preliminary) when ``[hl7] ai_result_status = "P"`` (the
    default) or the model is a demo, else F.  A rejection is F.  A correction
    (``options.result_status`` C: a later version of an instance whose result
    went out) stays C only when a final result (F or C) was sent for the
    corrected order: C replaces a final result (HL7 table 0085), a
    preliminary is simply followed by the new result (P, or F)."""
    if options.over_read is not None:
        return options.result_status
    preliminary = prediction is not None and (cfg.ai_result_status == "P" or prediction.demo_model)
    own: ResultStatus = "P" if preliminary else "F"
    if options.result_status == "C":
        corrected = [int(options.filler_id)] if options.filler_id and options.filler_id.isdigit() else []
        if not corrected or final_result_sent(session, corrected):
            return "C"
        return own
    return own if options.result_status == "F" else options.result_status


def enqueue_result(
    session: Session,
    ecg: EcgInstance,
    prediction: Prediction | None,
    cfg: Hl7Config,
    *,
    options: OruOptions = OruOptions(),
) -> Hl7Message | None:
    """Add the ORU^R01 for ``ecg`` to the outbox in the caller's transaction
    (no commit).  None when HL7 is disabled.

    ``prediction`` is None for a rejected ECG (``ecg.error`` is the reason).
    ``options``: e.g. a correction (OBR-25 C), see :class:`OruOptions`; the
    status actually sent is :func:`ai_result_status` (an AI read is
    preliminary by default).
    When the message cannot be built (e.g. no Patient ID, a value too long
    for HL7), the row is stored as ``failed`` with the reason in
    ``last_error`` instead of raising, so the ECG's own transaction commits.
    """
    if not cfg.enabled:
        return None
    control_id = new_control_id()
    status, payload, error = HL7_PENDING, "", None
    try:
        options = replace(options, result_status=ai_result_status(session, ecg, prediction, cfg, options))
        payload = build_oru(ecg, prediction, cfg, control_id, options=options)
    except OruBuildError as exc:
        status, error = HL7_FAILED, f"cannot build ORU^R01: {exc}"
        log.warning("ecg %s (SOP %s): %s", ecg.id, ecg.sop_instance_uid, error)
    msg = Hl7Message(
        ecg=ecg,
        control_id=control_id,
        order_key=order_key(ecg),
        payload=payload,
        status=status,
        attempts=0,
        last_error=error,
        next_attempt_at=utcnow(),
        created_at=utcnow(),
    )
    session.add(msg)
    return msg


def _confirmation_of(session: Session, message: Hl7Message) -> Confirmation | None:
    """The over-read whose ORU ``message`` is (or resends), else None."""
    root, hops = message, 0
    while root.resend_of is not None and hops < 10_000:  # a resend of a resend ... of the first
        earlier = session.get(Hl7Message, root.resend_of)
        if earlier is None:
            break
        root, hops = earlier, hops + 1
    return session.scalar(select(Confirmation).where(Confirmation.hl7_message_id == root.id))


def resend(
    session: Session,
    message_id: int,
    actor: str,
    cfg: Hl7Config,
    *,
    options: OruOptions | None = None,
    address: str | None = None,
) -> Hl7Message:
    """Queue a new copy of message ``message_id`` with a new control id.

    The message is rebuilt from the stored ECG and prediction with the current
    configuration (MSH-7 and MSH-10 change anyway).  A pending or failed
    original becomes ``superseded``; a delivered one stays delivered (the
    receiver gets a second, deliberate copy).  Writes an audit row (``actor``
    from ``address``); the caller commits.

    ``options`` default: as the first build (:func:`result_options`, with the
    original's OBR-25), so a correction is resent as a correction, a
    preliminary as a preliminary, and a physician's confirmation as that
    confirmation (its OBR-25, OBR-32 and findings).

    Raises LookupError for an unknown id and OruBuildError when the message
    cannot be built (nothing is changed then).
    """
    old = session.get(Hl7Message, message_id)
    if old is None:
        raise LookupError(f"no HL7 message with id {message_id}")
    ecg = old.ecg
    prediction = None if ecg.status == REJECTED else ecg.prediction
    control_id = new_control_id()
    if options is None:
        options = result_options(session, ecg)
        confirmation = _confirmation_of(session, old)
        if confirmation is not None:  # a physician's over-read is resent as one (OBR-32, its F or C)
            status: Literal["F", "C"] = "C" if confirmation.result_status == "C" else "F"
            options = replace(
                options, result_status=status, over_read=over_read_from(confirmation, cfg.interpreter_authority)
            )
        else:  # the gateway's own result: a correction stays a correction, a preliminary preliminary
            options = replace(
                options,
                result_status=result_status_of(old.payload) or ai_result_status(session, ecg, prediction, cfg, options),
            )
    if cfg.embed_pdf and prediction is not None and options.report_pdf is None:
        # the PDF the first message carried (the outbox has no model input to draw a new one)
        options = replace(options, report_pdf=embedded_pdf(old.payload))
    payload = build_oru(ecg, prediction, cfg, control_id, options=options)
    old_status = old.status
    if old.status in (HL7_PENDING, HL7_FAILED):
        old.status = HL7_SUPERSEDED
    new = Hl7Message(
        ecg=ecg,
        control_id=control_id,
        order_key=order_key(ecg),
        payload=payload,
        status=HL7_PENDING,
        attempts=0,
        resend_of=old.id,
        next_attempt_at=utcnow(),
        created_at=utcnow(),
    )
    session.add(new)
    session.flush()
    audit(
        session,
        actor,
        "hl7_resend",
        f"hl7_message:{old.id}",
        ecg_id=ecg.id,
        address=address,
        old_control_id=old.control_id,
        old_status=old_status,
        new_message_id=new.id,
        new_control_id=control_id,
    )
    log.info("hl7 message %s resent as %s (ecg %s) by %s", old.id, new.id, ecg.id, actor)
    return new
