"""Loading the legacy Keras file, the compiled ensemble, thresholds, the demo model.

Building and saving the network takes seconds, so model files are written
once per module and shared.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from gateway import FINDINGS
from gateway.infer.demo import DEMO_ATTR, DEMO_LABEL, is_demo_file, write_demo_model
from gateway.infer.loader import ModelLoadError, load_model_file
from gateway.infer.runner import Ensemble, bucket_sizes, ensemble_sha256, load_ensemble, split_batch
from gateway.infer.thresholds import apply_thresholds
from infer_helpers import ecg_batch, legacy_model, write_legacy_file

PAPER = {"1dAVb": 0.124, "RBBB": 0.07, "LBBB": 0.05, "SB": 0.278, "AF": 0.39, "ST": 0.174}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infer")


@pytest.fixture(scope="module")
def legacy(workdir: Path) -> dict:
    """A Keras 2.2.4-style file, its weights-only twin, and plain-Keras reference outputs."""
    model = legacy_model(seed=1)
    x = ecg_batch(5, seed=0)
    path = write_legacy_file(model, workdir / "model.hdf5")
    weights_only = workdir / "weights_only.h5"
    model.save_weights(weights_only)
    return {"path": path, "weights_only": weights_only, "x": x, "reference": model(x, training=False).numpy()}


@pytest.fixture(scope="module")
def demos(workdir: Path) -> list[Path]:
    return [write_demo_model(workdir / f"demo_{seed}.hdf5", seed=seed) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def single(legacy: dict):
    return load_ensemble([str(legacy["path"])], batch_size=4)


# --- loading --------------------------------------------------------------------------------------


def test_legacy_file_is_really_keras_224_style(legacy):
    with h5py.File(legacy["path"], "r") as f:
        cfg = json.loads(f.attrs["model_config"])
        assert f.attrs["keras_version"] in (b"2.2.4", "2.2.4")
    assert cfg["class_name"] == "Model"
    assert cfg["config"]["layers"][0]["config"]["batch_input_shape"] == [None, 4096, 12]


def test_legacy_file_predictions_equal_plain_keras(legacy, single):
    assert single.members[0].loader == "keras"
    out = single.predict(legacy["x"])
    np.testing.assert_allclose(out.mean, legacy["reference"], atol=1e-5, rtol=0)
    # one model: no spread
    np.testing.assert_array_equal(out.min, out.mean)
    np.testing.assert_array_equal(out.max, out.mean)
    np.testing.assert_array_equal(out.std, np.zeros_like(out.mean))
    assert 0.05 < legacy["reference"].mean() < 0.95  # not saturated: the comparison means something


def test_identity_records_sha256_of_the_file_used(legacy, single):
    digest = hashlib.sha256(legacy["path"].read_bytes()).hexdigest()
    assert single.identity == {
        "files": [{"path": str(legacy["path"]), "sha256": digest, "demo": False}],
        "model_sha256": digest,
        "demo": False,
    }
    assert single.demo is False


def test_rejected_config_falls_back_to_building_the_architecture(legacy, workdir):
    # A config naming a layer class no Keras knows: both loaders refuse it, the weights are still good.
    broken = workdir / "unknown_layer.hdf5"
    broken.write_bytes(legacy["path"].read_bytes())
    with h5py.File(broken, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"][1]["class_name"] = "CuDNNConv1D"
        f.attrs["model_config"] = np.bytes_(json.dumps(cfg))
    loaded = load_model_file(broken)
    assert loaded.loader == "by-layer"
    np.testing.assert_allclose(loaded.model(legacy["x"], training=False), legacy["reference"], atol=1e-5, rtol=0)


def test_weights_only_file_loads_by_layer(legacy):
    loaded = load_model_file(legacy["weights_only"])
    assert loaded.loader == "by-layer"
    np.testing.assert_allclose(loaded.model(legacy["x"], training=False), legacy["reference"], atol=1e-5, rtol=0)


def test_wrong_shapes_are_refused(workdir):
    import tf_keras

    inp = tf_keras.layers.Input(shape=(5000, 12))
    out = tf_keras.layers.Dense(6, activation="sigmoid")(tf_keras.layers.GlobalAveragePooling1D()(inp))
    path = workdir / "other_model.hdf5"
    tf_keras.Model(inp, out).save(path, save_format="h5")
    with pytest.raises(
        ModelLoadError,
        match=(
            rf"^{path}: not the Ribeiro et al. ECG model: input \(None, 5000, 12\), output \(None, 6\); "
            r"expected input \(None, 4096, 12\) and output \(None, 6\)$"
        ),
    ):
        load_model_file(path)


def test_missing_and_non_hdf5_files_are_refused(tmp_path):
    with pytest.raises(
        ModelLoadError, match=rf"^{tmp_path}/nope.hdf5: no such model file \(run `ecg-gateway model fetch`\)"
    ):
        load_model_file(tmp_path / "nope.hdf5")
    junk = tmp_path / "model.hdf5"
    junk.write_bytes(b"<html>Zenodo is down</html>")
    with pytest.raises(ModelLoadError, match=rf"^{junk}: not an HDF5 file"):
        load_model_file(junk)
    with pytest.raises(ModelLoadError, match=rf"^{junk}: not an HDF5 file"):
        load_ensemble([str(junk)])


def test_hdf5_without_a_model_is_refused_naming_every_loader(tmp_path):
    path = tmp_path / "empty.hdf5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(
        ModelLoadError, match=rf"^{path}: cannot load as a Keras model: keras: .*; tf_keras: .*; by-layer: "
    ):
        load_model_file(path)


# --- running --------------------------------------------------------------------------------------


def test_bucket_sizes_and_split():
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(6) == [1, 2, 4, 6]
    assert bucket_sizes(1) == [1]
    assert split_batch(7, 8) == [4, 2, 1]
    assert split_batch(19, 8) == [8, 8, 2, 1]
    assert split_batch(13, 6) == [6, 6, 1]
    assert sum(split_batch(100, 6)) == 100


def test_mixed_batch_returns_each_ecg_its_own_result(legacy, single):
    # 7 ECGs with batch_size 4 run as pieces of 4, 2 and 1; each row must match that ECG alone.
    x = np.concatenate([legacy["x"], legacy["x"][::-1][:2]])
    out = single.predict(x)
    alone = np.stack([single.predict(x[i : i + 1]).mean[0] for i in range(len(x))])
    np.testing.assert_allclose(out.mean, alone, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out.mean[:5], legacy["reference"], atol=1e-5, rtol=0)
    assert len({tuple(np.round(r, 6)) for r in out.mean[:5]}) == 5  # the inputs really differ


@pytest.fixture(scope="module")
def three(demos):
    return load_ensemble([str(p) for p in demos], batch_size=4, warm_up=False)


def test_ensemble_of_three_is_mean_and_spread_of_the_three(three, demos, legacy):
    x = legacy["x"]
    # Each member called the plain Keras way, outside the compiled function.
    each = np.stack([np.asarray(m.model(x, training=False)) for m in three.members])
    out = three.predict(x)
    np.testing.assert_allclose(out.mean, each.mean(axis=0), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out.min, each.min(axis=0), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out.max, each.max(axis=0), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out.std, each.std(axis=0), atol=1e-6, rtol=0)
    assert (out.std > 0).all() and (out.min < out.max).all()
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in demos]
    assert three.identity["model_sha256"] == hashlib.sha256(",".join(sorted(hashes)).encode()).hexdigest()
    assert [f["sha256"] for f in three.identity["files"]] == hashes


def test_ensemble_sha256_of_one_file_is_the_file_hash():
    assert ensemble_sha256(["ab" * 32]) == "ab" * 32
    assert ensemble_sha256(["b", "a"]) == ensemble_sha256(["a", "b"]) == hashlib.sha256(b"a,b").hexdigest()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4096, 12), np.float32), r"must be \(n, 4096, 12\) with n >= 1, got \(4096, 12\)"),
        (np.zeros((0, 4096, 12), np.float32), r"got \(0, 4096, 12\)"),
        (np.zeros((1, 4000, 12), np.float32), r"got \(1, 4000, 12\)"),
        (np.full((1, 4096, 12), np.nan, np.float32), "NaN or infinite"),
        (np.array([[["a"] * 12] * 4096]), "must be numeric"),
    ],
)
def test_bad_input_is_refused(single, bad, message):
    with pytest.raises(ValueError, match=message):
        single.predict(bad)


# --- demo model -----------------------------------------------------------------------------------


def _stored_weights(path: Path) -> list[np.ndarray]:
    from gateway.infer.loader import _file_layers

    return [a for _, arrays in _file_layers(path) for a in arrays]


def test_demo_model_is_marked_and_deterministic(demos, workdir, legacy):
    assert all(is_demo_file(p) for p in demos)
    assert not is_demo_file(legacy["path"])
    with h5py.File(demos[0], "r") as f:
        assert f.attrs[DEMO_ATTR].startswith(DEMO_LABEL)
    again = write_demo_model(workdir / "again.hdf5", seed=1)
    first, second, other = _stored_weights(demos[0]), _stored_weights(again), _stored_weights(demos[1])
    assert len(first) == len(second) == 9 * 4 + 13 + 2  # 9 batch-norms x 4, 13 conv kernels, dense kernel + bias
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(a - c).max() > 1e-3 for a, c in zip(first, other, strict=True))  # another seed, other weights


def test_ensemble_with_a_demo_file_is_demo(three, single):
    ens = Ensemble([single.members[0], three.members[0]], batch_size=2)
    assert ens.demo is True and ens.identity["demo"] is True
    assert [f["demo"] for f in ens.identity["files"]] == [False, True]
    assert single.demo is False


# --- thresholds -----------------------------------------------------------------------------------


def test_thresholds_strictly_above_in_findings_order():
    probs = {"ST": 0.5, "AF": 0.39, "1dAVb": 0.125, "RBBB": 0.0, "LBBB": 0.05000001, "SB": 0.1}
    assert apply_thresholds(probs, PAPER) == ["1dAVb", "LBBB", "ST"]  # AF equal to its threshold: not called
    assert apply_thresholds({c: 0.0 for c in FINDINGS}, PAPER) == []
    assert apply_thresholds({c: 1.0 for c in FINDINGS}, PAPER) == list(FINDINGS)


def test_thresholds_missing_keys_are_errors():
    with pytest.raises(KeyError, match="no probability for finding 'SB'"):
        apply_thresholds({c: 0.5 for c in FINDINGS if c != "SB"}, PAPER)
    with pytest.raises(KeyError, match="no threshold for finding 'AF'"):
        apply_thresholds({c: 0.5 for c in FINDINGS}, {k: v for k, v in PAPER.items() if k != "AF"})


def test_config_defaults_are_the_paper_thresholds():
    from gateway.config import ModelConfig

    assert ModelConfig().thresholds == PAPER


def test_cli_demo_writes_marked_file_and_records_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gateway.cli import app
    from gateway.infer.manifest import read_manifest

    monkeypatch.setenv("ECG_GATEWAY_MODEL__DIR", str(tmp_path / "models"))
    out = tmp_path / "models" / "demo.hdf5"
    result = CliRunner().invoke(app, ["model", "demo", "--out", str(out), "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: untrained demo model (seed 4), NOT for clinical use" in result.output
    assert is_demo_file(out)
    entry = read_manifest(tmp_path / "models")["files"]["demo.hdf5"]
    assert entry["demo"] is True and entry["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    listed = CliRunner().invoke(app, ["model", "list"])
    assert listed.exit_code == 0 and DEMO_LABEL in listed.output
