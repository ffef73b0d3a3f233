"""The web view in a real browser: headless Debian chromium against uvicorn serving the admin app.

Every test drives Debian's chromium with npm ``playwright-core``
(tests/peers/browse.js): it types the credentials into the login form (which
carries its CSRF token) like a person would; the login answer moves on to the
requested page by itself, carrying the SameSite=Strict session cookie.  It
reports the URL the browser ends on, the DOM, every request and every CSP
violation.  The screenshots are kept in tests/artifacts/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from admin_helpers import build_readonly_db
from gateway.admin.app import create_app, make_server
from gateway.config import Config

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PEERS = Path(__file__).resolve().parent / "peers"
TOKEN = "browser-test-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def readonly_db(request, tmp_path_factory, sample_path):
    """SQLite only: the browser checks rendering; the queries are tested on both databases."""
    yield from build_readonly_db(request, "sqlite", tmp_path_factory.mktemp("admin-browser"), sample_path)


@pytest.fixture
def served(readonly_db, port):
    ids = readonly_db.ids
    cfg = Config.model_validate(
        {
            "storage": {"database_url": readonly_db.url, "spool_dir": str(readonly_db.spool_dir)},
            "admin": {"host": "127.0.0.1", "port": port, "token": TOKEN},
        }
    )
    server = make_server(create_app(cfg, readonly_db.session_factory), cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", ids
    server.should_exit = True
    thread.join(10)


def browse(base: str, page: str, tmp_path: Path, *, screenshot: Path | None = None, token: str = TOKEN) -> str:
    """Log in through the form with the bootstrap ``token`` (playwright-core,
    tests/peers/browse.js) and open ``page``; the DOM after scripts ran."""
    step = {"next": page, "dom": True, "password": token, **({"screenshot": str(screenshot)} if screenshot else {})}
    (result,) = drive(base, [step], tmp_path)
    assert "error" not in result, result
    return str(result["dom"])


def test_list_and_ecg_pages_in_chromium(served, tmp_path):
    base, ids = served
    dom = browse(base, "/ecgs", tmp_path)
    assert "<h1>ECGs</h1>" in dom, dom[-2000:]
    assert "6 ECG(s)" in dom and "DOE, JANE" in dom
    assert 'class="badge finding" title="Atrial fibrillation">AF<' in dom and 'class="badge status rejected"' in dom

    dom = browse(base, f"/ecgs/{ids['e2']}", tmp_path)
    assert f"<h1>ECG {ids['e2']}" in dom, dom[-2000:]
    assert dom.count('class="lead-panel"') == 12 and dom.count('class="rhythm-strip"') == 1
    for code, p in (("RBBB", "0.800"), ("LBBB", "0.600"), ("1dAVb", "0.010"), ("ST", "0.040")):
        assert f'data-finding="{code}"' in dom and p in dom
    assert 'class="banner demo"' in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "admin_ecg_page.png"
    shot.unlink(missing_ok=True)
    browse(base, f"/ecgs/{ids['e1']}", tmp_path, screenshot=shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def drive(base: str, steps: list[dict], tmp_path: Path) -> list[dict]:
    """Run tests/peers/browse.js (playwright-core driving Debian chromium) over ``steps``."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (./dev test installs the Debian package)")
    if not (PEERS / "node_modules" / "playwright-core").is_dir():
        pytest.skip("npm playwright-core is not installed (./dev test runs npm ci in tests/peers)")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"chromium": CHROMIUM, "base": base, "token": TOKEN, "steps": steps}))
    r = subprocess.run(
        ["node", str(PEERS / "browse.js"), str(plan)], capture_output=True, text=True, timeout=180, cwd=PEERS
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout)
    assert len(results) == len(steps)
    return results


# Each of these passed the old check; Chromium strips tab/CR/LF and reads "\\" as "/".
REDIRECT_ATTACKS = [
    "/\t/127.0.0.1:{trap}/pwned",
    "/\n/127.0.0.1:{trap}/pwned",
    "/\r/127.0.0.1:{trap}/pwned",
    "/\t\\127.0.0.1:{trap}/pwned",
    "//127.0.0.1:{trap}/pwned",
    "///127.0.0.1:{trap}/pwned",
    "/\\127.0.0.1:{trap}/pwned",
    " //127.0.0.1:{trap}/pwned",
    "http://127.0.0.1:{trap}/pwned",
]


def test_login_never_sends_the_browser_off_site(served, tmp_path):
    """The reported attack and its variants: the browser ends on /ecgs of this server."""
    import socket

    base, ids = served
    with socket.socket() as trap:  # the "attacker" host: a port that counts who comes
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.settimeout(0.2)
        port = trap.getsockname()[1]
        attacks = [a.format(trap=port) for a in REDIRECT_ATTACKS]
        results = drive(base, [{"next": a} for a in attacks] + [{"next": f"/ecgs/{ids['e1']}"}], tmp_path)
        visitors = 0
        try:
            while True:
                trap.accept()[0].close()
                visitors += 1
        except TimeoutError:
            pass
    for attack, res in zip(attacks, results[:-1], strict=True):  # the last step is the local next
        assert "error" not in res, (attack, res)
        assert res["url"] == f"{base}/ecgs", (attack, res["url"])
        assert res["h1"] == "ECGs" and all(u.startswith(base + "/") for u in res["requests"]), attack
    assert results[-1]["url"] == f"{base}/ecgs/{ids['e1']}"  # a local next is followed
    assert visitors == 0


def test_pages_work_under_the_csp_without_violations(served, tmp_path):
    base, ids = served
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "admin_ecg_page_csp.png"
    shot.unlink(missing_ok=True)
    pages = [
        "/ecgs",
        f"/ecgs/{ids['e1']}",
        f"/ecgs/{ids['e2']}",
        f"/ecgs/{ids['e3']}",
        f"/ecgs/{ids['e6']}",
        "/ecgs?status=lost",
        "/ecgs/4040404",
        "/ecgs?page=0",
    ]
    steps = [{"next": p} for p in pages]
    steps[1]["screenshot"] = str(shot)
    # issue 16: the PDF download button works under the CSP (a plain link, no script)
    steps[1].update(download="a.report-pdf", download_to=str(tmp_path / "downloaded.pdf"))
    steps.append({"next": "/ecgs", "inject_inline_style": True})  # control: the harness sees a violation
    results = drive(base, steps, tmp_path)
    for page, res in zip(pages, results[:-1], strict=True):  # the last step is the control
        assert "error" not in res, (page, res)
        assert res["url"] == base + page, res["url"]
        assert res["csp"] == [] and not any("Content Security Policy" in m for m in res["console_errors"]), res
        assert res["page_errors"] == [], res
        assert res["header_background"] == "rgb(34, 51, 68)", page  # style.css applies
        assert all(u.startswith(base + "/") for u in res["requests"]), res["requests"]  # nothing from elsewhere
    e1 = results[1]
    assert e1["title"] == f"ECG {ids['e1']} - processed - ECG gateway"
    assert sorted(e1["bar_fills"]) == ["rgb(102, 153, 204)"] * 5 + ["rgb(255, 153, 51)"]  # AF above threshold
    assert e1["measurements"][:3] == ["heart_rate", "rr_interval", "pr_interval"] and len(e1["measurements"]) == 10
    assert e1["download"] == {"name": f"ecg-{ids['e1']}-report.pdf", "size": e1["download"]["size"], "head": "%PDF-"}
    assert e1["download_border"] == "rgb(34, 51, 68)"  # style.css's a.button
    from pypdf import PdfReader

    text = PdfReader(tmp_path / "downloaded.pdf").pages[0].extract_text()
    assert "DOE, JANE" in text and "Atrial fibrillation" in text
    control = results[-1]
    assert [v["directive"] for v in control["csp"]] == ["style-src-attr"], control
    assert any("Content Security Policy" in m for m in control["console_errors"])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_user_login_logout_and_a_replayed_cookie_in_chromium(served, readonly_db, tmp_path):
    """Issue 17: a user (not the token) signs in through the form, sees the pages its role
    allows, logs out; the browser is sent to the login page, and a copy of the cookie taken
    before the logout opens nothing.  A wrong password is refused and audited."""
    from sqlalchemy import select

    from gateway.admin.users import add_user, get_user
    from gateway.store.models import AuditLog

    base, ids = served
    with readonly_db.session_factory() as s:
        if get_user(s, "viewer.b") is None:
            add_user(s, "viewer.b", "viewer", "browser-pass-1", full_name="Vera Viewer", actor="test")
            s.commit()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "admin_user_viewer.png"
    shot.unlink(missing_ok=True)
    page = f"/ecgs/{ids['e1']}"
    ok, wrong, audit = drive(
        base,
        [
            {
                "next": page,
                "username": "viewer.b",
                "password": "browser-pass-1",
                "logout": True,
                "dom": True,
                "screenshot": str(shot),
            },
            {"next": page, "username": "viewer.b", "password": "not-the-password"},
            {"next": "/audit", "username": "viewer.b", "password": "browser-pass-1"},
        ],
        tmp_path,
    )
    assert "error" not in ok, ok
    assert ok["url"] == base + page and ok["h1"].startswith(f"ECG {ids['e1']}")
    assert "Vera Viewer (viewer)" in ok["dom"] and "Resend" not in ok["dom"]  # a viewer gets no resend button
    assert "report-pdf" not in ok["dom"] and 'href="/audit"' not in ok["dom"]  # nor exports, nor the audit log
    assert ok["logout_url"] == f"{base}/login"
    assert ok["after_logout_url"].startswith(f"{base}/login?next=")
    assert ok["replayed_cookie_url"].startswith(f"{base}/login?next=") and ok["replayed_cookie_h1"] == "Log in"
    assert wrong.get("error") and wrong["url"].startswith(f"{base}/login")  # stays on the login page
    assert audit["h1"] == "Refused"  # the audit log is for admins
    with readonly_db.session_factory() as s:
        rows = [(a.action, a.address) for a in s.scalars(select(AuditLog).where(AuditLog.actor == "viewer.b"))]
    assert ("login", "127.0.0.1") in rows and ("login_failed", "127.0.0.1") in rows and ("logout", "127.0.0.1") in rows
    assert ("view_ecg", "127.0.0.1") in rows
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
