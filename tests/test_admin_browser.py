"""The web view in a real browser: headless Debian chromium against uvicorn serving the admin app.

Chromium cannot be handed a cookie on its command line, and the token must not
travel in a URL (logs, history).  So the browser opens a local HTML file that
posts the token to /login like an admin would; the login answer moves on to
the requested page by itself, carrying the SameSite=Strict session cookie.
The screenshots are kept in tests/artifacts/.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from admin_helpers import build_readonly_db
from gateway.admin.api import create_app, make_server
from gateway.config import Config

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TOKEN = "browser-test-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def readonly_db(tmp_path_factory, sample_path):
    """SQLite only: the browser checks rendering; the queries are tested on both databases."""
    yield from build_readonly_db("sqlite", tmp_path_factory.mktemp("admin-browser"), sample_path)


@pytest.fixture
def served(readonly_db, port):
    ids = readonly_db.ids
    cfg = Config.model_validate({"storage": {"database_url": readonly_db.url, "spool_dir": str(readonly_db.spool_dir)},
                                 "admin": {"host": "127.0.0.1", "port": port, "token": TOKEN}})
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
    """Log in through the form and open ``page``; the DOM after scripts ran (or '' with a screenshot)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (./dev test installs the Debian package)")
    form = tmp_path / "login.html"
    form.write_text(
        f'<!doctype html><form method="post" action="{base}/login">'
        f'<input type="hidden" name="token" value="{html.escape(token)}">'
        f'<input type="hidden" name="next" value="{html.escape(page)}"></form>'
        "<script>document.forms[0].submit()</script>"
    )
    args = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=15000", "--hide-scrollbars",
    ]
    if screenshot is not None:
        args += ["--window-size=1400,2400", f"--screenshot={screenshot}"]
    else:
        args += ["--dump-dom"]
    r = subprocess.run([*args, form.as_uri()], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_list_and_ecg_pages_in_chromium(served, tmp_path):
    base, ids = served
    dom = browse(base, "/ecgs", tmp_path)
    assert "<h1>ECGs</h1>" in dom, dom[-2000:]
    assert "6 ECG(s)" in dom and "DOE^JANE" in dom
    assert 'class="badge finding">AF<' in dom and 'class="badge status rejected"' in dom

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
