"""`serve` starts or fails loudly: every listener is bound before anything is
written, a busy port is one line naming host:port and exit code 1, and the
start line names only what really started, with the admin URL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from conftest import free_port
from deliver_helpers import self_signed_cert
from e2e_helpers import ROOT, stop, wait_until


def serve_env(tmp: Path, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    model = tmp / "model.hdf5"
    model.write_bytes(b"")  # exists: the refusal check passes; a loser must never get as far as loading it
    env.update(
        {
            "ECG_GATEWAY_STORAGE__DATABASE_URL": db_url,
            "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(tmp / "spool"),
            "ECG_GATEWAY_MODEL__FILES": f'["{model}"]',
            "ECG_GATEWAY_DICOM__HOST": "127.0.0.1",
            "ECG_GATEWAY_DICOM__PORT": str(free_port()),
            "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "1",
            "ECG_GATEWAY_ADMIN__PORT": str(free_port()),
            "ECG_GATEWAY_ADMIN__TOKEN": "test-token-0123456789",
            "ECG_GATEWAY_HL7__ENABLED": "false",
        }
    )
    env.update(extra)
    return env


def tables_in(db_url: str) -> list[str]:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database).exists():
        return []
    engine = create_engine(url)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.mark.slow
@pytest.mark.one_db("sqlite")  # serve stops before it opens the database, whatever its kind
@pytest.mark.parametrize("busy", ["dicom", "tls", "admin"])
def test_a_busy_port_is_one_line_exit_1_and_nothing_written(busy, empty_db_url, tmp_path, tls_pair):
    cert, key = tls_pair
    env = serve_env(
        tmp_path,
        empty_db_url,
        ECG_GATEWAY_DICOM__TLS_PORT=str(free_port()),
        ECG_GATEWAY_DICOM__TLS_CERT=str(cert),
        ECG_GATEWAY_DICOM__TLS_KEY=str(key),
    )
    variable, what = {
        "dicom": ("ECG_GATEWAY_DICOM__PORT", "DICOM"),
        "tls": ("ECG_GATEWAY_DICOM__TLS_PORT", "DICOM TLS"),
        "admin": ("ECG_GATEWAY_ADMIN__PORT", "admin HTTP"),
    }[busy]
    port = int(env[variable])
    # Another program holds the port (as a first gateway would); the other ports are free.
    with socket.create_server(("127.0.0.1", port)):
        r = subprocess.run(
            [sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout == ""
    assert r.stderr.splitlines() == [f"cannot listen on 127.0.0.1:{port} ({what}): Address already in use"]
    # Nothing was written: no migration, no row, no spool folder.
    assert tables_in(empty_db_url) == []
    assert not (tmp_path / "spool").exists()


@pytest.mark.slow
@pytest.mark.one_db("postgresql", "sqlite")
def test_a_second_gateway_on_the_same_ports_loses_without_touching_the_database(empty_db_url, tmp_path):
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    env = serve_env(first_dir, f"sqlite:///{first_dir / 'g.db'}")
    log = first_dir / "serve.log"
    with open(log, "wb") as out:
        first = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--components", "scp,admin"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "gateway started" in log.read_text(), timeout=120, what="first gateway", procs=[first])
        second_env = dict(
            env,
            ECG_GATEWAY_STORAGE__DATABASE_URL=empty_db_url,
            ECG_GATEWAY_STORAGE__SPOOL_DIR=str(second_dir / "spool"),
        )
        r = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--components", "scp,admin"],
            cwd=ROOT,
            env=second_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        assert stop(first) == 0
    port = env["ECG_GATEWAY_DICOM__PORT"]
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"cannot listen on 127.0.0.1:{port} (DICOM): Address already in use"]
    assert tables_in(empty_db_url) == []
    assert not (second_dir / "spool").exists()


@pytest.mark.slow
def test_start_line_names_what_started_and_the_admin_url(sqlite_db_url, tmp_path):
    env = serve_env(tmp_path, sqlite_db_url)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--components", "scp,hl7,admin"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "gateway started" in log.read_text(), timeout=120, what="gateway start", procs=[proc])
        # the admin server answers by the time the start line is written
        with socket.create_connection(("127.0.0.1", int(env["ECG_GATEWAY_ADMIN__PORT"])), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        assert stop(proc) == 0
    text = log.read_text()
    assert "gateway started: scp, admin\n" in text  # HL7 is disabled: not claimed
    assert "HL7 sender not started: [hl7] enabled = false" in text
    assert f"admin web view: http://127.0.0.1:{env['ECG_GATEWAY_ADMIN__PORT']}/" in text
    assert "alembic" not in text and "Context impl" not in text


def test_free_port_never_hands_out_a_port_twice():
    ports = [free_port() for _ in range(1000)]  # the bare kernel pick repeated ~35 of 1000
    assert len(set(ports)) == 1000
