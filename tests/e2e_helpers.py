"""Helpers for tests that run the real gateway process and real DICOM clients."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.serve import STARTED_LINE

ROOT = Path(__file__).resolve().parents[1]


def wait_for_port(port: int, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    """Until ``port`` accepts connections and, for a ``serve`` started by
    :func:`start_serve`, until it logged that it started: ``serve`` binds its
    ports before loading the model, so an open port alone is not ready."""
    # the default is generous: a serve start (TensorFlow import, model load, warm-up) on a loaded 2-core machine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        # the start line first: every probe connection to a bound but not yet serving DICOM port holds
        # one of [dicom] max_associations until acse_timeout, and would lock the test's own carts out
        if not _serve_started(proc):
            time.sleep(0.1)
            continue
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.1)
            continue
        return
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def _serve_started(proc: subprocess.Popen | None) -> bool:
    log_path, offset = getattr(proc, "log_path", None), getattr(proc, "log_offset", 0)
    if log_path is None:
        return True
    with open(log_path, "rb") as f:
        f.seek(offset)
        return STARTED_LINE.encode() in f.read()


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 120.0,
    interval: float = 0.2,
    what: str = "",
    procs: Iterable[subprocess.Popen] = (),
    log: Path | None = None,
) -> None:
    """Poll ``predicate``; fail at once if one of ``procs`` has exited.

    ``log`` (a serve log file): its tail goes into the failure message, so a
    run that fails in CI says what the gateway was doing."""
    deadline = time.monotonic() + timeout
    procs = list(procs)
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"gateway process exited with {p.returncode} while waiting for {what}{_tail(log)}")
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what or predicate}{_tail(log)}")


def _tail(log: Path | None, n: int = 6000) -> str:
    if log is None or not log.exists():
        return ""
    return "\n--- serve log (tail) ---\n" + log.read_text(errors="replace")[-n:]


def gateway_env(tmp: Path, db_url: str, model: Path, dicom_port: int, admin_port: int, **extra: str) -> dict[str, str]:
    """Environment for a `serve` subprocess: everything under ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    env.update(
        {
            "ECG_GATEWAY_STORAGE__DATABASE_URL": db_url,
            "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(tmp / "spool"),
            "ECG_GATEWAY_MODEL__FILES": f'["{model}"]',
            "ECG_GATEWAY_DICOM__PORT": str(dicom_port),
            "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "1",
            "ECG_GATEWAY_ADMIN__PORT": str(admin_port),
            "ECG_GATEWAY_ADMIN__TOKEN": "test-token-0123456789",
            "ECG_GATEWAY_HL7__ENABLED": "false",
            "ECG_GATEWAY_PROCESS__POLL_INTERVAL_S": "0.2",
            "ECG_GATEWAY_LOGGING__LEVEL": "INFO",
            # each batch size traced when first used (most tests run one or two sizes): ~2 s CPU per start
            "ECG_GATEWAY_MODEL__WARM_UP": "false",
        }
    )
    env.update(extra)
    return env


#: Every ``serve`` started by :func:`start_serve`; a test that fails before it
#: stops its gateway leaves it here for :func:`kill_leftover_serves`.
STARTED: list[subprocess.Popen] = []


def kill_leftover_serves(keep: frozenset[int] = frozenset()) -> list[int]:
    """SIGKILL (the whole session) every started ``serve`` still running but
    those whose ``id()`` is in ``keep`` (a module fixture's gateway); their pids."""
    killed = []
    for proc in [p for p in STARTED if id(p) not in keep]:
        STARTED.remove(proc)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            killed.append(proc.pid)
    return killed


def start_serve(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    offset = log_path.stat().st_size if log_path.exists() else 0
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc.log_path, proc.log_offset = log_path, offset  # type: ignore[attr-defined] # for wait_for_port
    STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


_SENT = re.compile(r"Sending Store Request: MsgID \d+, \((\w+)\)|Sending file: (.+)")
_STATUS = re.compile(r"Received Store Response \(([^)]*)\)")


def storescu(
    files: Iterable[Path],
    port: int,
    *,
    aet: str = "TESTCART",
    aec: str = "ECGGW",
    extra: Iterable[str] = (),
    timeout: float = 300,
) -> tuple[list[tuple[str, str]], str]:
    """Send files with DCMTK storescu over one association.

    storescu exits 0 even when a store failed, so the per-file outcome is read
    from its verbose output: returns ([(file, status text)], full output).
    """
    cmd = ["storescu", "-v", "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port), *map(str, files)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    text = out.stdout + out.stderr
    results: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        m = _STATUS.search(line)
        if m:
            results.append((current, m.group(1)))
    return results, text
