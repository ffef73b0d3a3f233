"""The worker's loop overlaps its batches (gateway.process.pipeline): the next
batch is claimed and prepared while the model runs, results are the serial
path's, and a stop writes every claimed batch and ends every thread.

The model is the real demo ensemble; only its first call is held until the
test lets it go, so the test sees what the loop does meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import select

from gateway.process.worker import Worker
from gateway.store.models import PROCESSED, RECEIVED, EcgInstance, Prediction

WAIT_S = 60.0  # generous: the shared 2-CPU machine is slow under load


class HeldModel:
    """The real ensemble; its first ``predict`` waits until :attr:`release` is set."""

    def __init__(self, ensemble: Any) -> None:
        self._ensemble = ensemble
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[int] = []

    def predict(self, x: np.ndarray) -> Any:
        self.batches.append(len(x))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(WAIT_S), "the test never released the model"
        return self._ensemble.predict(x)

    def __getattr__(self, name: str) -> Any:  # identity, ...
        return getattr(self._ensemble, name)


class RecordingWorker(Worker):
    """A worker that notes each batch it has prepared (read and normalised)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.prepared: list[list[int]] = []

    def _intake(self, ids: Sequence[int]) -> Any:
        items = super()._intake(ids)
        self.prepared.append(list(ids))
        return items


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("worker-model", "worker-write")]


@pytest.fixture
def stored(db_url, session_factory, tmp_path, demo_model, sample_path):  # type: ignore[no-untyped-def]
    """The config (micro-batch 2, no wait); ``store(n)``: n new copies of the sample stored."""
    import ecg_variants as v
    from test_process import make_config, store

    cfg = make_config(db_url, tmp_path, demo_model)
    cfg.model.batch_size = 2
    sample = dcmread(sample_path)
    return cfg, lambda n: [store(cfg, session_factory, v.new_uids(sample)) for _ in range(n)]


def run_in_thread(worker: Worker) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="test-worker-loop")
    thread.start()
    return stop, thread


def rows(session_factory, ids: Sequence[int]) -> list[EcgInstance]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return list(s.scalars(select(EcgInstance).where(EcgInstance.id.in_(ids)).order_by(EcgInstance.id)))


def test_the_next_batch_is_prepared_while_the_model_runs(stored, session_factory, demo_ensemble):
    cfg, store = stored
    serial_id = store(1)[0]  # the reference: one ECG the serial path (run_once) processes
    assert Worker(cfg, session_factory, demo_ensemble).run_once() == 1
    ids = store(4)  # two batches of 2
    model = HeldModel(demo_ensemble)
    worker = RecordingWorker(cfg, session_factory, model)
    stop, thread = run_in_thread(worker)
    try:
        assert model.entered.wait(WAIT_S), "the model was never called"
        # The model holds batch 1; the loop meanwhile claims and prepares batch 2.
        wait_until(lambda: len(worker.prepared) >= 2, "batch 2 was prepared during batch 1's model call")
        assert model.batches == [2]  # ... and batch 2 waits for the model, not the other way round
        model.release.set()
        wait_until(lambda: all(r.status == PROCESSED for r in rows(session_factory, ids)), "all were processed")
    finally:
        model.release.set()
        stop.set()
        worker.wake()
        thread.join(WAIT_S)
    assert not thread.is_alive() and pipeline_threads() == []
    assert worker.prepared == [ids[:2], ids[2:]] and model.batches == [2, 2]
    assert all(r.claimed_by is None and r.attempts == 1 for r in rows(session_factory, ids))
    with session_factory() as s:
        predictions = {p.ecg_id: p for p in s.scalars(select(Prediction))}
    reference = predictions[serial_id]
    for ecg_id in ids:  # the same waveform: the same model input and (to float rounding) the same result
        p = predictions[ecg_id]
        assert p.input_sha256 == reference.input_sha256
        assert p.probabilities == pytest.approx(reference.probabilities, abs=1e-6)
        assert p.findings == reference.findings


def test_stop_writes_every_claimed_batch_and_ends_its_threads(stored, session_factory, demo_ensemble):
    """Stopped while batch 1 is in the model and batch 2 is prepared: no more
    is claimed; what was claimed is inferred and written before run() returns;
    the rest stays waiting, untouched (attempts 0), for the next start."""
    cfg, store = stored
    ids = store(8)  # four batches of 2: at most three (pipeline.DEPTH) are in flight
    model = HeldModel(demo_ensemble)
    worker = RecordingWorker(cfg, session_factory, model)
    stop, thread = run_in_thread(worker)
    try:
        assert model.entered.wait(WAIT_S), "the model was never called"
        wait_until(lambda: len(worker.prepared) >= 2, "batch 2 was prepared")
        stop.set()
        worker.wake()
    finally:
        model.release.set()
        stop.set()
        thread.join(WAIT_S)
    assert not thread.is_alive() and pipeline_threads() == []
    claimed = [i for batch in worker.prepared for i in batch]
    assert len(worker.prepared) in (2, 3) and model.batches == [2] * len(worker.prepared)
    for r in rows(session_factory, ids):
        if r.id in claimed:
            assert (r.status, r.claimed_by, r.attempts) == (PROCESSED, None, 1), r.id
        else:
            assert (r.status, r.claimed_by, r.attempts) == (RECEIVED, None, 0), r.id


def test_a_failing_stage_drops_only_its_batch_and_frees_its_slot():
    """A stage that raises has its batch logged and dropped (its ECGs wait
    for their lease); the later batches go through, in order, and the slot
    is free again (else the loop would stall after DEPTH failures)."""
    from gateway.process.pipeline import DEPTH, Pipeline

    written: list[int] = []

    def infer(batch: int) -> None:
        if batch % 2:
            raise RuntimeError(f"batch {batch} failed in the model stage")

    def finish(batch: int) -> None:
        if batch == 4:
            raise RuntimeError("batch 4 failed in the write stage")
        written.append(batch)

    pipe: Pipeline[int] = Pipeline(infer, finish, name="test-pipeline")
    for batch in range(3 * DEPTH):  # more failures than slots
        pipe.wait_for_room()
        pipe.submit(batch)
    pipe.close()
    assert written == [b for b in range(3 * DEPTH) if b % 2 == 0 and b != 4]
    assert not [t for t in threading.enumerate() if t.name.startswith("test-pipeline")]
