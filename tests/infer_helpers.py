"""Helpers for the infer tests: model files written the way Keras 2.2.4 wrote them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_KERAS3_ONLY_KEYS = {"module", "registered_name", "ragged", "optional", "groups"}


def _as_keras_224(node: Any) -> Any:
    """Drop config keys Keras 2.2.4 did not write (recursively)."""
    if isinstance(node, dict):
        return {k: _as_keras_224(v) for k, v in node.items() if k not in _KERAS3_ONLY_KEYS}
    if isinstance(node, list):
        return [_as_keras_224(v) for v in node]
    return node


def rewrite_as_keras_224(path: Path) -> None:
    """Make a tf_keras legacy HDF5 file look as Keras 2.2.4 saved it:
    class Model, keras_version 2.2.4, batch_input_shape on the input layer,
    byte-string attributes."""
    import h5py

    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg = _as_keras_224(cfg)
        cfg["class_name"] = "Model"
        for layer in cfg["config"]["layers"]:
            conf = layer["config"]
            if layer["class_name"] != "InputLayer":
                conf.pop("dtype", None)  # 2.2.4 wrote dtype only on the input layer
            if "kernel_initializer" in conf:  # he_normal as 2.2.4 spelled it
                conf["kernel_initializer"] = {
                    "class_name": "VarianceScaling",
                    "config": {"scale": 2.0, "mode": "fan_in", "distribution": "normal", "seed": None},
                }
            if layer["class_name"] == "BatchNormalization":
                conf["axis"] = -1
        inp = cfg["config"]["layers"][0]
        assert inp["class_name"] == "InputLayer" and "batch_input_shape" in inp["config"], inp
        f.attrs["model_config"] = np.bytes_(json.dumps(cfg))
        f.attrs["keras_version"] = np.bytes_("2.2.4")
        f.attrs["backend"] = np.bytes_("tensorflow")
        f["model_weights"].attrs["keras_version"] = np.bytes_("2.2.4")
        f["model_weights"].attrs["backend"] = np.bytes_("tensorflow")


def legacy_model(seed: int) -> Any:
    """The architecture in tf_keras (the Keras 2 API) with seeded random weights."""
    import tf_keras

    from gateway.infer.architecture import build_model
    from gateway.infer.demo import _seeded_weights

    model = build_model(tf_keras)
    _seeded_weights(model, seed)
    return model


def write_legacy_file(model: Any, path: Path) -> Path:
    """Save ``model`` (tf_keras) as a Keras 2.2.4-style HDF5 file."""
    model.save(path, save_format="h5")
    rewrite_as_keras_224(path)
    return path


def ecg_batch(n: int, seed: int) -> np.ndarray:
    """``n`` different ECG-like inputs (mV-scale noise plus a slow wave)."""
    rng = np.random.default_rng(seed)
    t = np.arange(4096) / 400.0
    base = np.sin(2 * np.pi * rng.uniform(0.8, 2.0, (n, 1, 12)) * t[None, :, None])
    return (base + 0.3 * rng.standard_normal((n, 4096, 12))).astype(np.float32)
