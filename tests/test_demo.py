"""`ecg-gateway demo send`: the sample reaches a real SCP and each copy is a new instance."""

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from gateway.config import Config
from gateway.receive.scp import start_scp
from gateway.store.models import EcgInstance

ROOT = Path(__file__).resolve().parents[1]


def test_demo_send_stores_new_instances(db_url, session_factory, tmp_path, port):
    cfg = Config.model_validate({"dicom": {"port": port, "min_free_disk_mb": 1},
                                 "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")}})
    scp = start_scp(cfg.dicom, cfg.storage, session_factory)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
        env["ECG_GATEWAY_DICOM__PORT"] = str(port)
        r = subprocess.run([sys.executable, "-m", "gateway", "demo", "send", "--count", "3"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
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
    r = subprocess.run([sys.executable, "-m", "gateway", "demo", "send", "--port", str(port)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert f"association with 127.0.0.1:{port} (ECGGW) was not established" in r.stderr
