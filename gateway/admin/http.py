"""What the admin API and the web view share: bounds of path parameters, the
client's address, the resend action.  Routes live in :mod:`gateway.admin.api`
and :mod:`gateway.admin.web`; :mod:`gateway.admin.app` assembles them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import HTTPException, Path, Request

from gateway.config import Config
from gateway.deliver.outbox import resend
from gateway.store.models import Hl7Message

#: Largest database id (INTEGER primary keys on PostgreSQL); ids outside 1..MAX_DB_ID are a 422.
MAX_DB_ID = 2**31 - 1
#: Largest ``offset`` (SQLite and PostgreSQL overflow at 2**63; no real list is near this).
MAX_OFFSET = 2**31 - 1
#: A path's ECG key is a database id or a SOP Instance UID (64 characters at most).
MAX_ECG_KEY = 64


def ecg_key_problem(ecg: str) -> str | None:
    """Why a path's ECG key is refused (a database id outside 1..MAX_DB_ID), else None.
    (Its length, at most MAX_ECG_KEY, is checked by the route's parameter.)"""
    if ecg.isascii() and ecg.isdigit() and not 1 <= int(ecg) <= MAX_DB_ID:
        return f"ecg: database id out of range 1..{MAX_DB_ID}"
    return None


def check_ecg_key(ecg: str) -> str:
    """``ecg`` when :func:`ecg_key_problem` finds nothing; HTTP 422 otherwise."""
    problem = ecg_key_problem(ecg)
    if problem:
        raise HTTPException(422, problem)
    return ecg


EcgKey = Annotated[
    str, Path(min_length=1, max_length=MAX_ECG_KEY, description="database id (1..2147483647) or SOP Instance UID")
]
DbId = Annotated[int, Path(ge=1, le=MAX_DB_ID)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def resend_message(
    session_factory: Callable[[], Any], cfg: Config, message_id: int, actor: str, *, address: str | None = None
) -> dict[str, Any]:
    """Queue a new copy of outbox message ``message_id`` (deliver's
    ``outbox.resend`` writes the audit row); returns the new message's summary.
    Raises LookupError when there is no such message."""
    with session_factory() as session:
        if session.get(Hl7Message, message_id) is None:
            raise LookupError(f"no HL7 message {message_id}")
        new = resend(session, message_id, actor, cfg.hl7, address=address)
        session.commit()
        return {
            "id": new.id,
            "ecg_id": new.ecg_id,
            "control_id": new.control_id,
            "status": new.status,
            "resend_of": new.resend_of,
        }


def page_links(path: str, form: dict[str, str], total: int, page_no: int, page_size: int) -> dict[str, Any]:
    """A paged web list's ``pages`` count and previous/next URLs (None at either end),
    which keep the list's filters: the template arguments every paged page shares."""
    query = {k: v for k, v in form.items() if v}
    pages = max(1, -(-total // page_size))
    return {
        "page_no": page_no,
        "pages": pages,
        "prev_url": f"{path}?" + urlencode({**query, "page": page_no - 1}) if page_no > 1 else None,
        "next_url": f"{path}?" + urlencode({**query, "page": page_no + 1}) if page_no < pages else None,
    }
