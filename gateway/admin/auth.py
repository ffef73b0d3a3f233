"""Admin authentication: who is calling (:class:`Principal`, from a web
session or a bearer token), what their role allows (:func:`require_role`),
CSRF tokens for forms, web sessions, the bind-address rule and the login
form's ``next`` check.

Credentials: per-user web logins and per-user API tokens
(:mod:`gateway.admin.users`), and the bootstrap ``[admin] token`` (the
admin role, ``[admin] token_enabled = false`` turns it off).  Safe
defaults: with neither a token nor a user the API and web view refuse every
request (403, telling the admin to set ``[admin] token`` or add a user);
only /healthz and /metrics, which carry no PHI, answer.  Binding beyond
loopback needs a token (or ``token_enabled = false``: users only).

Roles, weakest first: ``viewer`` reads; ``reader`` also confirms and edits
results; ``admin`` also resends, exports and manages users.  Routes declare
the weakest role they need with ``Depends(require_role("reader"))`` and get
the :class:`Principal`.

CSRF: a state-changing request (POST, PUT, PATCH, DELETE) signed in by the
session cookie must carry the session's CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``; templates put
:func:`csrf_token` into a hidden field); :func:`require_role` checks it
(403 otherwise).  Bearer-token requests need none: a browser never adds
that header by itself.  The token is an HMAC of the session id, so it needs
no storage and dies with the session.  The login form, before any session,
carries a double-submit token (a random cookie and the same value in the
form).

Web sessions are rows of ``admin_sessions``: the browser holds a random
session id, the database only its SHA-256, so a copy of the table opens no
session.  A session ends at its expiry (``[admin] session_hours``), at logout
(server-side revocation: an old cookie replayed later is refused) and when the
credential it was issued for changes (the admin token: ``credential_mac``).
The ``principal`` column names who is signed in: ``"token"`` (the bootstrap
admin token) or the user name, with ``user_id``; a user's session is bound to
their password hash, so a new password (or ``users disable``) ends it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from sqlalchemy import CursorResult, delete, exists, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from gateway.config import AdminConfig
from gateway.store.audit import audit
from gateway.store.models import ROLES, AdminSession, User
from gateway.timeutil import as_utc, utcnow

#: Name of the web view's session cookie.
SESSION_COOKIE = "ecg_gateway_admin"
#: The principal of a session opened with the shared ``[admin] token``.
TOKEN_PRINCIPAL = "token"
#: Ended sessions are kept this long (who was signed in when), then deleted at a login.
SESSION_RETENTION = timedelta(days=30)
NO_TOKEN_MESSAGE = (
    "the admin API and web view are disabled until a credential exists: "
    "set [admin] token in the configuration (or ECG_GATEWAY_ADMIN__TOKEN) "
    "or add a user with `ecg-gateway users add NAME --role admin`"
)
#: Name of the login form's double-submit CSRF cookie (before any session exists).
LOGIN_CSRF_COOKIE = "ecg_gateway_login"
#: Form field and header that carry the CSRF token.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
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
    if not is_loopback(cfg.host) and not cfg.token and cfg.token_enabled:
        return (
            f"admin.host is {cfg.host}, not a loopback address, and admin.token is empty: "
            "set [admin] token (or ECG_GATEWAY_ADMIN__TOKEN), or bind admin.host to 127.0.0.1, "
            "or set [admin] token_enabled = false (user logins only)"
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
    if (
        isinstance(target, str)
        and len(target) <= MAX_NEXT_LENGTH
        and _LOCAL_PATH.fullmatch(target)
        and "//" not in target
    ):
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


def open_session(
    db: Session,
    *,
    principal: str,
    credential: str,
    client_address: str,
    hours: float,
    replaces: str | None = None,
    now: datetime | None = None,
    user_id: int | None = None,
) -> str:
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
    db.add(
        AdminSession(
            session_hash=session_hash(session_id),
            principal=principal,
            user_id=user_id,
            credential_mac=credential_mac(credential, session_id),
            client_address=client_address[:64],
            created_at=now,
            expires_at=now + timedelta(hours=hours),
        )
    )
    return session_id


def live_session(
    db: Session, session_id: str | None, credential: str, now: datetime | None = None
) -> AdminSession | None:
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


# --- who is calling: Principal, roles, CSRF -------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who a request is from: a user (``user_id`` set) or the bootstrap admin
    token (``user_id`` None, username ``"token"``).  ``via``: ``"web"``
    (session cookie) or ``"api"`` (bearer token); ``address``: the client's."""

    user_id: int | None
    username: str
    role: str
    full_name: str | None = None
    hl7_id: str | None = None
    via: str = "web"
    address: str = "unknown"

    @property
    def actor(self) -> str:
        """The audit log's ``actor`` for this principal (the user name, or ``token``)."""
        return self.username

    def has_role(self, role: str) -> bool:
        """True when this principal's role is ``role`` or stronger."""
        return ROLES.index(self.role) >= ROLES.index(role)


def user_principal(user: User, *, via: str, address: str) -> Principal:
    return Principal(
        user_id=user.id,
        username=user.username,
        role=user.role,
        full_name=user.full_name,
        hl7_id=user.hl7_id,
        via=via,
        address=address,
    )


def token_principal(*, via: str, address: str) -> Principal:
    return Principal(
        user_id=None, username=TOKEN_PRINCIPAL, role="admin", full_name=None, hl7_id=None, via=via, address=address
    )


class AuthError(Exception):
    """Not signed in (401) or not allowed (403); :mod:`gateway.admin.app` turns
    it into JSON under /api and a login redirect or a page elsewhere."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class AuthContext:
    """What the dependencies need; :func:`gateway.admin.app.create_app` puts it in ``app.state.auth``."""

    cfg: AdminConfig
    session_factory: Callable[[], Any]

    @property
    def token(self) -> str:
        """The bootstrap admin token, "" when unset or disabled."""
        return self.cfg.token if self.cfg.token_enabled else ""


def auth_context(request: Request) -> AuthContext:
    return cast(AuthContext, request.app.state.auth)


def request_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def credentials_exist(db: Session, token: str) -> bool:
    """Whether anything can sign in: the bootstrap token or an enabled user."""
    return bool(token) or bool(db.scalar(select(exists().where(User.disabled_at.is_(None)))))


def session_user_principal(
    db: Session, session_id: str | None, token: str, *, address: str, now: datetime | None = None
) -> Principal | None:
    """The principal of a live web session (a user's, or the bootstrap token's), else None."""
    if not session_id or len(session_id) > 128:
        return None
    row = db.scalars(select(AdminSession).where(AdminSession.session_hash == session_hash(session_id))).first()
    if row is None or row.revoked_at is not None or as_utc(row.expires_at) <= as_utc(now or utcnow()):
        return None
    if row.user_id is None:
        if token and live_session(db, session_id, token, now) is not None and row.principal == TOKEN_PRINCIPAL:
            return token_principal(via="web", address=address)
        return None
    user = db.get(User, row.user_id)
    if user is None or user.disabled_at is not None or not user.password_hash or not row.credential_mac:
        return None
    if not hmac.compare_digest(row.credential_mac, credential_mac(user.password_hash, session_id)):
        return None
    return user_principal(user, via="web", address=address)


def resolve_principal(request: Request) -> Principal | None:
    """Who the request is from: ``Authorization: Bearer`` (the bootstrap token
    or a user's API token) when the header is there, else the session cookie;
    None when neither is valid.  Cached on ``request.state.principal``."""
    if hasattr(request.state, "principal"):
        return cast(Principal | None, request.state.principal)
    ctx = auth_context(request)
    address = request_address(request)
    principal: Principal | None = None
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            if ctx.token and token_ok(value, ctx.token):
                principal = token_principal(via="api", address=address)
            else:
                from gateway.admin.users import token_user

                with ctx.session_factory() as db:
                    user = token_user(db, value)
                    principal = user_principal(user, via="api", address=address) if user is not None else None
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            with ctx.session_factory() as db:
                principal = session_user_principal(db, cookie, ctx.token, address=address)
    request.state.principal = principal
    return principal


def _csrf_for_session(session_id: str) -> str:
    return hmac.new(session_id.encode("utf-8"), b"ecg-gateway csrf", hashlib.sha256).hexdigest()


def csrf_token(request: Request) -> str:
    """The CSRF token for this request's forms (hidden field ``csrf_token``):
    derived from the session cookie; "" when there is no session (the login
    form uses :func:`login_csrf_token`)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    return _csrf_for_session(cookie) if cookie and len(cookie) <= 128 else ""


def csrf_for_new_session(session_id: str) -> str:
    """The CSRF token of a session just opened (its cookie is not in the request yet)."""
    return _csrf_for_session(session_id)


async def _submitted_csrf(request: Request) -> str:
    given = request.headers.get(CSRF_HEADER)
    if given:
        return given
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


async def check_csrf(request: Request) -> None:
    """Dependency: a state-changing request signed in by the session cookie
    must carry its session's CSRF token (403 otherwise).  Safe methods,
    bearer-token requests and requests without a session cookie (nothing to
    ride on; a route that needs a user refuses them anyway) pass."""
    if (
        request.method in _SAFE_METHODS
        or request.headers.get("authorization") is not None
        or not request.cookies.get(SESSION_COOKIE)
    ):
        return
    expected = csrf_token(request)
    given = await _submitted_csrf(request)
    if not expected or not given or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise AuthError(403, "missing or wrong CSRF token: reload the page and try again")


async def check_login_csrf(request: Request) -> None:
    """Dependency of the login form's POST: the double-submit token (cookie
    ``LOGIN_CSRF_COOKIE`` = form field ``csrf_token``), 403 otherwise."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    given = await _submitted_csrf(request)
    if (
        not expected
        or not given
        or len(expected) > 128
        or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
    ):
        raise AuthError(403, "missing or wrong CSRF token: reload the login page and try again")


def _resolved(request: Request) -> Principal | None:
    return resolve_principal(request)  # a sync dependency: its database look-up runs in the thread pool


def require_role(role: str) -> Callable[..., Any]:
    """A FastAPI dependency: the request's :class:`Principal` when its role is
    ``role`` or stronger.  AuthError 401 when not signed in (403 when no
    credential exists at all), 403 for a weaker role, then 403 for a
    state-changing request signed in by the session cookie without its CSRF
    token (:func:`check_csrf`).  Use as
    ``principal: Annotated[Principal, Depends(require_role("reader"))]``."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {ROLES}")

    async def dependency(request: Request, principal: Annotated[Principal | None, Depends(_resolved)]) -> Principal:
        if principal is None:
            ctx = auth_context(request)

            def anything_configured() -> bool:
                with ctx.session_factory() as db:
                    return credentials_exist(db, ctx.token)

            if not await run_in_threadpool(anything_configured):
                raise AuthError(403, NO_TOKEN_MESSAGE)
            raise AuthError(401, "not signed in: missing or wrong bearer token or session")
        if not principal.has_role(role):
            raise AuthError(403, f"{principal.username} ({principal.role}) may not do this: needs the {role} role")
        await check_csrf(request)
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


def audit_request(
    db: Session,
    principal: Principal,
    action: str,
    target: str | None = None,
    *,
    ecg_id: int | None = None,
    **detail: Any,
) -> None:
    """One audit row for what ``principal`` did through the web view or the API
    (actor, address and ``via`` from the principal).  The caller commits."""
    audit(db, principal.actor, action, target, ecg_id=ecg_id, address=principal.address, via=principal.via, **detail)


#: Route parameter types: ``def page(principal: AsReader)`` gets the caller
#: when their role is at least reader (AuthError otherwise, see require_role).
AsViewer = Annotated[Principal, Depends(require_role("viewer"))]
AsReader = Annotated[Principal, Depends(require_role("reader"))]
AsAdmin = Annotated[Principal, Depends(require_role("admin"))]
