"""An untrained model of the published architecture, for trying the pipeline.

The file carries the HDF5 root attribute :data:`DEMO_ATTR`; everything the
gateway produces with it says :data:`DEMO_LABEL`.  TensorFlow is imported only
by :func:`write_demo_model`.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

#: Root attribute of the HDF5 file that marks it as untrained.
DEMO_ATTR = "ecg_gateway_demo"
#: What results, HL7 messages and admin views say when this model was used.
DEMO_LABEL = "untrained demo model"


def is_demo_file(path: str | os.PathLike[str]) -> bool:
    """Whether the HDF5 file carries the untrained-demo marker."""
    import h5py

    with h5py.File(path, "r") as f:
        return DEMO_ATTR in f.attrs


def _seeded_weights(model: Any, seed: int) -> None:
    """He-normal kernels and plausible batch-norm statistics, from ``seed``
    alone (Keras' own initialisers would depend on global random state)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kind = type(layer).__name__
        new = []
        for i, w in enumerate(weights):
            if kind == "BatchNormalization":
                # gamma, beta, moving mean, moving variance
                value = [
                    rng.uniform(0.8, 1.2, w.shape),
                    rng.normal(0, 0.1, w.shape),
                    rng.normal(0, 0.1, w.shape),
                    rng.uniform(0.5, 1.5, w.shape),
                ][i]
            elif kind == "Dense" and w.ndim > 1:
                # Small enough that the sigmoids are not all saturated (logits of order 1).
                value = rng.normal(0.0, 0.15 / np.sqrt(w.shape[0]), w.shape)
            elif w.ndim > 1:
                fan_in = int(np.prod(w.shape[:-1]))
                value = rng.normal(0.0, np.sqrt(2.0 / fan_in), w.shape)
            else:
                value = rng.normal(0.0, 0.5, w.shape)
            new.append(value.astype(w.dtype))
        layer.set_weights(new)


def write_demo_model(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a Keras HDF5 file of the published architecture with seeded
    random weights and the untrained-demo marker; returns its path.

    The file is written next to ``path`` and renamed into place, so a reader
    never sees half a file.
    """
    import h5py
    import keras

    from gateway.infer.architecture import build_model

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    model = build_model(keras)
    _seeded_weights(model, seed)
    fd, tmp = tempfile.mkstemp(prefix=".demo-", suffix=".hdf5", dir=target.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "HDF5 is a legacy format": it is the published one
            keras.saving.save_model(model, tmp)
        with h5py.File(tmp, "r+") as f:
            f.attrs[DEMO_ATTR] = f"{DEMO_LABEL}: seeded random weights (seed {seed}), not for clinical use"
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
