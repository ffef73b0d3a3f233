"""People: user records, argon2id passwords, API tokens, the login check
with its rate limit (``ecg-gateway users``, the web login, the API's bearer
tokens).

Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3
passes); an API token is 256 random bits, so its SHA-256 is enough (a slow
hash would only slow every API call).  The login rate limit counts
``login_failed`` audit rows (per user name and per client address) within
``[admin] login_window_minutes``: the database is shared, so the limit holds
for every process of the gateway.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.config import AdminConfig
from gateway.quoting import printable
from gateway.store.audit import audit, recent_count
from gateway.store.models import ROLES, AdminSession, ApiToken, User
from gateway.timeutil import as_utc, utcnow

__all__ = [
    "LOGIN",
    "LOGIN_FAILED",
    "LOGIN_THROTTLED",
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "ROLES",
    "TOKEN_PREFIX",
    "LoginResult",
    "UserError",
    "add_user",
    "check_login",
    "disable_user",
    "get_user",
    "hash_password",
    "issue_token",
    "list_users",
    "login_guard",
    "set_password",
    "token_user",
    "verify_password",
]

#: Audit actions of the login.
LOGIN, LOGIN_FAILED, LOGIN_THROTTLED = "login", "login_failed", "login_throttled"
MIN_PASSWORD = 10
#: Longer passwords are refused before hashing (argon2 reads all of it).
MAX_PASSWORD = 1024
#: API tokens start with this, so a leaked one is recognisable (secret scanners).
TOKEN_PREFIX = "ecgw_"
#: Names reserved for the bootstrap token's principal.
RESERVED_NAMES = frozenset({"token"})
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# HL7 delimiters and control characters: an hl7_id goes into CNN.1 / XCN.1 as it is.
# Unpaired surrogates (argv bytes that are not UTF-8 arrive as them) have no UTF-8 form: the
# database cannot store them, so they are refused like control characters.
_HL7_ID = re.compile(r"[^|^&~\\\x00-\x1f\x7f\ud800-\udfff]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


class UserError(ValueError):
    """A user command or value is refused (the message says why)."""


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id, RFC 9106's second recommendation (64 MiB, t=3, p=4)


@cache
def _dummy_hash() -> str:
    """A hash to verify against when the user is unknown, so that an unknown
    name takes as long as a wrong password (no user enumeration by timing)."""
    return _hasher().hash(secrets.token_urlsafe(16))


def check_password_text(password: str) -> str:
    """``password`` when acceptable (MIN_PASSWORD..MAX_PASSWORD characters), else UserError."""
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"password too long: at most {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    """The argon2id hash (PHC string) of an acceptable password."""
    return _hasher().hash(check_password_text(password))


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; False for no hash, a wrong or an overlong password."""
    if not password_hash or not password or len(password) > MAX_PASSWORD:
        if password and len(password) <= MAX_PASSWORD:
            _verify_dummy(password)
        return False
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _verify_dummy(password: str) -> None:
    try:
        _hasher().verify(_dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        pass


def token_hash(token: str) -> str:
    """What the database stores of an API token (hex SHA-256)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_username(name: str) -> str:
    """``name`` when it is a valid user name (lower-case letters, digits, ``._-``,
    at most 64, not ``token``), else UserError."""
    if not _USERNAME.fullmatch(name):
        raise UserError(f"user name {name!r}: 1-64 of a-z 0-9 . _ - (starting with a letter or digit)")
    if name in RESERVED_NAMES:
        raise UserError(f"user name {name!r} is reserved (the bootstrap [admin] token)")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def _check_hl7_id(hl7_id: str | None) -> str | None:
    if hl7_id is None or hl7_id == "":
        return None
    if not _HL7_ID.fullmatch(hl7_id):
        raise UserError("hl7 id: 1-64 characters without | ^ & ~ \\, control characters or bytes that are not UTF-8")
    return hl7_id


def _check_full_name(full_name: str | None) -> str | None:
    if full_name is None or full_name.strip() == "":
        return None
    if len(full_name) > 200 or _CONTROL.search(full_name):
        raise UserError("full name: at most 200 characters, no control characters or bytes that are not UTF-8")
    return full_name.strip()


def get_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).first()


def _existing(session: Session, username: str) -> User:
    user = get_user(session, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    return user


def add_user(
    session: Session,
    username: str,
    role: str,
    password: str | None,
    *,
    full_name: str | None = None,
    hl7_id: str | None = None,
    actor: str,
    address: str | None = None,
) -> User:
    """Create a user (``password`` None: API token only); audited.  The caller commits."""
    check_username(username)
    check_role(role)
    hl7_id, full_name = _check_hl7_id(hl7_id), _check_full_name(full_name)
    if get_user(session, username) is not None:
        raise UserError(f"user {username!r} exists")
    now = utcnow()
    user = User(
        username=username,
        role=role,
        full_name=full_name,
        hl7_id=hl7_id,
        password_hash=hash_password(password) if password is not None else None,
        created_at=now,
        password_changed_at=now if password is not None else None,
    )
    session.add(user)
    session.flush()
    audit(session, actor, "user_add", f"user:{username}", address=address, role=role)
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def disable_user(session: Session, username: str, *, actor: str, address: str | None = None) -> User:
    """Disable a user: no login, its sessions and API tokens end at once; audited."""
    user = _existing(session, username)
    now = utcnow()
    if user.disabled_at is None:
        user.disabled_at = now
    session.execute(
        update(AdminSession)
        .where(AdminSession.user_id == user.id, AdminSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    session.execute(
        update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None)).values(revoked_at=now)
    )
    audit(session, actor, "user_disable", f"user:{username}", address=address)
    return user


def set_password(session: Session, username: str, password: str, *, actor: str, address: str | None = None) -> User:
    """A new password; the user's web sessions end (they were bound to the old one); audited."""
    user = _existing(session, username)
    user.password_hash = hash_password(password)
    user.password_changed_at = now = utcnow()
    session.execute(
        update(AdminSession)
        .where(AdminSession.user_id == user.id, AdminSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    audit(session, actor, "user_passwd", f"user:{username}", address=address)
    return user


def issue_token(session: Session, username: str, *, actor: str, address: str | None = None) -> str:
    """A new API token for ``username`` (returned once, stored as its SHA-256);
    the user's earlier tokens are revoked.  Audited; the caller commits."""
    user = _existing(session, username)
    if user.disabled_at is not None:
        raise UserError(f"user {username!r} is disabled")
    now = utcnow()
    session.execute(
        update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None)).values(revoked_at=now)
    )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, token_hash=token_hash(token), created_at=now))
    audit(session, actor, "user_token", f"user:{username}", address=address)
    return token


def token_user(session: Session, token: str) -> User | None:
    """The enabled user whose live API token this is, else None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == token_hash(token), ApiToken.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    user = session.get(User, row.user_id)
    return user if user is not None and user.disabled_at is None else None


#: Locks the login checks take (a fixed number: any address or name maps to one of them).
_LOGIN_LOCKS = tuple(threading.Lock() for _ in range(64))


@contextmanager
def login_guard(address: str, username: str) -> Iterator[None]:
    """Hold while a login is checked and its ``login_failed`` row committed: attempts from
    one address or for one name run one after the other, so each sees the failures before
    it (together, 12 guesses were all checked against a limit of 5).  In this process only:
    the gateway serves the admin view from one.  Striped locks (bounded memory), taken in
    index order (no deadlock)."""
    stripes = sorted({_stripe(f"a:{address}"), _stripe(f"u:{username}")})
    for index in stripes:
        _LOGIN_LOCKS[index].acquire()
    try:
        yield
    finally:
        for index in reversed(stripes):
            _LOGIN_LOCKS[index].release()


def _stripe(key: str) -> int:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[0] % len(_LOGIN_LOCKS)


@dataclass(frozen=True)
class LoginResult:
    """:func:`check_login`'s answer: ``user`` when the password matched;
    ``throttled`` when the attempt was refused unchecked (too many failures)."""

    user: User | None
    throttled: bool = False


def check_login(
    session: Session, username: str, password: str, *, address: str, cfg: AdminConfig, now: datetime | None = None
) -> LoginResult:
    """Check a web login, rate-limited and audited (``login``, ``login_failed``,
    ``login_throttled`` rows; the caller commits).

    Refused unchecked while the name has ``login_max_failures_per_user`` or
    the address ``login_max_failures_per_address`` failed logins within
    ``login_window_minutes``: a guessing run then gets nothing, even the right
    password.  An unknown name, a disabled user and a wrong password all fail
    alike (same message, same time)."""
    now = as_utc(now or utcnow())
    # The audit row's actor for an attempt with any name typed: control characters (a NUL was a
    # 500 on PostgreSQL, whose text cannot hold one, and no failed login was counted) and
    # unpaired surrogates written as escapes, like every other outside text (gateway.quoting).
    # A real user name is printable ASCII, so it stays as it is and its rate limit counts.
    actor = printable(username, 64)
    since = now - timedelta(minutes=cfg.login_window_minutes)
    if (
        recent_count(session, LOGIN_FAILED, since, actor=actor) >= cfg.login_max_failures_per_user
        or recent_count(session, LOGIN_FAILED, since, address=address) >= cfg.login_max_failures_per_address
    ):
        audit(session, actor, LOGIN_THROTTLED, address=address)
        return LoginResult(None, throttled=True)
    user = get_user(session, username) if _USERNAME.fullmatch(username) else None
    ok = verify_password(user.password_hash if user is not None else None, password)
    if user is None or not ok or user.disabled_at is not None:
        audit(session, actor, LOGIN_FAILED, address=address)
        return LoginResult(None)
    audit(session, actor, LOGIN, address=address, via="web")
    return LoginResult(user)


def token_login_allowed(session: Session, *, address: str, cfg: AdminConfig, now: datetime | None = None) -> bool:
    """The rate limit for the bootstrap token's web login (actor ``token``)."""
    now = as_utc(now or utcnow())
    since = now - timedelta(minutes=cfg.login_window_minutes)
    return (
        recent_count(session, LOGIN_FAILED, since, actor="token") < cfg.login_max_failures_per_user
        and recent_count(session, LOGIN_FAILED, since, address=address) < cfg.login_max_failures_per_address
    )
