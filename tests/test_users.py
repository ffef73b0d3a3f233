"""Issue 17 §2 and §4: users, roles, web sessions, CSRF, the login rate limit, API
tokens and the audit trail (FastAPI TestClient over the real app; SQLite and
PostgreSQL), and the ``users`` / ``audit`` commands."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from admin_helpers import audit_rows, seed, session_csrf, web_login
from gateway.admin.app import create_app
from gateway.admin.auth import SESSION_COOKIE, AsReader, AuthContext, AuthError, Principal, csrf_token
from gateway.admin.users import TOKEN_PREFIX, add_user, check_login, issue_token, token_user
from gateway.cli import app as cli_app
from gateway.config import AdminConfig, Config
from gateway.store.models import AdminSession, ApiToken, User
from gateway.timeutil import utcnow

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bootstrap-t0ken"
PASSWORDS = {"vic": "viewer-pass-1", "rita": "reader-pass-1", "adam": "admin-pass-12"}
ROLE_OF = {"vic": "viewer", "rita": "reader", "adam": "admin"}


def make_cfg(db_url, tmp_path, **admin):
    return Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "admin": {"token": TOKEN, **admin},
        }
    )


@pytest.fixture(autouse=True)
def quick_argon2(monkeypatch):
    """argon2id with small parameters: the tests hash dozens of passwords on a shared
    2-core machine.  The production parameters are checked in test_production_hash_parameters."""
    from argon2 import PasswordHasher

    from gateway.admin import users

    monkeypatch.setattr(users, "_hasher", lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    monkeypatch.setattr(users, "_dummy_hash", lambda: users._hasher().hash("dummy-password"))


def test_production_hash_parameters(monkeypatch):
    """What a real deployment stores: argon2id, 64 MiB, 3 passes, 4 lanes (RFC 9106's second choice)."""
    monkeypatch.undo()
    from gateway.admin.users import hash_password, verify_password

    stored = hash_password("a-long-password")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert verify_password(stored, "a-long-password") and not verify_password(stored, "a-long-passworD")
    assert not verify_password(stored, "x" * 2000)  # over MAX_PASSWORD: refused before hashing


@pytest.fixture
def seeded(session_factory, sample_path, tmp_path):
    ids = seed(session_factory, sample_path, tmp_path / "spool")
    with session_factory() as s:
        for name, role in ROLE_OF.items():
            add_user(
                s, name, role, PASSWORDS[name], full_name=f"{name.title()} Example", hl7_id=f"ID-{name}", actor="test"
            )
        s.commit()
    return ids


@pytest.fixture
def app(db_url, session_factory, seeded, tmp_path):
    return create_app(make_cfg(db_url, tmp_path), session_factory)


def signed_in(app, name: str) -> TestClient:
    client = TestClient(app)
    r = web_login(client, username=name, password=PASSWORDS[name])
    assert r.status_code == 200, r.text
    return client


def bearer(session_factory, name: str) -> dict[str, str]:
    with session_factory() as s:
        token = issue_token(s, name, actor="test")
        s.commit()
    return {"Authorization": f"Bearer {token}"}


def actions(session_factory, actor: str | None = None) -> list[str]:
    return [a.action for a in audit_rows(session_factory) if actor is None or a.actor == actor]


# --- roles -------------------------------------------------------------------------------------


def test_role_matrix_on_the_api(app, session_factory, seeded):
    e1, m1 = seeded["e1"], seeded["m1"]
    reads = ["/api/ecgs", f"/api/ecgs/{e1}"]
    admin_only = [
        ("GET", f"/api/ecgs/{e1}/original.dcm"),
        ("GET", f"/api/ecgs/{e1}/input.npy"),
        ("GET", f"/api/ecgs/{e1}/report.pdf"),
        ("POST", f"/api/hl7/{m1}/resend"),
    ]
    client = TestClient(app)
    for name in ("vic", "rita"):
        headers = bearer(session_factory, name)
        for path in reads:
            assert client.get(path, headers=headers).status_code == 200, (name, path)
        for method, path in admin_only:
            r = client.request(method, path, headers=headers)
            assert r.status_code == 403 and "needs the admin role" in r.json()["detail"], (name, path)
            assert "DOE" not in r.text
    headers = bearer(session_factory, "adam")
    for method, path in admin_only:
        assert client.request(method, path, headers=headers).status_code == 200, path
    # who did what: the user's name, from the client's address, through the API
    rows = [a for a in audit_rows(session_factory) if a.actor == "adam"]
    assert [a.action for a in rows][-4:] == ["export_dicom", "export_input", "export_report", "hl7_resend"]
    assert all(a.address == "testclient" and a.ecg_id == e1 for a in rows[-4:])
    assert [(a.action, a.ecg_id) for a in audit_rows(session_factory) if a.actor == "vic"] == [
        ("view_list", None),
        ("view_ecg", e1),
    ]


def test_role_matrix_on_the_web(app, session_factory, seeded):
    e1, m1 = seeded["e1"], seeded["m1"]
    for name in ("vic", "rita"):
        client = signed_in(app, name)
        page = client.get(f"/ecgs/{e1}")
        assert page.status_code == 200 and f"{name.title()} Example ({ROLE_OF[name]})" in page.text
        assert "Resend</button>" not in page.text and "report.pdf" not in page.text and 'href="/audit"' not in page.text
        r = client.post(
            f"/ecgs/{e1}/resend", data={"message_id": m1, "csrf_token": session_csrf(client)}, follow_redirects=False
        )
        assert r.status_code == 403 and "needs the admin role" in r.text
        assert client.get(f"/ecgs/{e1}/report.pdf").status_code == 403
        assert client.get("/audit").status_code == 403
    admin = signed_in(app, "adam")
    page = admin.get(f"/ecgs/{e1}").text
    assert "Resend</button>" in page and "report.pdf" in page and 'href="/audit"' in page
    r = admin.post(
        f"/ecgs/{e1}/resend", data={"message_id": m1, "csrf_token": session_csrf(admin)}, follow_redirects=False
    )
    assert r.status_code == 303
    assert actions(session_factory, "adam")[-1] == "hl7_resend"
    assert "hl7_resend" not in actions(session_factory, "vic") + actions(session_factory, "rita")


def test_principal_of_a_user_and_of_the_token(app, session_factory, seeded):
    """What the confirm routes get from require_role: the user record's name, role and HL7 identity."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    probe = FastAPI()
    probe.state.auth = app.state.auth
    assert isinstance(probe.state.auth, AuthContext)

    @probe.get("/who")
    def who(p: AsReader) -> dict:  # (AsReader imported at module level: this module's annotations are strings)
        return {
            "user_id": p.user_id,
            "username": p.username,
            "role": p.role,
            "full_name": p.full_name,
            "hl7_id": p.hl7_id,
            "via": p.via,
            "actor": p.actor,
        }

    @probe.exception_handler(AuthError)
    async def _e(_r, exc):  # type: ignore[no-untyped-def]
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    c = TestClient(probe)
    r = c.get("/who", headers=bearer(session_factory, "rita")).json()
    assert r | {"user_id": None} == {
        "user_id": None,
        "username": "rita",
        "role": "reader",
        "full_name": "Rita Example",
        "hl7_id": "ID-rita",
        "via": "api",
        "actor": "rita",
    }
    assert c.get("/who", headers={"Authorization": f"Bearer {TOKEN}"}).json()["username"] == "token"
    assert c.get("/who", headers=bearer(session_factory, "vic")).status_code == 403
    assert c.get("/who").status_code == 401
    assert Principal(1, "x", "reader").has_role("viewer") and not Principal(1, "x", "reader").has_role("admin")


# --- CSRF ---------------------------------------------------------------------------------------


def test_forms_without_the_csrf_token_are_refused(app, session_factory, seeded):
    e1, m1 = seeded["e1"], seeded["m1"]
    admin = signed_in(app, "adam")
    good = session_csrf(admin)
    for data, headers in [
        ({"message_id": m1}, {}),
        ({"message_id": m1, "csrf_token": ""}, {}),
        ({"message_id": m1, "csrf_token": "0" * 64}, {}),
        ({"message_id": m1}, {"X-CSRF-Token": "wrong"}),
    ]:
        r = admin.post(f"/ecgs/{e1}/resend", data=data, headers=headers, follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text, data
    assert "hl7_resend" not in actions(session_factory)
    r = admin.post("/logout", follow_redirects=False)  # logout too needs it
    assert r.status_code == 403 and admin.get("/ecgs").status_code == 200
    # another session's token does not fit this one
    other = signed_in(app, "adam")
    r = admin.post(
        f"/ecgs/{e1}/resend", data={"message_id": m1, "csrf_token": session_csrf(other)}, follow_redirects=False
    )
    assert r.status_code == 403
    r = admin.post(
        f"/ecgs/{e1}/resend", data={"message_id": m1}, headers={"X-CSRF-Token": good}, follow_redirects=False
    )
    assert r.status_code == 303  # the header works as well as the field
    # the pages put the token in their forms
    assert f'name="csrf_token" value="{good}"' in admin.get(f"/ecgs/{e1}").text


def test_the_login_form_needs_its_csrf_token(app, session_factory, seeded):
    client = TestClient(app)
    r = client.post("/login", data={"username": "adam", "password": PASSWORDS["adam"]}, follow_redirects=False)
    assert r.status_code == 403 and SESSION_COOKIE not in client.cookies
    client.get("/login")  # the cookie, but not the form's copy
    r = client.post(
        "/login",
        data={"username": "adam", "password": PASSWORDS["adam"], "csrf_token": "forged"},
        follow_redirects=False,
    )
    assert r.status_code == 403 and SESSION_COOKIE not in client.cookies
    assert "login" not in actions(session_factory, "adam")


def test_csrf_token_is_bound_to_the_session():
    class Req:
        cookies = {SESSION_COOKIE: "abc"}

    token = csrf_token(Req())  # type: ignore[arg-type]
    assert len(token) == 64 and "abc" not in token
    Req.cookies = {SESSION_COOKIE: "abd"}
    assert csrf_token(Req()) != token  # type: ignore[arg-type]
    Req.cookies = {}
    assert csrf_token(Req()) == ""  # type: ignore[arg-type]


# --- login, rate limit, sessions --------------------------------------------------------------


def test_login_is_audited_and_rate_limited_per_user(app, session_factory, seeded):
    client = TestClient(app)
    for _ in range(5):
        r = web_login(client, username="rita", password="wrong-password")
        assert r.status_code == 401 and "wrong user name or password" in r.text
    # the sixth attempt is refused unchecked, even with the right password
    r = web_login(client, username="rita", password=PASSWORDS["rita"])
    assert r.status_code == 429 and SESSION_COOKIE not in client.cookies
    assert actions(session_factory, "rita") == ["login_failed"] * 5 + ["login_throttled"]
    assert {a.address for a in audit_rows(session_factory) if a.actor == "rita"} == {"testclient"}
    # another user from the same address is not locked out by rita's failures
    assert web_login(TestClient(app), username="vic", password=PASSWORDS["vic"]).status_code == 200
    # an unknown name fails like a wrong password
    r = web_login(client, username="nobody", password="whatever-pass")
    assert r.status_code == 401 and "wrong user name or password" in r.text


def test_login_rate_limit_per_address_and_window(db_url, session_factory, seeded, tmp_path):
    cfg = AdminConfig(login_max_failures_per_address=3, login_window_minutes=10)
    with session_factory() as s:
        for name in ("a1", "a2", "a3"):
            assert check_login(s, name, "x" * 12, address="10.0.0.9", cfg=cfg).user is None
        s.commit()
        # a fourth name from the same address: refused unchecked
        r = check_login(s, "adam", PASSWORDS["adam"], address="10.0.0.9", cfg=cfg)
        assert r.throttled and r.user is None
        # from another address adam signs in; after the window the address may try again
        assert check_login(s, "adam", PASSWORDS["adam"], address="10.0.0.8", cfg=cfg).user is not None
        later = utcnow() + timedelta(minutes=11)
        assert check_login(s, "adam", PASSWORDS["adam"], address="10.0.0.9", cfg=cfg, now=later).user is not None
        s.commit()
    # the limit lives in the database: a second process (another session factory) sees it
    from gateway.store.db import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as other:
            assert check_login(other, "vic", PASSWORDS["vic"], address="10.0.0.9", cfg=cfg).throttled
    finally:
        engine.dispose()


def test_logout_revokes_a_user_session_and_a_replayed_cookie_is_refused(app, session_factory, seeded):
    client = signed_in(app, "rita")
    stolen = client.cookies[SESSION_COOKIE]
    with session_factory() as s:
        (row,) = s.scalars(select(AdminSession)).all()
        assert (row.principal, row.user_id is not None, row.revoked_at) == ("rita", True, None)
        assert row.session_hash == hashlib.sha256(stolen.encode()).hexdigest()  # only the hash is stored
    assert client.get("/ecgs").status_code == 200
    r = client.post("/logout", data={"csrf_token": session_csrf(client)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    replay = TestClient(app)
    replay.cookies.set(SESSION_COOKIE, stolen)
    r = replay.get(f"/ecgs/{seeded['e1']}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=") and "DOE" not in r.text
    assert actions(session_factory, "rita")[-1] == "logout"


def test_disable_and_new_password_end_sessions_and_tokens(app, session_factory, seeded):
    from gateway.admin.users import disable_user, set_password

    client = signed_in(app, "rita")
    headers = bearer(session_factory, "rita")
    assert client.get("/ecgs").status_code == 200
    with session_factory() as s:
        set_password(s, "rita", "new-reader-pass", actor="test")
        s.commit()
    assert client.get("/ecgs", follow_redirects=False).status_code == 303  # the session ended
    assert TestClient(app).get("/api/ecgs", headers=headers).status_code == 200  # the token goes on
    assert web_login(TestClient(app), username="rita", password=PASSWORDS["rita"]).status_code == 401
    client = TestClient(app)
    assert web_login(client, username="rita", password="new-reader-pass").status_code == 200
    with session_factory() as s:
        disable_user(s, "rita", actor="test")
        s.commit()
    assert client.get("/ecgs", follow_redirects=False).status_code == 303
    assert TestClient(app).get("/api/ecgs", headers=headers).status_code == 401
    assert web_login(TestClient(app), username="rita", password="new-reader-pass").status_code == 401


def test_the_bootstrap_token_can_be_disabled(db_url, session_factory, seeded, tmp_path):
    app = create_app(make_cfg(db_url, tmp_path, token_enabled=False), session_factory)
    c = TestClient(app)
    assert c.get("/api/ecgs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert web_login(c, TOKEN).status_code == 401
    assert "bootstrap admin token" not in c.get("/login").text
    assert web_login(TestClient(app), username="adam", password=PASSWORDS["adam"]).status_code == 200
    from gateway.admin.auth import check_admin_bind

    assert check_admin_bind(AdminConfig(host="0.0.0.0", token="", token_enabled=False)) is None


@pytest.mark.parametrize(
    "base, headers, secure",
    [
        ("http://testserver", {}, False),
        ("https://testserver", {}, True),
        ("http://testserver", {"X-Forwarded-Proto": "https"}, True),
    ],
)
def test_user_session_cookie_is_secure_over_tls(app, base, headers, secure):
    c = TestClient(app, base_url=base)
    r = web_login(c, username="vic", password=PASSWORDS["vic"], headers=headers)
    assert r.status_code == 200
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith(SESSION_COOKIE))
    assert ("; Secure" in cookie) is secure and "HttpOnly" in cookie and "SameSite=strict" in cookie
    login_cookie = c.get("/login", headers=headers).headers["set-cookie"]
    assert ("; Secure" in login_cookie) is secure


# --- API tokens ----------------------------------------------------------------------------------


def test_api_token_is_shown_once_and_stored_hashed(db_url, session_factory, seeded, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'[storage]\ndatabase_url = "{db_url}"\nspool_dir = "{tmp_path / "spool"}"\n')
    r = CliRunner().invoke(cli_app, ["--config", str(config), "users", "token", "vic"])
    assert r.exit_code == 0, r.output
    token = r.stdout.strip()
    assert token.startswith(TOKEN_PREFIX) and len(token) >= 40 and "shown once" in r.stderr
    with session_factory() as s:
        (row,) = s.scalars(select(ApiToken)).all()
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in row.token_hash
        assert token_user(s, token).username == "vic"
        assert token_user(s, token + "x") is None and token_user(s, TOKEN) is None
    # a second token replaces the first
    second = CliRunner().invoke(cli_app, ["--config", str(config), "users", "token", "vic"]).stdout.strip()
    assert second != token
    with session_factory() as s:
        assert token_user(s, token) is None and token_user(s, second).username == "vic"
    users = CliRunner().invoke(cli_app, ["--config", str(config), "users", "list"]).output
    assert token not in users and second not in users and "api token" in users


# --- the commands --------------------------------------------------------------------------------


@pytest.mark.slow  # a dozen commands, each opening the database
def test_users_commands(db_url, session_factory, tmp_path, sample_path):
    seed(session_factory, sample_path, tmp_path / "spool")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[storage]\ndatabase_url = "{db_url}"\nspool_dir = "{tmp_path / "spool"}"\n')

    def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli_app, ["--config", str(config), *args], input=input)

    r = run(
        "users",
        "add",
        "dr.smith",
        "--role",
        "reader",
        "--full-name",
        "Smith^Anna^^^Dr",
        "--hl7-id",
        "1234",
        input="correct-horse-battery\n",
    )
    assert r.exit_code == 0 and "user dr.smith added (reader)" in r.output, r.output
    assert run("users", "add", "dr.smith", "--role", "reader", input="another-password\n").exit_code == 2
    assert "role 'boss'" in run("users", "add", "x", "--role", "boss", input="p" * 12 + "\n").output
    assert "too short" in run("users", "add", "y", "--role", "viewer", input="short\n").output
    assert "reserved" in run("users", "add", "token", "--role", "admin", input="p" * 12 + "\n").output
    assert "1-64 of" in run("users", "add", "Bad Name", "--role", "admin", input="p" * 12 + "\n").output
    assert "hl7 id" in run("users", "add", "z", "--role", "admin", "--hl7-id", "12|34", input="p" * 12 + "\n").output
    with session_factory() as s:
        user = s.scalars(select(User).where(User.username == "dr.smith")).one()
        assert (user.role, user.full_name, user.hl7_id) == ("reader", "Smith^Anna^^^Dr", "1234")
        assert user.password_hash.startswith("$argon2id$") and "correct-horse" not in user.password_hash
        assert s.scalar(select(User.id).where(User.username.in_(["x", "y", "token", "z"]))) is None
    listing = run("users", "list").output
    assert "dr.smith\treader\tactive\tSmith^Anna^^^Dr\thl7 id 1234\tpassword" in listing
    assert run("users", "passwd", "dr.smith", input="a-new-password-1\n").exit_code == 0
    assert run("users", "passwd", "nobody", input="a-new-password-1\n").exit_code == 1
    with session_factory() as s:
        assert check_login(s, "dr.smith", "a-new-password-1", address="cli-test", cfg=AdminConfig()).user
        s.commit()
    assert run("users", "disable", "dr.smith").exit_code == 0
    assert "dr.smith\treader\tdisabled" in run("users", "list").output
    assert run("users", "token", "dr.smith").exit_code == 1  # disabled: no token
    # results show / list are views of patient data: audited; then audit list filters
    assert run("results", "show", "1").exit_code == 0
    assert run("results", "list").exit_code == 0
    out = run("audit", "list", "--ecg", "1").output
    assert "\tview_ecg\tecg 1\t" in out and out.count("\n") == 1
    out = run("audit", "list", "--action", "user_add", "--format", "json").output
    import json

    (row,) = json.loads(out)
    assert row["target"] == "user:dr.smith" and row["actor"].startswith("cli:") and row["detail"] == {"role": "reader"}
    assert run("audit", "list", "--user", "dr.smith", "--action", "login").output.count("\tlogin\t") == 1
    assert run("audit", "list", "--since", "2999-01-01").output == ""
    assert run("audit", "list", "--since", "yesterday").exit_code == 2
    kinds = {a.action for a in audit_rows(session_factory)}
    assert {"user_add", "user_passwd", "user_disable", "login", "view_ecg", "view_list"} <= kinds


@pytest.mark.slow  # three interpreters started
@pytest.mark.one_db("sqlite")  # what is imported does not depend on the database kind
def test_users_and_audit_commands_do_not_import_tensorflow(db_url, session_factory, tmp_path):
    code = (
        "import sys, runpy; sys.argv = ['ecg-gateway', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('gateway', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "bad = [m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(bad))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    env["ECG_GATEWAY_STORAGE__DATABASE_URL"] = db_url
    for args, stdin in (
        (["users", "add", "nurse", "--role", "viewer"], "a-password-123\n"),
        (["users", "list"], ""),
        (["audit", "list"], ""),
    ):
        r = subprocess.run(
            [sys.executable, "-c", code, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
        )
        assert "HEAVY:\n" in r.stdout, r.stdout + r.stderr
    with session_factory() as s:
        assert s.scalar(select(User.role).where(User.username == "nurse")) == "viewer"


# --- the audit log page --------------------------------------------------------------------------


def test_audit_page_for_admins(app, session_factory, seeded):
    admin = signed_in(app, "adam")
    admin.get(f"/ecgs/{seeded['e1']}")
    page = admin.get("/audit", params={"ecg": seeded["e1"]})
    assert page.status_code == 200 and "<h1>Audit log</h1>" in page.text
    assert "view_ecg" in page.text and "adam" in page.text and "testclient" in page.text
    assert admin.get("/audit", params={"since": "nonsense"}).status_code == 400
    assert admin.get("/audit", params={"ecg": "0"}).status_code == 422
    assert "view_audit" in actions(session_factory, "adam")


def test_every_view_of_patient_data_is_audited(app, session_factory, seeded):
    e1 = seeded["e1"]
    viewer = signed_in(app, "vic")
    viewer.get("/ecgs")
    viewer.get(f"/ecgs/{e1}")
    viewer.get("/ecgs/4040404")  # not found: nothing seen, nothing written
    headers = bearer(session_factory, "vic")
    TestClient(app).get("/api/ecgs", headers=headers, params={"patient_id": "P1"})
    TestClient(app).get(f"/api/ecgs/{e1}", headers=headers)
    rows = [
        (a.action, a.ecg_id, a.address, a.detail.get("via")) for a in audit_rows(session_factory) if a.actor == "vic"
    ]
    assert rows == [
        ("login", None, "testclient", "web"),
        ("view_list", None, "testclient", "web"),
        ("view_ecg", e1, "testclient", "web"),
        ("view_list", None, "testclient", "api"),
        ("view_ecg", e1, "testclient", "api"),
    ]
    listed = [a for a in audit_rows(session_factory) if a.actor == "vic" and a.action == "view_list"]
    assert listed[1].detail["filters"] == {"patient_id": "P1"} and e1 in listed[0].detail["shown"]


def test_audit_rows_are_only_added(session_factory, seeded):
    """The application never updates or deletes an audit row (db prune keeps them too)."""
    import re

    offenders = []
    for path in (ROOT / "gateway").rglob("*.py"):
        text = path.read_text()
        if re.search(r"(update|delete)\(\s*AuditLog", text):
            offenders.append(str(path))
    assert offenders == []
