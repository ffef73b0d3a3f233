"""Micro-batching: ECGs that arrive together share one model call.

A worker thread takes the first waiting ECG, then waits at most
``max_wait_ms`` for more, up to ``batch_size``, and runs them as one batch;
each submitter's future gets its own row back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from gateway.infer.architecture import INPUT_SHAPE
from gateway.infer.runner import EcgOutput, EnsembleOutput

log = logging.getLogger("gateway.infer.batcher")

_STOP = object()


class MicroBatcher:
    """Collects single ECGs into batches for ``predict``."""

    def __init__(self, predict: Callable[[np.ndarray], EnsembleOutput], batch_size: int, max_wait_ms: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._predict = predict
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._submit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="infer-batcher", daemon=True)
        self._thread.start()

    def submit(self, x: np.ndarray) -> "Future[EcgOutput]":
        """Queue one ECG (4096, 12); the future resolves to its :class:`EcgOutput`.

        Raises ``ValueError`` at once for a wrong shape and ``RuntimeError``
        after :meth:`close`.
        """
        x = np.asarray(x)
        if x.shape != INPUT_SHAPE:
            raise ValueError(f"an ECG must be {INPUT_SHAPE}, got {x.shape}")
        fut: Future[EcgOutput] = Future()
        with self._submit_lock:
            if self._closed:
                raise RuntimeError("the micro-batcher is closed")
            self._queue.put((x, fut))
        return fut

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting ECGs, finish the queued ones, stop the worker."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def _collect(self, first: Any) -> tuple[list[Any], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                # Drain what was queued before close() without waiting further.
                deadline = 0.0
                continue
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            self._run_batch(batch)
        # close() put _STOP last, so anything still queued came before it.
        rest = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)
        for i in range(0, len(rest), self.batch_size):
            self._run_batch(rest[i:i + self.batch_size])

    def _run_batch(self, batch: list[Any]) -> None:
        live = [(x, fut) for x, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            out = self._predict(np.stack([x for x, _ in live]).astype(np.float32, copy=False))
            if len(out) != len(live):
                raise RuntimeError(f"predict returned {len(out)} results for {len(live)} ECGs")
        except BaseException as exc:  # every waiter must hear about it
            log.exception("inference failed for a batch of %d ECGs", len(live))
            for _, fut in live:
                fut.set_exception(exc)
            return
        for i, (_, fut) in enumerate(live):
            fut.set_result(out.row(i))
