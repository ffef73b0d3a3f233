"""`ecg-gateway demo`: the one-command throwaway gateway (started as a real
process, stopped by SIGINT/SIGTERM); `demo send`: the sample reaches a real
SCP and each copy is a new instance."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.config import Config
from gateway.receive.scp import start_scp
from gateway.store.models import EcgInstance

ROOT = Path(__file__).resolve().parents[1]


def test_demo_send_stores_new_instances(db_url, session_factory, tmp_path, port):
    cfg = Config.model_validate(
        {
            "dicom": {"port": port, "min_free_disk_mb": 1},
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
        }
    )
    scp = start_scp(cfg.dicom, cfg.storage, session_factory)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
        env["ECG_GATEWAY_DICOM__PORT"] = str(port)
        r = subprocess.run(
            [sys.executable, "-m", "gateway", "demo", "send", "--count", "3"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        scp.shutdown()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.endswith(": 0x0000") for line in lines)
    with session_factory() as s:
        uids = set(s.scalars(select(EcgInstance.sop_instance_uid)))
    assert uids == {line.split(":")[0] for line in lines}


def test_demo_send_reports_a_refused_association(port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "send", "--port", str(port)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert f"association with 127.0.0.1:{port} (ECGGW) was not established" in r.stderr


def _start_demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", *args],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, out


def _wait_for(out: Path, proc: subprocess.Popen, text: str, timeout: float = 300) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = out.read_text()
        if text in seen:
            return seen
        assert proc.poll() is None, f"demo exited with {proc.returncode}:\n{seen}"
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no {text!r} in:\n{out.read_text()}")


@pytest.mark.slow
def test_demo_one_command_end_to_end_then_ctrl_c(tmp_path):
    import re
    import signal

    proc, out = _start_demo(tmp_path, "--count", "2")
    try:
        text = _wait_for(out, proc, "Ctrl-C stops the demo")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    text = out.read_text()
    assert code == 0, text
    home = Path(re.search(r"demo: a throwaway installation in (\S+) ", text).group(1))
    assert f"demo: stopped; removed {home}" in text
    assert not home.exists()
    # sent through DICOM, processed, delivered to the built-in EHR, shown in the table
    assert len(re.findall(r"C-STORE [\d.]+: 0x0000", text)) == 2
    assert len(re.findall(r"EHR received ORU\^R01\^ORU_R01 MSH-10 \w+: patient 642341, .*\[demo model\]", text)) == 2
    assert len(re.findall(r"│ processed │ .* │ delivered │ DEMO MODEL │", text)) == 2 and "2 row(s)" in text
    url, token = re.search(r"demo: web view (http://127\.0\.0\.1:\d+/) \(log in with token (\S+)\)", text).groups()
    assert len(token) >= 20
    assert "Traceback" not in text and "absl" not in text and "cuda" not in text.lower()


@pytest.mark.slow
def test_demo_web_view_answers_while_running_and_sigterm_stops_it(tmp_path):
    import re
    import signal

    import httpx

    proc, out = _start_demo(tmp_path, "--count", "1")
    try:
        text = _wait_for(out, proc, "Ctrl-C stops the demo")
        url, token = re.search(r"demo: web view (http://127\.0\.0\.1:\d+/) \(log in with token (\S+)\)", text).groups()
        api = httpx.get(url + "api/ecgs", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert api.status_code == 200
        assert api.json()["total"] == 1
        assert httpx.get(url + "api/ecgs", timeout=30).status_code in (401, 403)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    text = out.read_text()
    home = Path(re.search(r"demo: a throwaway installation in (\S+) ", text).group(1))
    assert code == 0, text
    assert not home.exists()


@pytest.mark.slow
def test_demo_stopped_while_starting_removes_its_folder(tmp_path):
    import re
    import signal

    proc, out = _start_demo(tmp_path)
    text = _wait_for(out, proc, "writing the untrained demo model")
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    text = out.read_text()
    home = Path(re.search(r"demo: a throwaway installation in (\S+) ", text).group(1))
    assert code == 0, text
    assert f"demo: stopped; removed {home}" in text and not home.exists()
