"""Issue 17 §5 end to end: DCMTK storescu (the cart) -> a running ``ecg-gateway
serve`` (untrained demo model) -> the npm simple-hl7 receiver (the EHR), and a
reader in a real browser (npm playwright-core driving Debian's chromium,
tests/peers/overread.js): log in, open the worklist, remove one finding, add a
statement, confirm.  The EHR gets the AI's preliminary ORU first, then the
final one naming the reader in OBR-32 (parsed by python-hl7).  A viewer's
confirm and a form without its CSRF token are refused; the audit rows exist;
logout ends the session (the old cookie is refused).  Screenshots:
/tmp/shots/worklist.png and /tmp/shots/confirm.png.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import hl7
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from conftest import free_port
from deliver_helpers import receiver
from e2e_helpers import gateway_env, start_serve, stop, storescu, wait_for_port, wait_until
from gateway.admin.users import add_user
from gateway.findings import FINDINGS
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import PROCESSED, AuditLog, Confirmation, EcgInstance

pytestmark = pytest.mark.slow

PEERS = Path(__file__).resolve().parent / "peers"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path("/tmp/shots")
PASSWORD = "over-read password 1"
STATEMENT = "Sinus rhythm; compare with the ECG of last week"
WARD = "Cardiology 3B"


def drive(plan: dict, tmp_path: Path) -> dict:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (./dev test installs the Debian package)")
    if not (PEERS / "node_modules" / "playwright-core").is_dir():
        pytest.skip("npm playwright-core is not installed (./dev test runs npm ci in tests/peers)")
    path = tmp_path / "overread-plan.json"
    path.write_text(json.dumps({"chromium": CHROMIUM, **plan}))
    r = subprocess.run(
        ["node", str(PEERS / "overread.js"), str(path)], capture_output=True, text=True, timeout=300, cwd=PEERS
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert "error" not in out, out["error"]
    return out


def test_a_reader_confirms_in_the_browser_and_the_ehr_gets_p_then_f(sqlite_db_url, tmp_path, demo_model, sample_path):
    db_url = sqlite_db_url
    dicom_port, admin_port, hl7_port = free_port(), free_port(), free_port()
    # every threshold near 0: the untrained model's reading calls all six findings, so one can be removed
    config = tmp_path / "gateway.toml"
    config.write_text("[model.thresholds]\n" + "".join(f'"{code}" = 0.0001\n' for code in FINDINGS))
    env = gateway_env(
        tmp_path,
        db_url,
        demo_model,
        dicom_port,
        admin_port,
        ECG_GATEWAY_HL7__ENABLED="true",
        ECG_GATEWAY_HL7__PORT=str(hl7_port),
        ECG_GATEWAY_CONFIG=str(config),
        ECG_GATEWAY_HL7__INTERPRETER_AUTHORITY="HOSP",
    )
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    with sf() as s:
        add_user(s, "arossi", "reader", PASSWORD, full_name="Anna Rossi", hl7_id="D123", actor="test")
        add_user(s, "vview", "viewer", PASSWORD, full_name="Victor Viewer", actor="test")
        s.commit()
    ds = dcmread(sample_path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.CurrentPatientLocation = WARD
    cart_file = tmp_path / "cart.dcm"
    ds.save_as(cart_file, enforce_file_format=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shots = {"worklist": str(SHOTS / "worklist.png"), "confirm": str(SHOTS / "confirm.png")}
    for shot in shots.values():
        Path(shot).unlink(missing_ok=True)

    with receiver(hl7_port, tmp_path / "hl7.jsonl") as ehr:
        proc = start_serve(env, tmp_path / "serve.log")
        try:
            wait_for_port(dicom_port, proc=proc)
            wait_for_port(admin_port, proc=proc)
            results, text = storescu([cart_file], dicom_port, aet="CART7")
            assert [s for _, s in results] == ["Success"], text
            with sf() as s:
                ecg_id = s.scalar(select(EcgInstance.id).where(EcgInstance.sop_instance_uid == ds.SOPInstanceUID))

            def processed() -> bool:
                with sf() as s:
                    return s.get(EcgInstance, ecg_id).status == PROCESSED

            wait_until(processed, 180, what="the ECG processed", procs=[proc])
            wait_until(lambda: len(ehr.messages()) >= 1, 60, what="the AI's ORU at the EHR", procs=[proc])
            with sf() as s:
                ai_findings = list(s.get(EcgInstance, ecg_id).prediction.findings)
            assert ai_findings == list(FINDINGS)
            remove = "AF"
            out = drive(
                {
                    "base": f"http://127.0.0.1:{admin_port}",
                    "ecg_id": ecg_id,
                    "remove": remove,
                    "statement": STATEMENT,
                    "shots": shots,
                    "reader": {"username": "arossi", "password": PASSWORD},
                    "viewer": {"username": "vview", "password": PASSWORD},
                },
                tmp_path,
            )
            wait_until(lambda: len(ehr.messages()) >= 2, 60, what="the confirmed ORU at the EHR", procs=[proc])
        finally:
            assert stop(proc) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        received = [hl7.parse(m["message"]) for m in ehr.messages()]

    # what the browser saw
    assert out["worklist"]["url"].endswith("/worklist") and out["worklist"]["h1"].startswith("Over-read worklist")
    assert out["worklist"]["count"] == "1" and out["worklist"]["ids"] == [str(ecg_id)]
    assert out["worklist"]["wards"] == [WARD]
    assert out["ecg_page"]["state"] == "unconfirmed" and out["ecg_page"]["checked_before"] == list(FINDINGS)
    assert out["ecg_page"]["checked_after"] == [c for c in FINDINGS if c != remove]
    assert out["without_csrf"]["status"] == 403 and "CSRF" in out["without_csrf"]["body"]
    assert out["after_confirm"]["url"].endswith(f"/worklist?confirmed={ecg_id}&version=1")
    assert f"ECG {ecg_id} confirmed (version 1)" in out["after_confirm"]["note"]
    assert out["after_confirm"]["count"] == "0" and out["after_confirm"]["ids"] == []
    assert out["confirmed_page"]["state"] == "corrected" and "Anna Rossi" in out["confirmed_page"]["by"]
    assert out["confirmed_page"]["versions"] == 1
    assert out["reader_csp"] == []
    assert "/login" in out["after_logout"]["url"] and "/login" in out["same_browser_after_logout"]["url"]
    assert "/login" in out["replayed_cookie"]["url"] and out["replayed_cookie"]["h1"] == "Log in"
    assert out["viewer"]["forms"] == 0 and "Only a reader can confirm" in out["viewer"]["note"]
    assert out["viewer"]["confirm"]["status"] == 403 and "needs the reader role" in out["viewer"]["confirm"]["body"]

    # what the EHR got: the AI's preliminary result, then the reader's final one
    assert len(received) == 2, [str(m.segment("MSH")) for m in received]
    first, second = received
    assert str(first.segment("OBR")[25]) == "P" and {str(o[11]) for o in first.segments("OBX")} == {"P"}
    assert str(second.segment("OBR")[25]) == "F" and {str(o[11]) for o in second.segments("OBX")} == {"F"}
    assert str(first.segment("OBR")[3]) == str(second.segment("OBR")[3])  # one order
    assert str(second.segment("MSH")[11]) == "D"  # still the demo model's result
    cnn = second.segment("OBR")[32][0][0]
    assert [str(cnn[i]) for i in (0, 1, 2, 8)] == ["D123", "Rossi", "Anna", "HOSP"]
    impressions = [o for o in second.segments("OBX") if str(o[3][0][0]) == "8601-7"]
    assert [str(o[5][0][0]) if o[2][0] == "CWE" else second.unescape(str(o[5])) for o in impressions] == [
        "270492004",
        "59118001",
        "164909002",
        "426177001",
        "427084000",
        STATEMENT,
    ]
    assert all(str(o[16][0][0]) == "D123" for o in impressions)
    ai = [str(o[5][0][0]) for o in second.segments("OBX") if str(o[3][0][0]) == "AI_FINDING"]
    assert len(ai) == 6 and "164889003" in ai  # the AI's AF stays, as the AI's
    assert len([o for o in second.segments("OBX") if str(o[2]) == "NM" and str(o[3][0][0]).endswith("_PROB")]) == 6

    # what the database keeps
    with sf() as s:
        [c] = s.scalars(select(Confirmation).where(Confirmation.ecg_id == ecg_id)).all()
        assert (c.username, c.hl7_id, c.findings, c.statements, c.outcome, c.result_status) == (
            "arossi",
            "D123",
            [f for f in FINDINGS if f != remove],
            [STATEMENT],
            "corrected",
            "F",
        )
        assert c.changes["vs_ai"] == {"added": [], "removed": [remove]}
        audit = [(a.actor, a.action) for a in s.scalars(select(AuditLog).order_by(AuditLog.id))]
    for expected in [
        ("arossi", "login"),
        ("arossi", "view_worklist"),
        ("arossi", "view_ecg"),
        ("arossi", "ecg_confirm"),
        ("arossi", "logout"),
        ("vview", "login"),
        ("vview", "view_ecg"),
    ]:
        assert expected in audit, (expected, audit)
    assert audit.count(("arossi", "ecg_confirm")) == 1
    for shot in shots.values():
        assert Path(shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    engine.dispose()
