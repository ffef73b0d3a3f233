"""Load one published model file (Keras 2.2.4-era HDF5) and check its shape.

Tried in order, each only when the previous one rejects the file:

1. Keras 3 (``keras.models.load_model``: its legacy HDF5 loader);
2. ``tf_keras`` (the Keras 2 API);
3. the architecture built in code (:mod:`gateway.infer.architecture`) with
   the file's weights assigned layer by layer.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.infer.architecture import INPUT_SHAPE, N_OUTPUTS
from gateway.infer.hashing import file_digest

log = logging.getLogger("gateway.infer.loader")

EXPECTED_INPUT = (None, *INPUT_SHAPE)
EXPECTED_OUTPUT = (None, N_OUTPUTS)


class ModelLoadError(Exception):
    """A model file cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class LoadedModel:
    path: Path
    sha256: str
    demo: bool
    #: A callable Keras model: ``model(x, training=False)`` -> (n, 6).
    model: Any
    #: Which loader succeeded: "keras", "tf_keras" or "by-layer".
    loader: str


def _shape(value: Any) -> tuple[Any, ...]:
    if isinstance(value, list):  # a functional model with one input reports a list
        if len(value) != 1:
            return tuple(value)
        value = value[0]
    return tuple(None if d is None else int(d) for d in value)


def check_shapes(model: Any, path: Path) -> None:
    """Refuse a model that is not (None, 4096, 12) -> (None, 6)."""
    got_in, got_out = _shape(model.input_shape), _shape(model.output_shape)
    if got_in != EXPECTED_INPUT or got_out != EXPECTED_OUTPUT:
        raise ModelLoadError(
            f"{path}: not the Ribeiro et al. ECG model: input {got_in}, output {got_out}; "
            f"expected input {EXPECTED_INPUT} and output {EXPECTED_OUTPUT}"
        )


def _load_keras(path: Path) -> Any:
    import keras

    return keras.models.load_model(path, compile=False)


def _load_tf_keras(path: Path) -> Any:
    import tf_keras

    return tf_keras.models.load_model(path, compile=False)


def _file_layers(path: Path) -> list[tuple[str, list[Any]]]:
    """(layer name, weight arrays) with weights, in the file's layer order."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f  # load_model vs save_weights files
        if "layer_names" not in group.attrs:
            raise ValueError("no layer_names: not a Keras HDF5 weights file")
        out = []
        for raw in group.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            layer = group[name]
            weight_names = [w.decode() if isinstance(w, bytes) else str(w) for w in layer.attrs["weight_names"]]
            if weight_names:
                out.append((name, [layer[w][()] for w in weight_names]))
        return out


def _load_by_layer(path: Path) -> Any:
    """Build the architecture and assign the file's weights by layer.

    Layers are matched on their weight shapes, in order.  Every shape in this
    network is unique except the two batch-norms of a residual unit, which
    depend on each other, so any topological layer order pairs them alike.
    """
    import keras

    from gateway.infer.architecture import build_model

    model = build_model(keras)
    stored: dict[tuple[Any, ...], list[tuple[str, list[Any]]]] = defaultdict(list)
    for name, arrays in _file_layers(path):
        stored[tuple(a.shape for a in arrays)].append((name, arrays))
    targets = [layer for layer in model.layers if layer.weights]
    for layer in targets:
        signature = tuple(tuple(w.shape) for w in layer.weights)
        if not stored.get(signature):
            raise ValueError(f"no stored layer has weights of shapes {signature} (for {layer.name})")
        _, arrays = stored[signature].pop(0)
        layer.set_weights(arrays)
    left = [name for group in stored.values() for name, _ in group]
    if left:
        raise ValueError(f"stored layers not in the architecture: {', '.join(left[:5])}")
    return model


_LOADERS = (("keras", _load_keras), ("tf_keras", _load_tf_keras), ("by-layer", _load_by_layer))


def load_model_file(path: str | os.PathLike[str]) -> LoadedModel:
    """Load and check one model file; raises :class:`ModelLoadError`.

    The sha256 is of the bytes loaded: the file is hashed before and after
    loading, and a file that changed meanwhile is refused.
    """
    import h5py

    from gateway.infer.demo import DEMO_ATTR

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such model file (run `ecg-gateway model fetch`)")
    if not h5py.is_hdf5(p):
        raise ModelLoadError(f"{p}: not an HDF5 file (a partial download? check with `ecg-gateway model verify`)")
    sha256 = file_digest(p)
    with h5py.File(p, "r") as f:
        demo = DEMO_ATTR in f.attrs
    errors = []
    for name, loader in _LOADERS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = loader(p)
        except Exception as exc:  # each Keras version rejects old files its own way
            log.info("%s: %s loader failed: %s", p, name, exc)
            errors.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        check_shapes(model, p)
        if file_digest(p) != sha256:
            raise ModelLoadError(f"{p}: the file changed while it was being loaded; try again")
        if errors:
            log.warning("%s: loaded with the %s loader (%s)", p, name, "; ".join(errors))
        return LoadedModel(path=p, sha256=sha256, demo=demo, model=model, loader=name)
    raise ModelLoadError(f"{p}: cannot load as a Keras model: {'; '.join(errors)}")
