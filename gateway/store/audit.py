"""The audit trail: who exported PHI or acted on a result, and when."""

from __future__ import annotations

import getpass
from typing import Any

from sqlalchemy.orm import Session

from gateway.store.models import AuditLog


def cli_actor() -> str:
    """``cli:<os user>`` for commands run from a shell."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return f"cli:{user}"


def audit(session: Session, actor: str, action: str, target: str | None, **detail: Any) -> AuditLog:
    """Add one audit row (the caller commits, with the action it records)."""
    row = AuditLog(actor=actor, action=action, target=target, detail=detail)
    session.add(row)
    return row
