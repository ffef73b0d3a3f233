"""Issue 14 §9: the systemd unit and the reverse-proxy example are checked, not just shipped.

- ``systemd-analyze verify`` (Debian's systemd) accepts deploy/ecg-gateway.service
  with nothing to say, in a root where its ExecStart exists (as after a wheel
  install into /opt/ecg-gateway); a misspelt directive makes it speak.
- The unit and deploy/gateway.toml agree: the spool and the SQLite folder are
  the only writable paths, the console script is the wheel's.
- deploy/nginx-ecg-gateway.conf passes ``nginx -t``, and a real nginx with it in
  front of the real admin app serves the login over TLS with a Secure cookie,
  redirects plain HTTP, and reaches /healthz.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from admin_helpers import web_login
from conftest import free_port
from deliver_helpers import self_signed_cert

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "ecg-gateway.service"
NGINX_SITE = ROOT / "deploy" / "nginx-ecg-gateway.conf"


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (a key may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` in a root holding the system's units and a stand-in
    for the wheel's console script at the unit's ExecStart path."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (./dev test installs Debian's systemd)")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    exe = root / directives(unit_text)["ExecStart"][0].split()[0].lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/ecg-gateway.service").write_text(unit_text)
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "/etc/systemd/system/ecg-gateway.service"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_systemd_unit_verifies_cleanly(tmp_path):
    r = verify(tmp_path, UNIT.read_text())
    assert (r.returncode, r.stdout + r.stderr) == (0, "")
    # The checker does check: a misspelt directive and a bad value are reported.
    bad = (
        UNIT.read_text()
        .replace("ProtectSystem=strict", "ProtectSytem=strict")
        .replace("Restart=on-failure", "Restart=sometimes")
    )
    r = verify(tmp_path / "bad", bad)
    assert "Unknown key 'ProtectSytem'" in r.stderr and "sometimes" in r.stderr


def test_unit_fits_the_wheel_install_and_the_site_config():
    from gateway.config import load_config

    d = directives(UNIT.read_text())
    assert d["ExecStart"] == ["/opt/ecg-gateway/bin/ecg-gateway serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "ecg-gateway" in scripts  # the console script a wheel install puts in the venv's bin/
    assert d["User"] == d["Group"] == ["ecg-gateway"]
    assert "u ecg-gateway " in (ROOT / "deploy" / "ecg-gateway.sysusers").read_text()
    assert (d["ProtectSystem"], d["Restart"], d["KillSignal"]) == (["strict"], ["on-failure"], ["SIGTERM"])
    assert d["NoNewPrivileges"] == ["yes"] and d["CapabilityBoundingSet"] == [""]
    env = dict(e.split("=", 1) for e in d["Environment"])
    assert env["ECG_GATEWAY_CONFIG"] == "/etc/ecg-gateway/gateway.toml"

    # deploy/gateway.toml (the site file the unit reads) writes only where the unit lets it.
    cfg = load_config(ROOT / "deploy" / "gateway.toml", environ={})
    writable = [Path(p) for p in d["ReadWritePaths"][0].split()]
    sqlite_dir = Path(cfg.storage.database_url.removeprefix("sqlite:///")).parent
    assert set(writable) == {Path(cfg.storage.spool_dir), sqlite_dir}
    state = {Path("/var/lib") / p for p in d["StateDirectory"][0].split()}
    assert state == set(writable)  # created for the service user on first start
    model_dir = Path(cfg.model.files[0]).parent
    assert not any(model_dir == w or w in model_dir.parents for w in writable)  # the model stays read-only
    assert d["WorkingDirectory"] == ["/var/lib/ecg-gateway"]
    assert (cfg.admin.host, cfg.admin.cookie_secure) == ("127.0.0.1", "always")


def _nginx_config(tmp: Path, https_port: int, http_port: int, admin_port: int) -> Path:
    """The shipped example with test ports and a test certificate, inside a minimal
    nginx.conf that keeps every file under ``tmp``."""
    cert, key = self_signed_cert(tmp)
    site = NGINX_SITE.read_text()
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{admin_port};"),
        ("/etc/ssl/ecg-gateway/fullchain.pem", str(cert)),
        ("/etc/ssl/ecg-gateway/privkey.pem", str(key)),
    ):
        assert site.count(old) == 1, old
        site = site.replace(old, new)
    (tmp / "site.conf").write_text(site)
    temp = " ".join(f"{k}_temp_path {tmp / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = tmp / "nginx.conf"
    # started as root, nginx's workers would run as nobody, who cannot enter pytest's
    # private tmp folders to buffer a request body there (a real install has its own)
    user = "user root;\n" if os.geteuid() == 0 else ""
    main.write_text(
        f"{user}pid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'};\ndaemon off;\nworker_processes 1;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{ access_log off; {temp} include {tmp / 'site.conf'}; }}\n"
    )
    return main


_STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0'
_STOW_BODY = b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + b"x" * 1_500_000 + b"\r\n--b0--\r\n"


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.slow
@pytest.mark.one_db("sqlite")  # nginx in front of the admin view: the database kind does not matter
@pytest.mark.parametrize("cookie_secure", ["always", "auto"])  # auto: from the proxy's X-Forwarded-Proto
def test_nginx_example_serves_the_admin_view_over_tls_with_a_secure_cookie(
    db_url, session_factory, tmp_path, cookie_secure
):
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (./dev test installs Debian's nginx)")
    from gateway.admin.app import create_app, make_server
    from gateway.config import Config

    https_port, http_port, admin_port = free_port(), free_port(), free_port()
    conf = _nginx_config(tmp_path, https_port, http_port, admin_port)
    nginx = ["nginx", "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")]
    r = subprocess.run([*nginx, "-t"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "test is successful" in r.stderr, r.stderr

    # The gateway side as deploy/gateway.toml sets it: loopback, a token, Secure cookies.
    cfg = Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "admin": {"host": "127.0.0.1", "port": admin_port, "token": "tok3n", "cookie_secure": cookie_secure},
        }
    )
    server = make_server(create_app(cfg, session_factory), cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    proc = subprocess.Popen(nginx, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_port(admin_port)
        _wait_port(https_port)
        tls = ssl.create_default_context(cafile=str(tmp_path / "server.pem"))
        with httpx.Client(base_url=f"https://localhost:{https_port}", verify=tls) as client:
            r = client.get("/healthz")
            assert r.status_code in (200, 503) and "components" in r.json(), r.text  # the gateway answered
            r = web_login(client, "tok3n")
            assert r.status_code in (200, 303), r.text
            cookie = r.headers["set-cookie"]
            assert re.search(r";\s*secure\s*(;|$)", cookie, re.I) and "httponly" in cookie.lower(), cookie
            r = client.get("/ecgs")  # the session works through the proxy
            assert r.status_code == 200 and "<h1>ECGs</h1>" in r.text
            assert client.get("/metrics").status_code == 200  # from 127.0.0.1: allowed
            # the largest over-read confirmation (~150 kB form-encoded) reaches the gateway (its
            # answer: no such ECG), a body over the 1 MB admin limit is refused
            big = {"findings": [], "statements": ["\U0001f600" * 500] * 20, "comment": "\U0001f600" * 2000}
            body = json.dumps(big).encode()  # \ud83d\ude00 escapes: 12 bytes a character
            assert 140_000 < len(body) < 1024 * 1024
            headers = {"Authorization": "Bearer tok3n", "Content-Type": "application/json"}
            r = client.post("/api/ecgs/999999/confirm", content=body, headers=headers)
            assert r.status_code in (403, 404) and r.headers["content-type"].startswith("application/json"), r.text
            r = client.post("/api/ecgs/999999/confirm", content=b"x" * (1024 * 1024 + 1), headers=headers)
            assert r.status_code == 413
            # DICOMweb STOW-RS through the proxy: bigger than the admin's 1 MB limit, chunked
            stow = client.post(
                "/dicomweb/studies",
                content=iter([_STOW_BODY[:700_000], _STOW_BODY[700_000:]]),
                headers={"Authorization": "Bearer tok3n", "Content-Type": _STOW_TYPE},
            )
            assert stow.status_code == 409 and stow.headers["content-type"] == "application/dicom+json", stow.text
            assert stow.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]  # not DICOM, but it got there
        r = httpx.get(f"http://127.0.0.1:{http_port}/ecgs", follow_redirects=False)
        assert r.status_code == 301 and r.headers["location"] == "https://127.0.0.1/ecgs"
    finally:
        proc.terminate()
        proc.wait(10)
        server.should_exit = True
        thread.join(10)
