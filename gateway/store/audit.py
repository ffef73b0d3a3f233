"""The audit trail: who looked at patient data, exported it or acted on a
result, who signed in (or failed to), when and from where.

The application only adds rows (:func:`audit`); nothing updates or deletes
them (``db prune`` keeps them too).  :func:`audit_rows` reads them for
``ecg-gateway audit list`` and the admin web page.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.store.models import AuditLog

#: Longest actor / address stored (the columns' sizes).
MAX_ACTOR = 200
MAX_ADDRESS = 64


def cli_actor() -> str:
    """``cli:<os user>`` for commands run from a shell."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return f"cli:{user}"


def _ecg_from_target(target: str | None) -> int | None:
    """The id in a target ``"ecg:<id>"``, else None."""
    if target and target.startswith("ecg:"):
        number = target[4:]
        if number.isascii() and number.isdigit() and 0 < int(number) < 2**31:
            return int(number)
    return None


def audit(
    session: Session,
    actor: str,
    action: str,
    target: str | None = None,
    *,
    ecg_id: int | None = None,
    address: str | None = None,
    **detail: Any,
) -> AuditLog:
    """Add one audit row (the caller commits, with the action it records).

    ``actor``: who (a user name, ``token``, ``cli:<os user>``...); ``action``:
    what (``view_ecg``, ``export_report``, ``resend``, ``login``, ...);
    ``ecg_id``: the ECG concerned (taken from a ``target`` of ``"ecg:<id>"``
    when not given); ``address``: where the request came from; ``detail``:
    JSON-able particulars (never a password or token)."""
    row = AuditLog(
        actor=actor[:MAX_ACTOR],
        action=action,
        target=target,
        ecg_id=ecg_id if ecg_id is not None else _ecg_from_target(target),
        address=address[:MAX_ADDRESS] if address else None,
        detail=detail,
    )
    session.add(row)
    return row


@dataclass(frozen=True)
class AuditFilters:
    """What :func:`audit_rows` selects (None = any)."""

    actor: str | None = None
    ecg_id: int | None = None
    action: str | None = None
    since: datetime | None = None


def _where(stmt: Any, filters: AuditFilters) -> Any:
    if filters.actor is not None:
        stmt = stmt.where(AuditLog.actor == filters.actor)
    if filters.ecg_id is not None:
        stmt = stmt.where(AuditLog.ecg_id == filters.ecg_id)
    if filters.action is not None:
        stmt = stmt.where(AuditLog.action == filters.action)
    if filters.since is not None:
        stmt = stmt.where(AuditLog.at >= filters.since)
    return stmt


def audit_rows(
    session: Session, filters: AuditFilters = AuditFilters(), *, limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    """Audit rows newest first, as dicts (``id``, ``at``, ``actor``, ``action``,
    ``target``, ``ecg_id``, ``address``, ``detail``)."""
    stmt = _where(select(AuditLog), filters).order_by(AuditLog.id.desc()).limit(limit).offset(offset)
    return [
        {
            "id": r.id,
            "at": r.at,
            "actor": r.actor,
            "action": r.action,
            "target": r.target,
            "ecg_id": r.ecg_id,
            "address": r.address,
            "detail": r.detail,
        }
        for r in session.scalars(stmt)
    ]


def count_audit_rows(session: Session, filters: AuditFilters = AuditFilters()) -> int:
    """How many rows :func:`audit_rows` selects without limit."""
    return int(session.scalar(_where(select(func.count(AuditLog.id)), filters)) or 0)


def recent_count(
    session: Session, action: str, since: datetime, *, actor: str | None = None, address: str | None = None
) -> int:
    """Rows of ``action`` at or after ``since`` by ``actor`` and/or from ``address``
    (e.g. failed logins, for the login rate limit: the database is shared by
    every process, so the limit holds across them)."""
    stmt = select(func.count(AuditLog.id)).where(AuditLog.action == action, AuditLog.at >= since)
    if actor is not None:
        stmt = stmt.where(AuditLog.actor == actor[:MAX_ACTOR])
    if address is not None:
        stmt = stmt.where(AuditLog.address == address[:MAX_ADDRESS])
    return int(session.scalar(stmt) or 0)
