"""Run one model or an ensemble: one compiled function, fixed batch shapes.

All model files are called inside one ``tf.function`` that returns their
stacked probabilities, traced once per batch size in :func:`bucket_sizes`
(``model.predict`` per ECG costs about four times as much).  A batch of
``n`` ECGs is cut into pieces of those sizes without padding: the cost of
this network grows linearly with the batch, so padding would only waste work.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.infer.architecture import INPUT_SHAPE
from gateway.infer.loader import LoadedModel, load_model_file

log = logging.getLogger("gateway.infer.runner")


@dataclass(frozen=True)
class EnsembleOutput:
    """Per-ECG statistics across the ensemble's models: arrays (n, 6)."""

    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray
    std: np.ndarray

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_members(cls, probs: np.ndarray) -> EnsembleOutput:
        """Statistics of ``probs`` (models, n, 6) over the models."""
        p = probs.astype(np.float64)
        return cls(mean=p.mean(axis=0), min=p.min(axis=0), max=p.max(axis=0), std=p.std(axis=0))


def bucket_sizes(batch_size: int) -> list[int]:
    """The batch shapes compiled for: powers of two below ``batch_size``, and it."""
    sizes = {batch_size}
    b = 1
    while b < batch_size:
        sizes.add(b)
        b *= 2
    return sorted(sizes)


def split_batch(n: int, batch_size: int) -> list[int]:
    """Piece sizes (each in :func:`bucket_sizes`) adding up to ``n``."""
    buckets = bucket_sizes(batch_size)[::-1]
    pieces = []
    while n > 0:
        size = next(b for b in buckets if b <= n)
        pieces.append(size)
        n -= size
    return pieces


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(threads: int) -> None:
    """Intra-op threads = ``threads`` (0 = cores), inter-op 1: this network is a
    chain of layers, so all cores are best spent inside each convolution.
    serve overlaps the model call with the worker's Python stages; 1 instead
    of 2 intra-op threads there on 2 cores cut serve's CPU per ECG by ~10-15 ms
    but its burst ECG/s measured better in 3 and worse in 2 of 5 alternating
    bench_e2e runs (load ~8), latency p50 not better: the default was kept.
    Only possible before TensorFlow starts its runtime; later calls log and go on."""
    import tensorflow as tf

    intra = threads or usable_cores()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current not in (0, intra):
            log.warning("TensorFlow already running with %d threads; model.threads=%d ignored", current, threads)


def ensemble_sha256(hashes: Sequence[str]) -> str:
    """One file: its sha256; several: sha256 of their sorted hashes joined by ','."""
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256(",".join(sorted(hashes)).encode("ascii")).hexdigest()


class Ensemble:
    """Loaded model files and their compiled inference function."""

    def __init__(self, members: Sequence[LoadedModel], batch_size: int = 8) -> None:
        import tensorflow as tf

        if not members:
            raise ValueError("an ensemble needs at least one model file")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.members = list(members)
        self.batch_size = batch_size
        models = [m.model for m in self.members]

        def _probs(x: Any) -> Any:
            return tf.stack([tf.cast(m(x, training=False), tf.float32) for m in models])

        self._fn = tf.function(_probs, autograph=False)
        self._compiled: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _concrete(self, size: int) -> Any:
        with self._lock:
            fn = self._compiled.get(size)
            if fn is None:
                import tensorflow as tf

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Keras 3: "structure of inputs doesn't match"
                    fn = self._fn.get_concrete_function(tf.TensorSpec((size, *INPUT_SHAPE), tf.float32))
                self._compiled[size] = fn
            return fn

    def warm_up(self, sizes: Sequence[int] | None = None) -> None:
        """Trace and run the given batch sizes once (default: every bucket a
        batch can be split into), so the first ECGs do not pay for tracing."""
        for size in sizes or bucket_sizes(self.batch_size):
            self.predict_members(np.zeros((size, *INPUT_SHAPE), np.float32))

    def predict_members(self, x: np.ndarray) -> np.ndarray:
        """Each model's probabilities: (models, n, 6) float32."""
        x = _checked(x)
        out, start = [], 0
        for size in split_batch(x.shape[0], self.batch_size):
            out.append(self._concrete(size)(x[start : start + size]).numpy())
            start += size
        return np.concatenate(out, axis=1)

    def predict(self, x: np.ndarray) -> EnsembleOutput:
        """Mean, min, max and std across models for each ECG of ``x`` (n, 4096, 12)."""
        return EnsembleOutput.from_members(self.predict_members(x))

    @property
    def demo(self) -> bool:
        """Any file carries the untrained-demo marker."""
        return any(m.demo for m in self.members)

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "files": [{"path": str(m.path), "sha256": m.sha256, "demo": m.demo} for m in self.members],
            "model_sha256": ensemble_sha256([m.sha256 for m in self.members]),
            "demo": self.demo,
        }


def _checked(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1:] != INPUT_SHAPE or x.shape[0] < 1:
        raise ValueError(f"model input must be (n, {INPUT_SHAPE[0]}, {INPUT_SHAPE[1]}) with n >= 1, got {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"model input must be numeric, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("model input contains NaN or infinite values")
    return x


def load_ensemble(paths: Sequence[str], *, threads: int = 0, batch_size: int = 8, warm_up: bool = True) -> Ensemble:
    """Load every file (one = a single model) and compile; raises
    :class:`~gateway.infer.loader.ModelLoadError` naming the bad file."""
    if not paths:
        raise ValueError("no model files given")
    configure_threads(threads)
    members = [load_model_file(p) for p in paths]
    for m in members:
        log.info(
            "model %s sha256 %s loaded (%s loader)%s",
            m.path,
            m.sha256,
            m.loader,
            " [untrained demo model]" if m.demo else "",
        )
    ens = Ensemble(members, batch_size=batch_size)
    if warm_up:
        ens.warm_up()
    return ens
