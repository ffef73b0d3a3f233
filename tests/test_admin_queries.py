"""Admin queries and the `results` / `ecg` commands on a database with known rows."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from admin_helpers import MODEL_SHA, XSS_NAME, audit_rows, model_input, seed
from gateway.admin.queries import ROW_KEYS, QueryError, ecg_detail, ecg_rows
from gateway.cli import app
from gateway.normalise import input_sha256, normaliser_version

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def seeded(session_factory, sample_path, tmp_path):
    return seed(session_factory, sample_path, tmp_path / "spool")


@pytest.fixture
def config_file(db_url, tmp_path):
    p = tmp_path / "gateway.toml"
    p.write_text(f'[storage]\ndatabase_url = "{db_url}"\nspool_dir = "{tmp_path / "spool"}"\n')
    return p


@pytest.fixture
def ro_sf(readonly_db):
    return readonly_db.session_factory


@pytest.fixture
def ro_ids(readonly_db):
    return readonly_db.ids


@pytest.fixture
def ro_config(readonly_db, tmp_path):
    p = tmp_path / "gateway.toml"
    p.write_text(f'[storage]\ndatabase_url = "{readonly_db.url}"\nspool_dir = "{readonly_db.spool_dir}"\n')
    return p


def ids(rows):
    return [r["id"] for r in rows]


def test_rows_have_the_documented_keys_and_values(ro_sf, ro_ids):
    with ro_sf() as s:
        rows = ecg_rows(s)
    assert ids(rows) == [ro_ids[k] for k in ("e6", "e5", "e4", "e3", "e2", "e1")]  # newest first
    assert all(tuple(r) == ROW_KEYS for r in rows)
    by_id = {r["id"]: r for r in rows}
    r1 = by_id[ro_ids["e1"]]
    assert r1["patient_id"] == "P1" and r1["patient_name"] == "DOE^JANE" and r1["accession_number"] == "A1"
    assert r1["received_at"] == "2026-01-01T10:00:00+00:00"
    assert r1["status"] == "processed" and r1["error"] is None
    assert list(r1["probabilities"]) == ["1dAVb", "RBBB", "LBBB", "SB", "AF", "ST"]
    assert r1["probabilities"]["AF"] == pytest.approx(0.91)
    assert r1["findings"] == ["AF"] and r1["model_sha256"] == MODEL_SHA and r1["demo_model"] is False
    assert r1["hl7_status"] == "delivered"
    r2 = by_id[ro_ids["e2"]]
    assert r2["demo_model"] is True and r2["findings"] == ["RBBB", "LBBB"] and r2["quality_flags"] == ["V1: flat line"]
    assert r2["hl7_status"] == "pending"  # the newest non-superseded message
    r3 = by_id[ro_ids["e3"]]
    assert (r3["status"], r3["probabilities"], r3["findings"], r3["hl7_status"]) == ("rejected", None, [], "not_sent")
    assert r3["error"].startswith("recording too short")
    assert by_id[ro_ids["e5"]]["status"] == "received"  # claimed by a worker, still awaiting a result
    assert by_id[ro_ids["e6"]]["hl7_status"] == "failed"
    json.dumps(rows)  # serialisable as is


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"patient_id": "P1"}, ["e3", "e1"]),
        ({"patient_id": "nobody"}, []),
        ({"accession": "A2"}, ["e2"]),
        ({"since": datetime(2026, 1, 3, tzinfo=UTC)}, ["e6", "e5", "e4", "e3"]),
        ({"until": datetime(2026, 1, 3, 10, tzinfo=UTC)}, ["e2", "e1"]),  # exclusive
        ({"since": datetime(2026, 1, 2), "until": datetime(2026, 1, 4)}, ["e3", "e2"]),  # naive = UTC
        ({"status": "received"}, ["e5"]),
        ({"status": "processed"}, ["e6", "e2", "e1"]),
        ({"status": "rejected"}, ["e3"]),
        ({"status": "failed"}, ["e4"]),
        ({"finding": "AF"}, ["e1"]),
        ({"finding": "RBBB"}, ["e2"]),
        ({"finding": "LBBB"}, ["e2"]),
        ({"finding": "ST"}, []),
        ({"patient_id": "P1", "status": "rejected"}, ["e3"]),
        ({"limit": 2}, ["e6", "e5"]),
        ({"limit": 2, "offset": 4}, ["e2", "e1"]),
    ],
)
def test_filters(ro_sf, ro_ids, filters, expected):
    with ro_sf() as s:
        assert ids(ecg_rows(s, **filters)) == [ro_ids[k] for k in expected]


@pytest.mark.parametrize(
    "filters, message",
    [
        ({"status": "done"}, "status: unknown status 'done'"),
        ({"finding": "AFIB"}, "finding: unknown finding 'AFIB'"),
        ({"offset": -1}, "must not be negative"),
    ],
)
def test_bad_filters_are_named(ro_sf, ro_ids, filters, message):
    with ro_sf() as s, pytest.raises(QueryError, match=message):
        ecg_rows(s, **filters)


def test_detail_by_id_and_by_uid(ro_sf, ro_ids):
    with ro_sf() as s:
        by_id = ecg_detail(s, str(ro_ids["e1"]))
        by_uid = ecg_detail(s, "1.2.826.0.1.3680043.10.1.1")
        assert ecg_detail(s, "999999") is None and ecg_detail(s, "1.2.3.4") is None
    assert by_id == by_uid
    assert by_id["prediction"]["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert by_id["prediction"]["normalisation"]["resample"]["to_hz"] == 400
    assert [m["status"] for m in by_id["hl7_messages"]] == ["delivered"]
    assert "MSA|AA|CTRL1" in by_id["hl7_messages"][0]["ack"]


# --- the command line -------------------------------------------------------------------------


def cli(config_file, *args):
    return CliRunner().invoke(app, ["--config", str(config_file), *args])


def test_cli_list_json_equals_the_query_rows(ro_sf, ro_ids, ro_config):
    r = cli(ro_config, "results", "list", "--format", "json", "--patient-id", "P1")
    assert r.exit_code == 0, r.output
    with ro_sf() as s:
        assert json.loads(r.stdout) == ecg_rows(s, patient_id="P1")
    assert ids(json.loads(r.stdout)) == [ro_ids["e3"], ro_ids["e1"]]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--accession", "A2"], ["e2"]),
        (["--since", "2026-01-03", "--until", "2026-01-05T00:00:00Z"], ["e4", "e3"]),
        (["--status", "processed", "--limit", "2"], ["e6", "e2"]),
        (["--finding", "AF"], ["e1"]),
    ],
)
def test_cli_list_filters(ro_ids, ro_config, args, expected):
    r = cli(ro_config, "results", "list", "-f", "json", *args)
    assert r.exit_code == 0, r.output
    assert ids(json.loads(r.stdout)) == [ro_ids[k] for k in expected]


def test_cli_list_csv(ro_ids, ro_config):
    r = cli(ro_config, "results", "list", "--format", "csv", "--finding", "RBBB")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == str(ro_ids["e2"]) and row["patient_name"] == XSS_NAME
    assert float(row["p_RBBB"]) == pytest.approx(0.8) and row["findings"] == "RBBB;LBBB"
    assert row["demo_model"] == "true" and row["hl7_status"] == "pending" and row["error"] == ""


def test_cli_list_table(ro_ids, ro_config):
    r = cli(ro_config, "results", "list")
    assert r.exit_code == 0, r.output
    assert "DOE^JANE" in r.stdout and "RBBB LBBB" in r.stdout and "DEMO MODEL" in r.stdout
    assert "<script>alert(1)</script>^[/]EVIL?[2J" in r.stdout and "\x1b" not in r.stdout
    assert "6 row(s)" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--status", "done"], "--status: unknown status 'done'; use received, processed, rejected, failed"),
        (["--finding", "AFIB"], "--finding: unknown finding 'AFIB'"),
        (["--since", "yesterday"], "--since: not an ISO 8601 date or date-time: 'yesterday'"),
        (["--format", "xml"], "--format: unknown format 'xml'"),
    ],
)
def test_cli_list_bad_input(ro_ids, ro_config, args, message):
    r = cli(ro_config, "results", "list", *args)
    assert r.exit_code == 2
    assert message in r.stderr


def test_cli_on_an_unmigrated_database(empty_db_url, tmp_path):
    p = tmp_path / "g.toml"
    p.write_text(f'[storage]\ndatabase_url = "{empty_db_url}"\n')
    r = cli(p, "results", "list")
    assert r.exit_code == 1
    assert "database not initialised: run `ecg-gateway db upgrade`" in r.stderr


def test_cli_show(ro_ids, ro_config, sample_path):
    r = cli(ro_config, "results", "show", "1.2.826.0.1.3680043.10.1.1")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert f"ECG {ro_ids['e1']}" in out and "DOE^JANE" in out
    assert "AF" in out and "0.910" in out and "0.390" in out
    assert "Padding           48 before, 48 after" in out  # the normalisation report
    # what reproduces the result: model, thresholds (above) and the model input's hash and normaliser
    signal = model_input(sample_path)[0]
    assert f"model input   sha256 {input_sha256(signal)}  normaliser {normaliser_version()}" in out
    assert "Model lead order  I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6" in out
    assert "HL7           delivered" in out and "MSA|AA|CTRL1" in out
    r = cli(ro_config, "results", "show", str(ro_ids["e2"]))
    assert "DEMO MODEL" in r.stdout and "^[/]EVIL?[2J" in r.stdout and "\x1b" not in r.stdout
    r = cli(ro_config, "results", "show", str(ro_ids["e3"]), "--format", "json")
    assert json.loads(r.stdout)["error"].startswith("recording too short")
    r = cli(ro_config, "results", "show", "424242")
    assert r.exit_code == 1 and "no ECG with id or SOP Instance UID '424242'" in r.stderr


def test_export_input_is_the_exact_model_input_and_audited(seeded, config_file, session_factory, sample_path, tmp_path):
    out = tmp_path / "in.npy"
    r = cli(config_file, "ecg", "export-input", str(seeded["e1"]), "-o", str(out))
    assert r.exit_code == 0, r.output
    array = np.load(out)
    assert array.dtype == np.float32 and array.shape == (4096, 12)
    np.testing.assert_array_equal(array, model_input(sample_path)[0])
    (row,) = audit_rows(session_factory)
    assert row.action == "export_input" and row.target == f"ecg:{seeded['e1']}"
    assert row.actor.startswith("cli:") and row.detail["path"] == str(out.resolve())

    r = cli(config_file, "ecg", "export-input", str(seeded["e1"]), "-o", str(out))
    assert r.exit_code == 1 and "exists; use --force" in r.stderr
    r = cli(config_file, "ecg", "export-input", str(seeded["e3"]), "-o", str(tmp_path / "no.npy"))
    assert r.exit_code == 1
    assert "has no model input (status rejected: recording too short" in r.stderr
    # The input is rebuilt from the spooled original: without it there is none.
    r = cli(config_file, "ecg", "export-input", str(seeded["e6"]), "-o", str(tmp_path / "no.npy"))
    assert r.exit_code == 1 and f"ECG {seeded['e6']}: stored file unreadable" in r.stderr
    assert not (tmp_path / "no.npy").exists() and len(audit_rows(session_factory)) == 1


def test_export_dicom_is_the_stored_original_and_audited(seeded, config_file, session_factory, sample_path, tmp_path):
    out = tmp_path / "orig.dcm"
    r = cli(config_file, "ecg", "export-dicom", "1.2.826.0.1.3680043.10.1.1", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == sample_path.read_bytes()
    (row,) = audit_rows(session_factory)
    assert (row.action, row.target) == ("export_dicom", f"ecg:{seeded['e1']}")

    r = cli(config_file, "ecg", "export-dicom", str(seeded["e6"]), "-o", str(tmp_path / "x.dcm"))
    assert r.exit_code == 1 and "stored file unreadable" in r.stderr
    stored = tmp_path / "spool/2026/01/01/sample.dcm"
    stored.write_bytes(stored.read_bytes() + b"\0")
    r = cli(config_file, "ecg", "export-dicom", str(seeded["e1"]), "-o", str(tmp_path / "y.dcm"), "--force")
    assert r.exit_code == 1 and "does not match its sha256" in r.stderr
    assert not (tmp_path / "y.dcm").exists() and len(audit_rows(session_factory)) == 1


def test_results_and_ecg_commands_do_not_import_tensorflow(seeded, config_file, tmp_path):
    # One interpreter runs the three commands; none may have pulled in TensorFlow/Keras.
    out = tmp_path / "a.npy"
    commands = [
        ["results", "list", "-f", "json"],
        ["results", "show", str(seeded["e1"])],
        ["ecg", "export-input", str(seeded["e1"]), "-o", str(out)],
    ]
    code = (
        "import json, runpy, sys\n"
        f"for args in json.loads({json.dumps(json.dumps(commands))}):\n"
        f"    sys.argv = ['ecg-gateway', '--config', {str(config_file)!r}, *args]\n"
        "    try:\n        runpy.run_module('gateway', run_name='__main__')\n"
        "    except SystemExit as exc:\n        assert not exc.code, (args, exc.code)\n"
        "bad = [m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(bad))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert "HEAVY:\n" in r.stdout, r.stdout[-500:] + r.stderr
    assert out.is_file()
