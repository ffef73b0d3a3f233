"""Red team: the role and CSRF matrix generated from the admin app's own routes.

Every route of the application is listed from ``app.routes``; each one that is
not in the short public list must declare a role with ``require_role`` (a new
route without one fails here), and each is called with no credential, a
viewer's, a reader's and an admin's session and API token and the bootstrap
token: a weaker role gets 403, no credential 401 (the API) or the login page
(the web view), a strong enough one neither.  Every state-changing route
signed in by a session cookie refuses a request without the session's CSRF
token (403), whatever the role.  SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from admin_helpers import seed, web_login
from gateway.admin.app import create_app
from gateway.admin.users import add_user, issue_token
from gateway.config import Config
from gateway.store.models import ROLES

TOKEN = "bootstrap-t0ken-redteam"
PASSWORDS = {"vic": "viewer-pass-1", "rita": "reader-pass-1", "adam": "admin-pass-12"}
ROLE_OF = {"vic": "viewer", "rita": "reader", "adam": "admin"}
#: Routes open without a credential (no PHI, or the way to get a credential).
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def _required_role(route: APIRoute) -> str | None:
    """The role of the route's ``require_role`` dependency (its function is named require_<role>)."""
    found = []

    def walk(dependant) -> None:  # type: ignore[no-untyped-def]
        for dep in dependant.dependencies:
            name = getattr(dep.call, "__name__", "")
            if name.startswith("require_") and name[len("require_") :] in ROLES:
                found.append(name[len("require_") :])
            walk(dep)

    walk(route.dependant)
    assert len(set(found)) <= 1, (route.path, found)
    return found[0] if found else None


def _routes(app) -> list[tuple[str, str, str | None]]:  # type: ignore[no-untyped-def]
    out = []

    def walk(routes) -> None:  # type: ignore[no-untyped-def]
        for route in routes:
            inner = getattr(route, "original_router", None)  # FastAPI >= 0.165 keeps included routers
            if inner is not None:
                walk(inner.routes)
            elif isinstance(route, APIRoute):
                for method in sorted(route.methods - {"HEAD"}):
                    out.append((method, route.path, _required_role(route)))

    walk(app.routes)
    return out


def _fill(path: str, ids: dict[str, int]) -> str:
    values = {"ecg": str(ids["e1"]), "ecg_id": str(ids["e1"]), "message_id": str(ids["m1"]), "study": "1.2.3"}
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


@pytest.fixture
def world(db_url, session_factory, sample_path, tmp_path):
    ids = seed(session_factory, sample_path, tmp_path / "spool")
    with session_factory() as s:
        for name, role in ROLE_OF.items():
            add_user(
                s, name, role, PASSWORDS[name], full_name=f"{name.title()} Example", hl7_id=f"ID-{name}", actor="test"
            )
        s.commit()
        tokens = {name: issue_token(s, name, actor="test") for name in ROLE_OF}
        s.commit()
    cfg = Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "admin": {"token": TOKEN, "openapi": True},
            "ingest": {"stow_enabled": True},
        }
    )
    return create_app(cfg, session_factory), ids, tokens


def test_every_route_declares_a_role_or_is_public(world):
    app, _ids, _tokens = world
    routes = _routes(app)
    assert len(routes) >= 15
    unguarded = [(m, p) for m, p, role in routes if role is None and (m, p) not in PUBLIC]
    # STOW-RS checks its caller itself (a bearer token only): listed by name, asserted below
    assert unguarded == [("POST", "/dicomweb/studies"), ("POST", "/dicomweb/studies/{study}")]


def _sessions(app) -> dict[str, TestClient]:  # type: ignore[no-untyped-def]
    out = {}
    for name in ROLE_OF:
        client = TestClient(app)
        assert web_login(client, username=name, password=PASSWORDS[name]).status_code == 200
        out[name] = client
    return out


def _denied(r) -> bool:  # type: ignore[no-untyped-def]
    return r.status_code in (401, 403) or (r.status_code == 303 and r.headers["location"].startswith("/login"))


@pytest.mark.slow  # ~11 s: every export rendered for every principal
def test_role_matrix_over_every_route(world):
    app, ids, tokens = world
    sessions = _sessions(app)
    anonymous = TestClient(app)
    for method, path, role in _routes(app):
        if role is None:
            continue
        url = _fill(path, ids)
        body = {"json": {"findings": ["1dAVb"]}} if path == "/api/ecgs/{ecg}/confirm" else {}
        # no credential: 401 under /api, the login page on the web
        r = anonymous.request(method, url, follow_redirects=False, **body)
        assert _denied(r), (method, path, r.status_code)
        if path.startswith("/api/"):
            assert r.status_code == 401, (method, path)
        for name, user_role in ROLE_OF.items():
            allowed = ROLES.index(user_role) >= ROLES.index(role)
            for via, r in (
                (
                    "api",
                    anonymous.request(
                        method, url, headers={"Authorization": f"Bearer {tokens[name]}"}, follow_redirects=False, **body
                    ),
                ),
                ("web", sessions[name].request(method, url, follow_redirects=False, **body)),
            ):
                if allowed and via == "web" and method in STATE_CHANGING:
                    # the right role, but no CSRF token
                    assert r.status_code == 403 and "CSRF" in r.text, (name, method, path)
                elif allowed:
                    assert not _denied(r), (name, via, method, path, r.status_code, r.text[:200])
                else:
                    assert r.status_code == 403 and f"needs the {role} role" in r.text, (
                        name,
                        via,
                        method,
                        path,
                        r.status_code,
                    )
        # the bootstrap token is an admin
        r = anonymous.request(method, url, headers={"Authorization": f"Bearer {TOKEN}"}, follow_redirects=False, **body)
        if path.endswith("/confirm"):  # a confirmation names a person: the token is nobody
            assert r.status_code == 403 and "bootstrap [admin] token cannot confirm" in r.text, (method, path)
        else:
            assert not _denied(r), (method, path, r.status_code)
        # a wrong bearer token, even with a valid session cookie, is no credential
        r = sessions["adam"].request(
            method, url, headers={"Authorization": "Bearer ecgw_wrong"}, follow_redirects=False, **body
        )
        assert _denied(r), (method, path)


def test_stow_needs_a_bearer_token_of_a_reader_or_admin(world):
    app, _ids, tokens = world
    sessions = _sessions(app)
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\nxx\r\n--b--\r\n"
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
    for path in ("/dicomweb/studies", "/dicomweb/studies/1.2.3"):
        assert TestClient(app).post(path, content=body, headers=headers).status_code == 401
        # a signed-in browser's cookie is no credential here (no CSRF token exists for STOW)
        assert sessions["adam"].post(path, content=body, headers=headers).status_code == 401
        r = TestClient(app).post(path, content=body, headers={**headers, "Authorization": f"Bearer {tokens['vic']}"})
        assert r.status_code == 403
        r = TestClient(app).post(path, content=body, headers={**headers, "Authorization": f"Bearer {tokens['rita']}"})
        assert r.status_code not in (401, 403)


def test_x_forwarded_for_does_not_reset_the_per_address_login_limit(db_url, session_factory, sample_path, tmp_path):
    """The application itself never reads X-Forwarded-For: the address counted is the
    connection's (uvicorn rewrites it only for a proxy on loopback, which appends the real one)."""
    from admin_helpers import audit_rows

    seed(session_factory, sample_path, tmp_path / "spool")
    with session_factory() as s:
        add_user(s, "rita", "reader", PASSWORDS["rita"], actor="test")
        s.commit()
    cfg = Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "admin": {"token": TOKEN, "login_max_failures_per_address": 3, "login_max_failures_per_user": 100},
        }
    )
    client = TestClient(create_app(cfg, session_factory))
    for n in range(3):  # three names, three forged addresses: one real address
        spoof = {"X-Forwarded-For": f"203.0.113.{n}", "X-Real-IP": f"198.51.100.{n}", "Forwarded": f"for=192.0.2.{n}"}
        r = web_login(client, username=f"guess{n}", password="wrong-password", headers=spoof)
        assert r.status_code == 401
    r = web_login(client, username="rita", password=PASSWORDS["rita"], headers={"X-Forwarded-For": "203.0.113.99"})
    assert r.status_code == 429 and "too many failed logins" in r.text
    assert {a.address for a in audit_rows(session_factory) if a.action.startswith("login")} == {"testclient"}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "--full-name",
            "M\udcdcller Hans",
            "full name: at most 200 characters, no control characters or bytes that are not UTF-8",
        ),
        (
            "--hl7-id",
            "D\udcff1",
            "hl7 id: 1-64 characters without | ^ & ~ \\, control characters or bytes that are not UTF-8",
        ),
    ],
)
def test_users_add_refuses_a_name_that_is_not_utf8(db_url, session_factory, tmp_path, option, value, message):
    """argv bytes that are not UTF-8 arrive as unpaired surrogates: refused with the reason
    (was a UnicodeEncodeError traceback from the database driver)."""
    from sqlalchemy import select
    from typer.testing import CliRunner

    from gateway.cli import app as cli_app
    from gateway.store.models import User

    config = tmp_path / "gateway.toml"
    config.write_text(f'[storage]\ndatabase_url = "{db_url}"\nspool_dir = "{tmp_path / "spool"}"\n')
    r = CliRunner().invoke(
        cli_app,
        ["--config", str(config), "users", "add", "hans", "--role", "reader", option, value],
        input="a-long-password-1\n",
    )
    assert r.exit_code != 0 and message in r.output, r.output
    assert not isinstance(r.exception, UnicodeError)
    with session_factory() as s:
        assert s.scalars(select(User)).all() == []


@pytest.mark.parametrize("path", ["/api/ecgs/1/confirm", "/ecgs/1/confirm", "/login", "/logout", "/api/hl7/1/resend"])
def test_a_huge_body_is_refused_before_it_is_read(world, path):
    """FastAPI reads a JSON or form body whole before the caller is checked: an
    unauthenticated 200 MB body was read to its end (then 422).  Now 413 at 1 MB,
    chunked or announced."""
    import asyncio

    app, _ids, _tokens = world
    received = [0]
    answers: list[dict] = []

    async def receive() -> dict:  # a chunked body that never ends
        received[0] += 1
        return {"type": "http.request", "body": b"x" * (1 << 20), "more_body": received[0] < 200}

    async def send(message: dict) -> None:
        answers.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("203.0.113.1", 1234),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert answers[0]["status"] == 413 and received[0] == 2  # stopped just past 1 MB
    assert json.loads(answers[1]["body"]) == {"detail": "request body larger than 1 MB"}
    assert (b"content-security-policy", app_csp()) in answers[0]["headers"]
    client = TestClient(app)
    r = client.post(path, content=b"x" * (1024 * 1024 + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"] == "request body larger than 1 MB"
    # a body under the limit goes on to the route (here: no credential)
    r = client.post(path, content=b"{}", headers={"Content-Type": "application/json"}, follow_redirects=False)
    assert r.status_code in (303, 401, 403)


def app_csp() -> bytes:
    from gateway.admin.app import CONTENT_SECURITY_POLICY

    return CONTENT_SECURITY_POLICY.encode()


@pytest.mark.parametrize("typed", ["rita\x00", "x\r\n2026-01-01 00:00:00,000 INFO forged", "\x1b[31mred\x9b"])
def test_a_login_name_with_control_characters_is_a_counted_failure(db_url, session_factory, tmp_path, typed):
    """A user name with a NUL was a 500 on PostgreSQL (its text holds no NUL) and no
    failed login was counted; the audit row's actor now carries the name with its
    control characters escaped (gateway.quoting), on both databases."""
    from admin_helpers import audit_rows
    from gateway.quoting import printable

    cfg = Config.model_validate(
        {"storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")}, "admin": {"token": TOKEN}}
    )
    client = TestClient(create_app(cfg, session_factory), raise_server_exceptions=False)
    r = web_login(client, username=typed, password="wrong-password")
    assert r.status_code == 401 and "wrong user name or password" in r.text
    [row] = [a for a in audit_rows(session_factory) if a.action == "login_failed"]
    assert row.actor == printable(typed.strip(), 64) and row.actor.isprintable()


def test_guesses_sent_together_are_counted_one_after_the_other(db_url, session_factory, tmp_path, monkeypatch):
    """Twelve wrong passwords for one name sent at once: each was checked against the
    same count of failures (all twelve got an argon2 check with a limit of 5).  Now the
    checks for one name or address run one after the other: 5 checked, the rest 429."""
    import asyncio

    import httpx
    from argon2 import PasswordHasher

    from admin_helpers import audit_rows
    from gateway.admin import users
    from gateway.admin.auth import LOGIN_CSRF_COOKIE

    # a cheap hash: the checks run one after the other now (argon2's defaults cost ~0.3 s each)
    monkeypatch.setattr(users, "_hasher", lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    with session_factory() as s:
        add_user(s, "rita", "reader", PASSWORDS["rita"], actor="test")
        s.commit()
    cfg = Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "admin": {"token": TOKEN, "login_max_failures_per_user": 5, "login_max_failures_per_address": 1000},
        }
    )
    app = create_app(cfg, session_factory)
    csrf = "c" * 43
    form = {"username": "rita", "password": "wrong-password", "csrf_token": csrf}

    async def guesses() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.cookies.set(LOGIN_CSRF_COOKIE, csrf)
            answers = await asyncio.gather(*(client.post("/login", data=form) for _ in range(12)))
        return sorted(r.status_code for r in answers)

    assert asyncio.run(guesses()) == [401] * 5 + [429] * 7
    assert sum(a.action == "login_failed" for a in audit_rows(session_factory)) == 5
