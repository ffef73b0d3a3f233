"""validate: metrics, test-set reading, padding, lead check, fetch, report, CLI errors (no TensorFlow)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from gateway import FINDINGS
from gateway.validate.dataset import (
    DatasetError,
    check_limb_leads,
    fetch_test_set,
    lead_names,
    load_test_set,
    strip_padding,
)
from gateway.validate.metrics import Confusion, compare_probabilities, confusion, direct_metrics
from gateway.validate.report import html_report, svg_differences, text_report
from gateway.validate.roundtrip import Variant, cart_signal, parse_target, parse_variants
from validate_helpers import http_server, write_data_zip, write_test_set

ROOT = Path(__file__).resolve().parents[1]


# ---- metrics: a tiny case checked by hand -------------------------------------------------------


def test_direct_metrics_hand_checked():
    # A: called where p > 0.5 (0.5 itself is NOT called): rows 0 and 2.
    #    gold 1,1,0,0,1,0 -> TP row 0; FP row 2; FN rows 1, 4; TN rows 3, 5.
    # B: never called, never positive -> only TN; precision, recall, F1 undefined.
    gold = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [1, 0], [0, 0]])
    probs = np.array([[0.9, 0.1], [0.5, 0.1], [0.6, 0.1], [0.1, 0.1], [0.3, 0.1], [0.49, 0.1]])
    m = direct_metrics(gold, probs, {"A": 0.5, "B": 0.2}, findings=("A", "B"))
    a, b = m.per_finding["A"], m.per_finding["B"]
    assert (a.tp, a.fp, a.fn, a.tn) == (1, 1, 2, 2)
    assert a.precision == pytest.approx(1 / 2)
    assert a.recall == pytest.approx(1 / 3)
    assert a.specificity == pytest.approx(2 / 3)
    assert a.f1 == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))  # = 0.4
    assert (b.tp, b.fp, b.fn, b.tn) == (0, 0, 0, 6)
    assert (b.precision, b.recall, b.f1, b.specificity) == (None, None, None, 1.0)
    micro = m.micro
    assert (micro.tp, micro.fp, micro.fn, micro.tn) == (1, 1, 2, 8)
    assert micro.specificity == pytest.approx(8 / 9)
    macro = m.macro
    assert macro["precision"] == pytest.approx(0.5)  # B undefined: skipped, not counted as 0
    assert macro["specificity"] == pytest.approx((2 / 3 + 1) / 2)
    assert macro["f1"] == pytest.approx(0.4)
    d = m.as_dict()
    assert d["findings"]["A"]["tp"] == 1 and d["findings"]["B"]["precision"] is None


def test_f1_is_zero_with_positives_but_no_call():
    c = confusion(np.array([1, 1, 0]), np.array([0, 0, 0]))
    assert c == Confusion(tp=0, fp=0, fn=2, tn=1)
    assert c.f1 == 0.0 and c.precision is None and c.recall == 0.0


def test_paper_columns_in_direct_metrics():
    gold = np.zeros((3, 6), int)
    d = direct_metrics(gold, np.zeros((3, 6)), dict(zip(FINDINGS, [0.5] * 6, strict=True))).as_dict()
    assert d["findings"]["1dAVb"]["paper_table2"] == {
        "precision": 0.867,
        "recall": 0.929,
        "specificity": 0.995,
        "f1": 0.897,
    }
    assert d["findings"]["AF"]["published_model_f1"] == 0.783


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="must both be"):
        direct_metrics(np.zeros((3, 6)), np.zeros((4, 6)), dict(zip(FINDINGS, [0.5] * 6, strict=True)))
    with pytest.raises(ValueError, match="must both be"):
        compare_probabilities(np.zeros((0, 6)), np.zeros((0, 6)), dict(zip(FINDINGS, [0.5] * 6, strict=True)))


def test_compare_probabilities_flips_and_margin():
    thr = {"A": 0.124, "B": 0.5}
    direct = np.array([[0.100, 0.5], [0.130, 0.7], [0.300, 0.2]])
    gateway = np.array([[0.130, 0.5], [0.120, 0.7], [0.301, 0.2]])
    c = compare_probabilities(direct, gateway, thr, flip_margin=0.02, findings=("A", "B"), indices=[10, 11, 12])
    a = c.per_finding["A"]
    assert a.flips == 2 and a.flips_beyond_margin == 1
    assert a.max_abs == pytest.approx(0.030)
    assert c.per_finding["B"].max_abs == 0.0 and c.per_finding["B"].flips == 0
    assert c.findings_flipped == 1
    # tracing 10: 0.100 is 0.024 from the threshold -> a failure; tracing 11 (0.006 away) is tolerated
    assert [(f.index, f.beyond_margin) for f in c.flips] == [(10, True), (11, False)]
    assert not c.passed and len(c.failures) == 1 and "tracing 10" in c.failures[0]
    relaxed = compare_probabilities(direct, gateway, thr, flip_margin=0.03, findings=("A", "B"))
    assert relaxed.passed
    strict = compare_probabilities(direct, gateway, thr, flip_margin=0.03, max_abs_difference=0.01, findings=("A", "B"))
    assert strict.failures == ["A: max |difference| 0.03 > 0.01"]


# ---- dataset --------------------------------------------------------------------------------------


def test_strip_padding_finds_the_centred_zeros():
    x = np.zeros((4096, 12), np.float32)
    x[48:4048] = 1.0
    x[48, :] = 0.0  # a row of zeros INSIDE the signal at its very start is padding too...
    x[48, 3] = 0.2  # ...unless one lead is non-zero
    signal, before, after = strip_padding(x)
    assert (before, after, signal.shape) == (48, 48, (4000, 12))
    with pytest.raises(ValueError, match="zero in every lead"):
        strip_padding(np.zeros((10, 12)))


def test_limb_lead_check_detects_the_published_augmented_order():
    rng = np.random.default_rng(0)
    i, ii = rng.normal(size=(2, 5, 1000))
    leads = {"I": i, "II": ii, "III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2}
    stored = ["I", "II", "III", "aVL", "aVF", "aVR"]
    x = np.stack([leads[n] for n in stored] + [rng.normal(size=(5, 1000))] * 6, axis=-1)
    wrong = check_limb_leads(x, ["I", "II", "III", "aVR", "aVL", "aVF"])
    assert not wrong["agrees"] and wrong["looks_like"] == stored
    assert check_limb_leads(x, stored)["agrees"]
    assert lead_names(stored)[3:7] == ["aVL", "aVF", "aVR", "V1"]


def _tiny_set(folder: Path, n: int = 3) -> Path:
    t = np.zeros((n, 4096, 12), np.float32)
    t[:, 48:4048] = 0.5
    return write_test_set(folder, t, np.eye(n, 6, dtype=np.int8))


def test_load_test_set(tmp_path):
    folder = _tiny_set(tmp_path / "d", 3)
    ts = load_test_set(folder)
    assert ts.tracings.shape == (3, 4096, 12) and ts.gold.tolist()[0] == [1, 0, 0, 0, 0, 0]
    assert ts.source["exams_in_file"] == 3 and len(ts.source["tracings_sha256"]) == 64
    assert len(load_test_set(folder, limit=2)) == 2


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_dir", "no such directory"),
        ("no_gold", "gold_standard.csv: not found"),
        ("bad_value", "line 3: RBBB is '2', expected 0 or 1"),
        ("no_column", "no column ST"),
        ("rows", "holds 3 tracings but"),
        ("shape", "has shape (3, 4000, 12)"),
        ("not_hdf5", "not a readable HDF5 file"),
        ("dataset_name", "no dataset 'tracings'"),
        ("nan", "tracing 1 contains NaN"),
    ],
)
def test_load_test_set_refuses_bad_input(tmp_path, damage, message):
    folder = _tiny_set(tmp_path / "d", 3)
    gold = folder / "gold_standard.csv"
    h5 = folder / "ecg_tracings.hdf5"
    if damage == "no_dir":
        folder = tmp_path / "missing"
    elif damage == "no_gold":
        gold.unlink()
    elif damage == "bad_value":
        lines = gold.read_text().splitlines()
        lines[2] = "0,2,0,0,0,0"
        gold.write_text("\n".join(lines) + "\n")
    elif damage == "no_column":
        gold.write_text(gold.read_text().replace(",ST", ",XX"))
    elif damage == "rows":
        gold.write_text("\n".join(gold.read_text().splitlines()[:-1]) + "\n")
    elif damage in ("shape", "dataset_name", "nan"):
        data = np.zeros((3, 4000 if damage == "shape" else 4096, 12), np.float32)
        if damage == "nan":
            data[1, 5, 5] = np.nan
        with h5py.File(h5, "w") as f:
            f.create_dataset("x" if damage == "dataset_name" else "tracings", data=data)
    elif damage == "not_hdf5":
        h5.write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match=__import__("re").escape(message)):
        load_test_set(folder)


# ---- fetch against a local HTTP server -----------------------------------------------------------


def test_fetch_verifies_md5_and_extracts(tmp_path):
    src = _tiny_set(tmp_path / "src", 3)
    served = tmp_path / "www"
    served.mkdir()
    md5 = write_data_zip(served / "data.zip", src)
    with http_server(served) as base:
        out = fetch_test_set(f"{base}/data.zip", md5.upper(), tmp_path / "data", progress=False)
        assert out.verified and out.md5 == md5
        assert sorted(p.name for p in out.files) == ["ecg_tracings.hdf5", "gold_standard.csv"]
        assert (tmp_path / "data/ecg_tracings.hdf5").read_bytes() == (src / "ecg_tracings.hdf5").read_bytes()
        assert len(load_test_set(tmp_path / "data")) == 3

        unverified = fetch_test_set(f"{base}/data.zip", "", tmp_path / "data2", progress=False)
        assert not unverified.verified and unverified.md5 == md5

        with pytest.raises(DatasetError, match="checksum mismatch.*deleted"):
            fetch_test_set(f"{base}/data.zip", "0" * 32, tmp_path / "data3", progress=False)
        assert not (tmp_path / "data3/data.zip").exists() and not (tmp_path / "data3/ecg_tracings.hdf5").exists()

        with pytest.raises(DatasetError, match="HTTP 404"):
            fetch_test_set(f"{base}/nothing.zip", "", tmp_path / "data4", progress=False, attempts=1)

        import zipfile

        with zipfile.ZipFile(served / "other.zip", "w") as zf:
            zf.writestr("readme.txt", "hello")
        with pytest.raises(DatasetError, match="not the published test set archive: no ecg_tracings.hdf5"):
            fetch_test_set(f"{base}/other.zip", "", tmp_path / "data5", progress=False)


# ---- round-trip pieces without a gateway ---------------------------------------------------------


def test_parse_variants_and_target():
    assert [v.label for v in parse_variants("400,500", "scpecg,MDC")] == [
        "400 Hz SCPECG",
        "400 Hz MDC",
        "500 Hz SCPECG",
        "500 Hz MDC",
    ]
    with pytest.raises(ValueError, match="whole numbers"):
        parse_variants("400Hz", "SCPECG")
    with pytest.raises(ValueError, match="code scheme"):
        parse_variants("400", "HL7")
    with pytest.raises(ValueError, match="outside"):
        parse_variants("50", "MDC")
    assert parse_target("pacs.local:104", "ECGGW") == ("pacs.local", 104, "ECGGW")
    assert parse_target("10.0.0.1:11112:OTHER", "ECGGW") == ("10.0.0.1", 11112, "OTHER")
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_target("10.0.0.1", "ECGGW")


def test_cart_signal_resamples_without_padding():
    x = np.zeros((4096, 12), np.float32)
    t = np.arange(4000) / 400
    x[48:4048] = np.sin(2 * np.pi * 1.0 * t)[:, None] + 0.1
    s400, before, after = cart_signal(x, 400)
    assert s400.shape == (4000, 12) and (before, after) == (48, 48)
    s500, _, _ = cart_signal(x, 500)
    assert s500.shape == (5000, 12)
    # a 1 Hz sine at 500 Hz: sample 500 is one second in, the same phase as sample 400 at 400 Hz
    assert s500[1000, 0] == pytest.approx(s400[800, 0], abs=1e-3)


def test_encode_tracing_writes_a_cart_like_object():
    from gateway.normalise import NormaliseParams, normalise_dataset
    from gateway.validate.roundtrip import encode_tracing

    x = np.zeros((4096, 12), np.float32)
    x[48:4048] = np.linspace(-2, 2, 4000)[:, None]
    x[48:4048, 0] = 40.0  # beyond 16 bits at 1 uV: clipped and counted
    ds, result = encode_tracing(x, 7, Variant(400, "MDC"), lead_names(["I", "II", "III", "aVR", "aVL", "aVF"]), 1.0)
    assert result.clipped_samples == 4000 and result.duration_s == 10.0 and result.pad_before == 48
    assert ds.PatientID == "ECGGW-VALIDATION" and ds.AccessionNumber == "VAL000007"
    assert ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSourceSequence[0].CodingSchemeDesignator == "MDC"
    back = normalise_dataset(ds, NormaliseParams()).signal
    assert np.max(np.abs(back[:, 1:] - x[:, 1:])) <= 0.0005 + 1e-6  # half a 1 uV step


# ---- report rendering -------------------------------------------------------------------------------


def _fake_result() -> dict:
    gold = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]])
    probs = np.array([[0.9, 0.0, 0, 0, 0, 0], [0.0, 0.9, 0, 0, 0, 0]])
    thr = dict(zip(FINDINGS, [0.5] * 6, strict=True))
    comparison = compare_probabilities(probs, probs + 1e-5, thr)
    rt = {
        "target": "x",
        "resolution_uv": 1.0,
        "variants": ["400 Hz SCPECG"],
        "status_counts": {"processed": 2},
        "not_processed": [],
        "compared": 2,
        "per_variant": {},
        **comparison.as_dict(),
    }
    return {
        "generated_at": "now",
        "gateway_version": "0",
        "verdict": "PASS",
        "model": {
            "files": [{"path": "m.hdf5", "sha256": "ab" * 32, "demo": False}],
            "model_sha256": "ab" * 32,
            "demo": False,
        },
        "dataset": {
            "tracings": "t.hdf5",
            "exams_used": 2,
            "exams_in_file": 2,
            "tracings_sha256": "c" * 64,
            "gold_standard": "g.csv",
            "gold_standard_sha256": "d" * 64,
            "lead_order": lead_names(["I", "II", "III", "aVR", "aVL", "aVF"]),
        },
        "direct": direct_metrics(gold, probs, thr).as_dict(),
        "roundtrip": rt,
        "failures": [],
        "notes": ["<b>escaped</b>"],
    }, comparison.abs_diff


def test_reports_render_tables_and_plot():
    result, diff = _fake_result()
    text = text_report(result)
    assert "VERDICT: PASS" in text and "paper F1" in text and "0.897" in text and "1.00e-05" in text
    page = html_report(result, diff, FINDINGS)
    assert page.count("<svg") == 1 and page.count("<circle") == 12 and "&lt;b&gt;escaped" in page
    svg = svg_differences(np.zeros((3, 6)), FINDINGS)
    assert svg.startswith("<svg") and svg.count("<circle") == 18


# ---- CLI: bad options answer quickly with exit 2 (no TensorFlow is loaded) --------------------------


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str, env_extra: dict[str, str] | None = None):
    """Run the command in-process (the options are checked before any model is loaded)."""
    from typer.testing import CliRunner

    from gateway.cli import app

    for k in [k for k in os.environ if k.startswith("ECG_GATEWAY_")]:
        monkeypatch.delenv(k)
    for k, v in (env_extra or {}).items():
        monkeypatch.setenv(k, v)
    return CliRunner().invoke(app, ["--config", str(ROOT / "config/gateway.toml"), "validate", *args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rates", "fast"], "rates must be whole numbers"),
        (["--code-schemes", "XYZ"], "code scheme must be one of"),
        (["--target", "nohost"], "--target must be HOST:PORT[:AET]"),
        (["--target", "127.0.0.1:104"], "--target needs --database-url"),
        (["--data", "/nonexistent/folder"], "no such directory"),
    ],
)
def test_cli_refuses_bad_options(tmp_path, monkeypatch, args, message):
    out = _cli(monkeypatch, *args, env_extra={"ECG_GATEWAY_VALIDATE__REPORT_DIR": str(tmp_path)})
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert not list(tmp_path.iterdir())  # no report for a run that did not happen


def test_cli_fetch_reports_a_checksum_mismatch(tmp_path, monkeypatch):
    src = _tiny_set(tmp_path / "src", 3)
    served = tmp_path / "www"
    served.mkdir()
    write_data_zip(served / "data.zip", src)
    with http_server(served) as base:
        out = _cli(
            monkeypatch,
            "--fetch",
            "--no-progress",
            env_extra={
                "ECG_GATEWAY_VALIDATE__URL": f"{base}/data.zip",
                "ECG_GATEWAY_VALIDATE__MD5": "1" * 32,
                "ECG_GATEWAY_VALIDATE__DATA_DIR": str(tmp_path / "data"),
            },
        )
    assert out.exit_code == 2
    assert (
        "WARNING" not in out.output and "checksum mismatch" in out.output and not (tmp_path / "data/data.zip").exists()
    )
