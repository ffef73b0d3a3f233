"""Admin authentication: one shared bearer token, and the bind-address rule.

Safe defaults: with no token configured the API and web view refuse every
request (403, telling the admin to set ``[admin] token``); only /healthz and
/metrics, which carry no PHI, answer.  Binding beyond loopback needs a token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from gateway.config import AdminConfig

#: Name of the web view's session cookie.
SESSION_COOKIE = "ecg_gateway_admin"
NO_TOKEN_MESSAGE = (
    "the admin API and web view are disabled until a token is set: "
    "set [admin] token in the configuration (or ECG_GATEWAY_ADMIN__TOKEN)"
)


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


def session_value(token: str) -> str:
    """The cookie value: derived from the token, so the cookie never holds the
    token itself and changing the token signs everyone out."""
    return hmac.new(token.encode("utf-8"), b"ecg-gateway admin session v1", hashlib.sha256).hexdigest()


def cookie_ok(cookie: str | None, token: str) -> bool:
    if not token or not cookie:
        return False
    return hmac.compare_digest(cookie.encode("utf-8"), session_value(token).encode("utf-8"))
