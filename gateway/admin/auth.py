"""Admin authentication: the shared bearer token, web sessions, the bind-address rule
and the login form's ``next`` check.

Safe defaults: with no token configured the API and web view refuse every
request (403, telling the admin to set ``[admin] token``); only /healthz and
/metrics, which carry no PHI, answer.  Binding beyond loopback needs a token.

Web sessions are rows of ``admin_sessions``: the browser holds a random
session id, the database only its SHA-256, so a copy of the table opens no
session.  A session ends at its expiry (``[admin] session_hours``), at logout
(server-side revocation: an old cookie replayed later is refused) and when the
credential it was issued for changes (the admin token: ``credential_mac``).
The ``principal`` column names who is signed in: ``"token"`` today (the shared
admin token); per-user logins can store their own principal in the same table.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from gateway.config import AdminConfig
from gateway.store.models import AdminSession
from gateway.timeutil import as_utc, utcnow

#: Name of the web view's session cookie.
SESSION_COOKIE = "ecg_gateway_admin"
#: The principal of a session opened with the shared ``[admin] token``.
TOKEN_PRINCIPAL = "token"
#: Ended sessions are kept this long (who was signed in when), then deleted at a login.
SESSION_RETENTION = timedelta(days=30)
NO_TOKEN_MESSAGE = (
    "the admin API and web view are disabled until a token is set: "
    "set [admin] token in the configuration (or ECG_GATEWAY_ADMIN__TOKEN)"
)
DEFAULT_NEXT = "/ecgs"
MAX_NEXT_LENGTH = 2048
# One "/" then printable ASCII without space (0x20), backslash (0x5c) or DEL.
_LOCAL_PATH = re.compile(r"/[\x21-\x5b\x5d-\x7e]*")


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 / ::1 addresses."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_admin_bind(cfg: AdminConfig) -> str | None:
    """Error text when the admin listener would bind beyond loopback without a
    token (serve refuses to start), else None."""
    if not is_loopback(cfg.host) and not cfg.token:
        return (
            f"admin.host is {cfg.host}, not a loopback address, and admin.token is empty: "
            "set [admin] token (or ECG_GATEWAY_ADMIN__TOKEN) or bind admin.host to 127.0.0.1"
        )
    return None


def token_ok(given: str | None, token: str) -> bool:
    """Constant-time comparison; an empty configured token matches nothing."""
    if not token or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def bearer_ok(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>`` with the configured token."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and token_ok(value.strip(), token)


def safe_next(target: object, default: str = DEFAULT_NEXT) -> str:
    """``target`` when a browser can only read it as a path on this site, else ``default``.

    Browsers remove tab, CR and LF anywhere in a URL, strip leading C0 controls
    and spaces, and read ``\\`` as ``/``: ``/\\t/evil.example`` becomes
    ``//evil.example``, another host.  So only this passes: one leading ``/``,
    then printable ASCII without space or backslash, no ``//`` anywhere, at
    most ``MAX_NEXT_LENGTH`` characters.  (Percent-escapes stay escapes in a
    path: ``/%2F%2Fevil`` is a local path.)
    """
    if (isinstance(target, str) and len(target) <= MAX_NEXT_LENGTH and _LOCAL_PATH.fullmatch(target)
            and "//" not in target):
        return target
    return default


# --- web sessions ---------------------------------------------------------------------------------

def session_hash(session_id: str) -> str:
    """What the database stores of a session id (hex SHA-256)."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def credential_mac(credential: str, session_id: str) -> str:
    """Binds a session to the credential it was opened with: HMAC-SHA256 keyed
    with the credential over the session id.  A changed ``[admin] token`` no
    longer matches, so its sessions end; without the session id the value
    says nothing about the token."""
    return hmac.new(credential.encode("utf-8"), session_id.encode("utf-8"), hashlib.sha256).hexdigest()


def open_session(db: Session, *, principal: str, credential: str, client_address: str, hours: float,
                 replaces: str | None = None, now: datetime | None = None) -> str:
    """Store a new session and return its id (for the cookie; shown only once).

    ``replaces`` is the cookie the browser sent with the login, if any: that
    session is revoked (no two live sessions in one browser, no fixation).
    Sessions that ended more than ``SESSION_RETENTION`` ago are deleted.
    The caller commits."""
    now = as_utc(now or utcnow())
    if replaces:
        revoke_session(db, replaces, now=now)
    db.execute(delete(AdminSession).where(AdminSession.expires_at < now - SESSION_RETENTION))
    session_id = secrets.token_urlsafe(32)
    db.add(AdminSession(
        session_hash=session_hash(session_id), principal=principal,
        credential_mac=credential_mac(credential, session_id), client_address=client_address[:64],
        created_at=now, expires_at=now + timedelta(hours=hours),
    ))
    return session_id


def live_session(db: Session, session_id: str | None, credential: str,
                 now: datetime | None = None) -> AdminSession | None:
    """The session behind a cookie when it is live: known, not revoked, not
    expired and opened with ``credential``; else None."""
    if not session_id or not credential or len(session_id) > 128:
        return None
    row = db.scalars(select(AdminSession).where(AdminSession.session_hash == session_hash(session_id))).first()
    if row is None or row.revoked_at is not None or as_utc(row.expires_at) <= as_utc(now or utcnow()):
        return None
    if not row.credential_mac or not hmac.compare_digest(row.credential_mac, credential_mac(credential, session_id)):
        return None
    return row


def revoke_session(db: Session, session_id: str | None, now: datetime | None = None) -> bool:
    """Mark the session revoked (logout); True when a live row was revoked.  The caller commits."""
    if not session_id or len(session_id) > 128:
        return False
    result = db.execute(
        update(AdminSession)
        .where(AdminSession.session_hash == session_hash(session_id), AdminSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
    return bool(cast(CursorResult[Any], result).rowcount)
