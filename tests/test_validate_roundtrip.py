"""validate end to end: data.zip from a local HTTP server -> direct check -> every tracing
as a cart-like DICOM ECG by C-STORE to a real gateway process -> stored probabilities
compared with the direct ones -> reports.  On SQLite only: validate migrates the empty
database it is given like serve does, and what it checks does not depend on the kind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from gateway import FINDINGS
from validate_helpers import http_server, make_gold, make_tracings, write_data_zip, write_test_set

ROOT = Path(__file__).resolve().parents[1]
N = 16  # the last one is 7 s long: shorter than [normalise] min_duration_s


@pytest.fixture(scope="module")
def served_data_zip(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("validate_data")
    tracings, gold = make_tracings(N, short=1), make_gold(N)
    write_test_set(root / "src", tracings, gold)
    (root / "www").mkdir()
    md5 = write_data_zip(root / "www" / "data.zip", root / "src")
    with http_server(root / "www") as base:
        yield f"{base}/data.zip", md5, tracings, gold


@pytest.mark.slow
@pytest.mark.one_db("sqlite")
def test_validate_fetch_direct_and_dicom_round_trip(
    served_data_zip, demo_model, demo_ensemble, empty_db_url, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from gateway.cli import app
    from gateway.store.db import make_engine
    from gateway.store.models import EcgInstance, Prediction
    from gateway.validate.metrics import direct_metrics

    url, md5, tracings, gold = served_data_zip
    for k in [k for k in os.environ if k.startswith("ECG_GATEWAY_")]:
        monkeypatch.delenv(k)
    env = {
        "ECG_GATEWAY_MODEL__FILES": json.dumps([str(demo_model)]),
        "ECG_GATEWAY_VALIDATE__URL": url,
        "ECG_GATEWAY_VALIDATE__MD5": md5,
        "ECG_GATEWAY_VALIDATE__DATA_DIR": str(tmp_path / "data"),
        "ECG_GATEWAY_VALIDATE__REPORT_DIR": str(tmp_path / "reports"),
        # inherited by the gateway started for the run
        "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "1",
        "ECG_GATEWAY_PROCESS__POLL_INTERVAL_S": "0.1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = CliRunner().invoke(
        app,
        [
            "--config",
            str(ROOT / "config/gateway.toml"),
            "validate",
            "--fetch",
            "--json",
            "--no-progress",
            "--database-url",
            empty_db_url,
            "--timeout",
            "240",
        ],
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)

    # fetched and verified
    assert (tmp_path / "data/ecg_tracings.hdf5").is_file()
    assert any("verified" in n and md5 in n for n in result["notes"])

    # direct check: the model identified, metrics = recomputation from the saved probabilities
    assert result["model"]["demo"] is True
    assert result["model"]["files"][0]["sha256"] == demo_ensemble.identity["files"][0]["sha256"]
    direct = np.load(result["direct_probabilities_file"])
    assert direct.shape == (N, 6)
    np.testing.assert_allclose(direct, demo_ensemble.predict(tracings).mean, atol=1e-5)
    thresholds = result["thresholds"]
    for j, f in enumerate(FINDINGS):
        called = direct[:, j] > thresholds[f]
        tp = int(np.sum(called & (gold[:, j] == 1)))
        fp = int(np.sum(called & (gold[:, j] == 0)))
        assert (result["direct"]["findings"][f]["tp"], result["direct"]["findings"][f]["fp"]) == (tp, fp)
    assert result["direct"] == json.loads(json.dumps(direct_metrics(gold, direct, thresholds).as_dict()))

    # round trip: every tracing through a real C-STORE; the 7 s one rejected as configured
    rt = result["roundtrip"]
    assert rt["status_counts"] == {"processed": N - 1, "rejected": 1}
    assert [r["index"] for r in rt["not_processed"]] == [N - 1]
    assert "shorter than the minimum" in rt["not_processed"][0]["error"]
    assert rt["compared"] == N - 1
    assert set(rt["per_variant"]) == {"400 Hz SCPECG", "400 Hz MDC", "500 Hz SCPECG", "500 Hz MDC"}
    half_step = rt["quantisation_half_step_mv"]
    assert half_step == pytest.approx(0.0005)
    for label in ("400 Hz SCPECG", "400 Hz MDC"):
        v = rt["per_variant"][label]
        assert v["compared"] == 4
        # at the stored rate the only change is 16-bit quantisation: the gateway's model input
        # is within half a step of the tracing, and the probabilities barely move
        assert v["max_abs_input_diff_mv"] <= half_step + 1e-6
        assert v["max_abs_prob_diff"] < 1e-3
    assert all(d["flips_beyond_margin"] == 0 for d in rt["findings"].values())
    assert rt["passed"] is True and result["passed"] is True
    assert result["verdict"].startswith("PASS") and "demo" in result["verdict"]

    # the gateway really stored them, in the database given
    engine = make_engine(empty_db_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Prediction)).scalar_one() == N - 1
        assert (
            conn.execute(
                select(func.count()).select_from(EcgInstance).where(EcgInstance.patient_id == "ECGGW-VALIDATION")
            ).scalar_one()
            == N
        )
    engine.dispose()

    # the reports
    run_dir = Path(result["reports"]["html"]).parent
    assert run_dir.parent == tmp_path / "reports"
    page = (run_dir / "report.html").read_text()
    assert "<svg" in page and page.count("<circle") == 6 * (N - 1)
    text = (run_dir / "report.txt").read_text()
    assert "VERDICT: PASS" in text and "paper F1" in text and result["model"]["files"][0]["sha256"] in text
    assert json.loads((run_dir / "report.json").read_text())["verdict"] == result["verdict"]
    assert "gateway started: scp, worker" in (run_dir / "gateway.log").read_text()


def test_a_gateway_that_cannot_start_is_reported_with_its_log(served_data_zip, demo_ensemble, tmp_path, monkeypatch):
    from gateway.config import Config
    from gateway.validate.roundtrip import RoundTripError
    from gateway.validate.run import ValidateOptions, run_validation

    _, _, tracings, gold = served_data_zip
    write_test_set(tmp_path / "data", tracings[:3], gold[:3])
    for k in [k for k in os.environ if k.startswith("ECG_GATEWAY_")]:
        monkeypatch.delenv(k)
    # the direct check uses the loaded demo model; the gateway is configured with a file that is not there
    cfg = Config.model_validate({"model": {"files": [str(tmp_path / "missing.hdf5")]}})
    opts = ValidateOptions(
        data_dir=tmp_path / "data", report_dir=tmp_path / "reports", config_path=str(ROOT / "config/gateway.toml")
    )
    with pytest.raises(RoundTripError, match=r"(?s)exited with code 2 before listening.*no model file"):
        run_validation(cfg, opts, ensemble=demo_ensemble)
    log = next((tmp_path / "reports").glob("*/gateway.log"))
    assert "missing.hdf5" in log.read_text()
