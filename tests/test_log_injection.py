"""Issue 13 §1, the log: the channel label that forges HL7 (CR, VT, FS) is
sent by DCMTK storescu to a running `serve`; the log file gets no raw control
character, the label only in escaped form, and no line that does not start
like a record (a timestamp) or a traceback continuation (two spaces).

The rejection reason is escaped where it is built, and gateway.logs escapes
every message again; tests/test_logs.py shows the latter on raw values.
"""

from __future__ import annotations

import json
import re
import subprocess
import warnings
from pathlib import Path

import pytest
from sqlalchemy import select

import ecg_variants as v
from conftest import free_port
from e2e_helpers import gateway_env, start_serve, stop, storescu, wait_for_port, wait_until
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import REJECTED, EcgInstance

#: Issue 13 §1, verbatim.
ATTACK_LABEL = "A\x1c\r\x0bMSH!#$%*!LAB!LAB!EHR!HOSPITAL!20260101!!ADT#A08!INJ1!P!2.5.1\rPID!1!!666666!!Hacked#Ed\rZ"
#: Every raw control character but the line feed that ends each record.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def attack_file(folder: Path) -> tuple[Path, str]:
    ds = v.new_uids(v.load_sample())
    channel = v.rhythm(ds).ChannelDefinitionSequence[0]
    del channel.ChannelSourceSequence
    del channel.ChannelSensitivityUnitsSequence
    with warnings.catch_warnings():  # longer than SH allows, with control characters: that is the attack
        warnings.simplefilter("ignore")
        channel.ChannelLabel = ATTACK_LABEL
        folder.mkdir()
        return v.save(ds, folder / "attack.dcm"), str(ds.SOPInstanceUID)


@pytest.mark.slow
@pytest.mark.one_db("sqlite")  # what reaches the log does not depend on the database kind
def test_channel_label_with_cr_vt_fs_never_reaches_the_log_raw(db_url, tmp_path, demo_model):
    path, uid = attack_file(tmp_path / "in")
    dicom_port = free_port()
    env = gateway_env(tmp_path, db_url, demo_model, dicom_port, free_port())
    log_path = tmp_path / "serve.log"
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    proc = start_serve(env, log_path, "--components", "scp,worker")
    try:
        wait_for_port(dicom_port, timeout=180, proc=proc)
        results, text = storescu([path], dicom_port)
        assert [s for _, s in results] == ["Success"], text

        def rejected() -> bool:
            with sf() as s:
                return s.scalar(select(EcgInstance.status).where(EcgInstance.sop_instance_uid == uid)) == REJECTED

        wait_until(rejected, 120, what="the attack ECG rejected", procs=[proc])
    finally:
        assert stop(proc) == 0, log_path.read_text()[-3000:]
        engine.dispose()
    raw = log_path.read_bytes().decode("utf-8")
    lines = raw.split("\n")
    assert lines[-1] == ""
    assert not [line for line in lines if RAW_CONTROL.search(line)]
    assert [line for line in lines[:-1] if not (RECORD_START.match(line) or line.startswith("  "))] == []
    # the label did reach the log, quoted with its control characters escaped
    rejection = [line for line in lines if f"sop={uid} rejected" in line]
    assert len(rejection) == 1 and "\\x1c\\r\\x0bMSH!#$%*!LAB" in rejection[0], rejection


@pytest.mark.slow
def test_json_format_through_serve_one_object_per_line(tmp_path):
    """[logging] format = "json": every line serve writes is one JSON object."""
    env = gateway_env(
        tmp_path,
        f"sqlite:///{tmp_path}/g.db",
        tmp_path / "unused.hdf5",
        free_port(),
        free_port(),
        ECG_GATEWAY_LOGGING__FORMAT="json",
        ECG_GATEWAY_DICOM__HOST="127.0.0.1",
    )
    port = int(env["ECG_GATEWAY_DICOM__PORT"])
    log_path = tmp_path / "serve.log"
    proc = start_serve(env, log_path, "--components", "scp,admin")
    try:
        wait_for_port(port, timeout=120, proc=proc)
        echo = subprocess.run(
            ["echoscu", "-aet", "CART", "-aec", "WRONG", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert echo.returncode != 0  # refused: called AE title is not ECGGW, which is logged with the AE titles
        wait_until(lambda: "rejected association" in log_path.read_text(), 30, what="the refusal logged")
    finally:
        assert stop(proc) == 0, log_path.read_text()[-3000:]
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    messages = [r["message"] for r in records]
    assert any(m.startswith("gateway started: scp, admin") for m in messages)
    assert any(m.startswith("admin web view: http://127.0.0.1:") for m in messages)
    assert any("rejected association" in m and "'WRONG'" in m for m in messages)
    assert all(r["level"] in ("INFO", "WARNING") for r in records)
