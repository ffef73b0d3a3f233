"""kill -9 during a burst of C-STOREs loses nothing that was acknowledged."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from conftest import free_port
from e2e_helpers import wait_for_port
from gateway.receive.spool import SUCCESS
from gateway.store.models import RECEIVED, EcgInstance
from receive_helpers import copies_with_new_uids, ecg_bytes, parse_statuses, write

ROOT = Path(__file__).resolve().parents[1]
BURST = 60


def _start_scp(env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.receive"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(int(env["ECG_GATEWAY_DICOM__PORT"]), timeout=60, proc=proc)
    return proc


@pytest.mark.slow
@pytest.mark.one_db("sqlite")  # commit-before-acknowledge is the code's order, the same on any database
def test_kill_9_mid_burst_loses_no_acknowledged_instance(
    db_url: str, session_factory, sample_path: Path, tmp_path: Path
) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    env = {
        **os.environ,
        "ECG_GATEWAY_CONFIG": str(ROOT / "config" / "gateway.toml"),
        "ECG_GATEWAY_DICOM__HOST": "127.0.0.1",
        "ECG_GATEWAY_DICOM__PORT": str(port),
        "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "0",
        "ECG_GATEWAY_STORAGE__DATABASE_URL": db_url,
        "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(spool),
    }
    uid_of: dict[str, str] = {}
    files = []
    template = ecg_bytes(sample_path)
    template_uid = str(dcmread(io.BytesIO(template), stop_before_pixels=True).SOPInstanceUID)
    for i, (uid, raw) in enumerate(copies_with_new_uids(template, template_uid, BURST)):
        path = write(tmp_path / "burst" / f"{i:03d}.dcm", raw)
        uid_of[str(path)] = uid
        files.append(path)

    scp = _start_scp(env)
    log = tmp_path / "storescu.log"
    with log.open("w") as out:
        cart = subprocess.Popen(
            ["storescu", "-d", "-nh", "-aet", "CART1", "-aec", "ECGGW", "127.0.0.1", str(port), *map(str, files)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while len(parse_statuses(log.read_text())) < 10 and time.monotonic() < deadline and cart.poll() is None:
                time.sleep(0.02)
            scp.send_signal(signal.SIGKILL)
            scp.wait(timeout=30)
            cart.wait(timeout=60)
        finally:
            for proc in (scp, cart):
                if proc.poll() is None:
                    proc.kill()
    acknowledged = [uid_of[f] for f, status in parse_statuses(log.read_text()) if status == SUCCESS]
    assert 10 <= len(acknowledged) < BURST, "the kill must land mid-burst"

    restarted = _start_scp(env)  # recovery: stale temp files are removed at start
    try:
        with session_factory() as s:
            rows = {r.sop_instance_uid: r for r in s.scalars(select(EcgInstance))}
        for uid in acknowledged:
            row = rows[uid]
            assert row.status == RECEIVED
            data = (spool / row.spool_path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row.sha256 and len(data) == row.size_bytes
            assert len(dcmread(spool / row.spool_path).WaveformSequence[0].WaveformData) == 240000
        assert list(spool.rglob(".incoming-*")) == []
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=30) == 0
