"""The physician over-read: a reader confirms or corrects the AI result of an ECG.

An AI result is preliminary until a reader confirms it.  A confirmation is a
new row of ``confirmations`` (every version kept, never updated): the
confirmed findings (any of the six, whatever the AI said), the reader's free
text statements and comment, who and when, and what changed against the AI
and against the previous version.  The AI's own output (``predictions``)
stays as it was.

In the confirmation's own transaction (:func:`confirm`):

* an ORU^R01 goes to the HL7 outbox: OBR-25/OBX-11 = F, or C when a final
  result for this order was already sent (an edit of a confirmation, or a
  site that sends AI results as final); OBR-32 principal result interpreter
  = the reader (identifier, name); the confirmed findings are the EKG
  impression (OBX-16 = the reader); the AI's probabilities and its own
  findings stay as AI observations;
* the PACS objects ([pacs] send) are queued again, drawn with "confirmed by
  X at T" (``pacs_messages.confirmation_id``);
* an audit row.

Pure helpers (:func:`confirmation_state`, :func:`outcome_of`,
:func:`changes_of`, :func:`next_result_status`) decide
the state; :func:`confirm` writes it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.findings import FINDINGS
from gateway.store.models import (
    CONFIRMED,
    CORRECTED,
    HL7_DELIVERED,
    HL7_PENDING,
    PROCESSED,
    Confirmation,
    EcgInstance,
    Hl7Message,
)
from gateway.timeutil import as_utc, utcnow

log = logging.getLogger("gateway.admin.overread")

if TYPE_CHECKING:
    from gateway.config import Config

#: The state of an ECG nobody has confirmed yet.
UNCONFIRMED = "unconfirmed"
CONFIRMATION_STATUSES = (UNCONFIRMED, CONFIRMED, CORRECTED)
#: Input bounds: what one confirmation may carry.
MAX_STATEMENTS = 20
MAX_STATEMENT_CHARS = 500
MAX_COMMENT_CHARS = 2000
#: The audit actions of a first confirmation and of a later version.
AUDIT_CONFIRM = "ecg_confirm"
AUDIT_EDIT = "ecg_confirm_edit"


class ConfirmError(ValueError):
    """A confirmation that cannot be made; ``status`` is the HTTP answer
    (404 unknown ECG, 409 wrong state, 422 bad input, 403 no named reader)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Reader:
    """Who confirms: a user record's values (``gateway.admin`` users)."""

    username: str
    full_name: str | None = None
    #: The identifier sent in OBR-32/OBX-16 (the EHR's id of the physician).
    hl7_id: str | None = None
    user_id: int | None = None


# --- pure helpers -----------------------------------------------------------------------------------


def ordered_findings(codes: Iterable[str]) -> list[str]:
    """``codes`` without repeats, in the model's output order; raises
    :class:`ConfirmError` (422) naming an unknown code."""
    given = list(codes)
    unknown = [c for c in given if c not in FINDINGS]
    if unknown:
        raise ConfirmError(f"findings: unknown finding code {unknown[0]!r}; use {', '.join(FINDINGS)}", 422)
    return [c for c in FINDINGS if c in set(given)]


# NUL (PostgreSQL text refuses it) and unpaired UTF-16 surrogates (no UTF-8 form: the
# database driver and the pages cannot encode them) cannot be stored: 422, not a 500.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_storable(text: str, what: str) -> str:
    """``text`` when it can be stored and shown, else :class:`ConfirmError` (422) naming ``what``."""
    if _UNSTORABLE.search(text):
        raise ConfirmError(f"{what}: a NUL character or an unpaired surrogate (not text)", 422)
    return text


def clean_statements(statements: Iterable[Any]) -> list[str]:
    """Free-text statements stripped, empty ones dropped; 422 beyond the bounds."""
    out = []
    for text in statements:
        if not isinstance(text, str):
            raise ConfirmError("statements: each statement must be text", 422)
        text = check_storable(text, "statements").strip()
        if len(text) > MAX_STATEMENT_CHARS:
            raise ConfirmError(f"statements: a statement is longer than {MAX_STATEMENT_CHARS} characters", 422)
        if text:
            out.append(text)
    if len(out) > MAX_STATEMENTS:
        raise ConfirmError(f"statements: more than {MAX_STATEMENTS} statements", 422)
    return out


def outcome_of(ai_findings: Iterable[str], findings: Iterable[str]) -> str:
    """CONFIRMED when the reader kept exactly the AI's findings, else CORRECTED
    (statements and comment add to the report; they do not correct the AI)."""
    return CONFIRMED if set(ai_findings) == set(findings) else CORRECTED


def changes_of(
    ai_findings: Sequence[str], new: Confirmation | Any, previous: Confirmation | Any | None
) -> dict[str, Any]:
    """What changed: against the AI's findings, and against the previous version (None for the first)."""

    def diff(old: Iterable[str], now: Iterable[str]) -> dict[str, list[str]]:
        old_set, now_set = set(old), set(now)
        return {
            "added": [c for c in FINDINGS if c in now_set - old_set],
            "removed": [c for c in FINDINGS if c in old_set - now_set],
        }

    out: dict[str, Any] = {"vs_ai": diff(ai_findings, new.findings), "vs_previous": None}
    if previous is not None:
        before, after = list(previous.statements or []), list(new.statements or [])
        out["vs_previous"] = {
            **diff(previous.findings or [], new.findings),
            "statements_added": [t for t in after if t not in before],
            "statements_removed": [t for t in before if t not in after],
            "comment_changed": (previous.comment or "") != (new.comment or ""),
        }
    return out


def confirmation_state(latest: Confirmation | Any | None) -> dict[str, Any]:
    """The ``confirmation`` value of an API row: ``{"status": "unconfirmed" |
    "confirmed" | "corrected", "by", "by_name", "at", "findings", "version"}``
    from the newest confirmation version (None: unconfirmed)."""
    if latest is None:
        return {"status": UNCONFIRMED, "by": None, "by_name": None, "at": None, "findings": None, "version": None}
    at = as_utc(latest.created_at)
    return {
        "status": latest.outcome,
        "by": latest.username,
        "by_name": latest.full_name,
        "at": at.isoformat() if at else None,
        "findings": list(latest.findings or []),
        "version": latest.version,
    }


def obr25_of(payload: str | None) -> str | None:
    """OBR-25 (result status) of a stored ORU, or None."""
    for segment in (payload or "").replace("\n", "\r").split("\r"):
        fields = segment.split("|")
        if fields[0] == "OBR":
            return fields[25] if len(fields) > 25 else None
    return None


def next_result_status(sent_statuses: Iterable[str | None], earlier_confirmations: int) -> Literal["F", "C"]:
    """OBR-25 of a confirmation's ORU: C when a final result (F or C) for this
    order was already sent or queued, or the ECG was confirmed before; else F
    (a preliminary AI read that was never final is completed, not corrected)."""
    if earlier_confirmations > 0 or any(s in ("F", "C") for s in sent_statuses):
        return "C"
    return "F"


# --- database ---------------------------------------------------------------------------------------


def latest_confirmations(session: Session, ecg_ids: Sequence[int]) -> dict[int, Confirmation]:
    """The newest confirmation version of each ECG that has one."""
    if not ecg_ids:
        return {}
    newest = (
        select(Confirmation.ecg_id, func.max(Confirmation.version).label("v"))
        .where(Confirmation.ecg_id.in_(list(ecg_ids)))
        .group_by(Confirmation.ecg_id)
        .subquery()
    )
    rows = session.scalars(
        select(Confirmation).join(
            newest, (Confirmation.ecg_id == newest.c.ecg_id) & (Confirmation.version == newest.c.v)
        )
    )
    return {row.ecg_id: row for row in rows}


def history(session: Session, ecg_id: int) -> list[Confirmation]:
    """Every confirmation version of an ECG, oldest first."""
    return list(
        session.scalars(select(Confirmation).where(Confirmation.ecg_id == ecg_id).order_by(Confirmation.version))
    )


def confirm(
    session: Session,
    ecg: EcgInstance,
    reader: Reader,
    cfg: Config,
    *,
    findings: Iterable[str],
    statements: Iterable[Any] = (),
    comment: str | None = None,
    actor: str,
    address: str | None = None,
    report_pdf: Callable[[Confirmation], bytes | None] | None = None,
    now: datetime | None = None,
) -> Confirmation:
    """Record a new confirmation version of ``ecg`` by ``reader`` and queue
    its ORU, its PACS objects and an audit row (``actor`` from ``address``),
    all in the caller's transaction (the caller commits; nothing is sent
    before it does).

    ``report_pdf``: draws the re-issued PDF of the new row for the ORU
    (``[hl7] embed_pdf``; None leaves it out).  Raises :class:`ConfirmError`
    (409 when the ECG has no AI result, 422 for bad input, 403 for a reader
    without a name)."""
    from dataclasses import replace

    from gateway.deliver.oru import over_read_from
    from gateway.deliver.outbox import enqueue_result, result_options
    from gateway.deliver.pacs import enqueue_pacs
    from gateway.store.audit import audit

    if not reader.username:
        raise ConfirmError("a confirmation needs a named reader (a user login, not the shared admin token)", 403)
    prediction = ecg.prediction
    if ecg.status != PROCESSED or prediction is None:
        raise ConfirmError(f"ECG {ecg.id} has no AI result to confirm (status {ecg.status})", 409)
    codes = ordered_findings(findings)
    texts = clean_statements(statements)
    note = check_storable(comment or "", "comment").strip()
    if len(note) > MAX_COMMENT_CHARS:
        raise ConfirmError(f"comment: longer than {MAX_COMMENT_CHARS} characters", 422)

    previous_rows = history(session, ecg.id)
    previous = previous_rows[-1] if previous_rows else None
    options = result_options(session, ecg)
    order_ids = [ecg.id] + ([int(options.filler_id)] if options.filler_id and options.filler_id.isdigit() else [])
    sent = [
        obr25_of(m.payload)
        for m in session.scalars(
            select(Hl7Message).where(
                Hl7Message.ecg_id.in_(order_ids), Hl7Message.status.in_((HL7_PENDING, HL7_DELIVERED))
            )
        )
    ]
    status = next_result_status(sent, len(previous_rows))
    ai = list(prediction.findings or [])
    row = Confirmation(
        ecg_id=ecg.id,
        version=(previous.version + 1) if previous else 1,
        user_id=reader.user_id,
        username=reader.username[:200],
        full_name=(reader.full_name or None) and reader.full_name[:200],
        hl7_id=(reader.hl7_id or None) and reader.hl7_id[:64],
        findings=codes,
        statements=texts,
        comment=note or None,
        outcome=outcome_of(ai, codes),
        result_status=status,
        created_at=as_utc(now or utcnow()),
    )
    row.changes = changes_of(ai, row, previous)
    session.add(row)
    session.flush()  # the unique (ecg_id, version) refuses a concurrent second version here
    pdf = report_pdf(row) if report_pdf is not None and cfg.hl7.enabled and cfg.hl7.embed_pdf else None
    message = enqueue_result(
        session,
        ecg,
        prediction,
        cfg.hl7,
        options=replace(
            options, result_status=status, report_pdf=pdf, over_read=over_read_from(row, cfg.hl7.interpreter_authority)
        ),
    )
    if message is not None:
        session.flush()
        row.hl7_message_id = message.id
    for pacs in enqueue_pacs(session, ecg, cfg.pacs):
        pacs.confirmation_id = row.id
    audit(
        session,
        actor,
        AUDIT_EDIT if previous else AUDIT_CONFIRM,
        f"ecg:{ecg.id}",
        address=address,
        confirmation_id=row.id,
        version=row.version,
        outcome=row.outcome,
        result_status=status,
        findings=codes,
        changes=row.changes,
        hl7_message_id=row.hl7_message_id,
    )
    return row


def confirm_ecg(
    session_factory: Callable[[], Session],
    cfg: Config,
    ecg_id: int,
    reader: Reader,
    *,
    findings: Iterable[str],
    statements: Iterable[Any] = (),
    comment: str | None = None,
    actor: str,
    address: str | None = None,
) -> dict[str, Any]:
    """:func:`confirm` in its own transaction, for the API and the web form:
    the ECG row is locked (PostgreSQL) so two readers confirming at once make
    versions 1 and 2, never two 1s (and where the lock is not available, the
    unique version refuses the second: 409).  Returns the new state
    (:func:`confirmation_state` plus ``id``, ``ecg_id``, ``result_status``,
    ``hl7_message_id``).  Raises :class:`ConfirmError`."""
    from sqlalchemy.exc import IntegrityError

    def draw(row: Confirmation) -> bytes | None:
        # the re-issued PDF for the ORU ([hl7] embed_pdf): "confirmed by X at T"
        from gateway.rebuild import report_pdf

        if ecg is None:
            return None
        try:
            return report_pdf(ecg, cfg.storage.spool_dir, confirmation=row)
        except Exception:  # noqa: BLE001 - the result must not wait for its picture
            log.exception("ECG id=%s: the confirmed PDF report for the ORU could not be built; sent without it", ecg_id)
            return None

    try:
        with session_factory() as session, session.begin():
            ecg = session.get(EcgInstance, ecg_id, with_for_update=True)
            if ecg is None:
                raise ConfirmError(f"no ECG with id {ecg_id}", 404)
            row = confirm(
                session,
                ecg,
                reader,
                cfg,
                findings=findings,
                statements=statements,
                comment=comment,
                actor=actor,
                address=address,
                report_pdf=draw,
            )
            out = {
                **confirmation_state(row),
                "id": row.id,
                "ecg_id": ecg.id,
                "result_status": row.result_status,
                "hl7_message_id": row.hl7_message_id,
            }
            sop = ecg.sop_instance_uid
    except IntegrityError:
        raise ConfirmError(
            f"ECG {ecg_id} was confirmed by someone else at the same moment: reload and check", 409
        ) from None
    log.info(
        "ECG id=%s sop=%s: over-read version %s by %s: %s, OBR-25 %s, findings=%s",
        ecg_id,
        sop,
        out["version"],
        reader.username,
        out["status"],
        out["result_status"],
        ",".join(out["findings"]) or "none",
    )
    return out
