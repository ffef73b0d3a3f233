"""The worker's CPU per ECG outside the model, stage by stage, in one process.

Stores ``--n`` distinct copies of pydicom's real sample (waveform_ecg.dcm,
Mortara ELI 250) into a temporary SQLite database and spool, then drains them
with ``gateway.process.worker.Worker.run_once`` (batch ``--batch``), the model
a stub (fixed probabilities: no TensorFlow), HL7 enabled (the ORU^R01 is built
and queued, as in serve).  Each stage's CPU time is taken with
``time.thread_time`` around the worker's own calls (the thread that runs them),
the whole with ``time.process_time``; the figures are medians over
``--rounds`` rounds, per ECG:

  claim            claim_batch (Worker._claim)
  load             the claimed rows (Worker._load)
  read             dicomio read of the spooled bytes (read_dataset)
  cart report      the cart's measurements (report.measurements.extract)
  normalise        normalise_dataset (decode, resample, checks)
  prepare, rest    file stat/read, timing and metrics in Worker._prepare
  infer, rest      Worker._infer without the model call (stack, outputs)
  ORU + enqueue    enqueue_result (build and queue the ORU^R01)
  prediction row   Worker._prediction
  write, rest      Worker._write without the two above (claims, rows, flush)
  finish, rest     Worker._finish without _write (transaction, commit, logs)
  outside model    all of run_once but the model call (process CPU)

and, as the same-process baseline, the naive recipe's CPU per ECG
(``pydicom.dcmread`` + ``waveform_array`` + ``resample_poly`` + pad: the least
any reader of the file does, with no database).

Usage: .venv/bin/python bench/bench_worker.py [--n 48] [--batch 8] [--rounds 5] [--profile FILE]
(``--profile``: also write a cProfile of one extra round to FILE)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

STAGES = (
    "claim",
    "load",
    "read",
    "cart report",
    "normalise",
    "prepare, rest",
    "infer, rest",
    "ORU + enqueue",
    "prediction row",
    "write, rest",
    "finish, rest",
)


class StubEnsemble:
    """The model's interface with fixed outputs (the model's own CPU is not measured here)."""

    identity = {
        "files": [{"path": "stub.hdf5", "sha256": "0" * 64, "demo": False}],
        "model_sha256": "0" * 64,
        "demo": False,
    }

    def predict(self, x: np.ndarray) -> Any:
        from gateway.infer.runner import EnsembleOutput

        p = np.tile(np.linspace(0.05, 0.6, 6), (1, x.shape[0], 1))
        return EnsembleOutput.from_members(p)


class Clock:
    """CPU seconds per stage (thread CPU of the calling thread), summed over calls."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        spent = self.spent

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.thread_time() - t

        return timed


def ecg_files(n: int) -> Iterator[bytes]:
    """``n`` distinct instances of the sample, each of its own patient."""
    from bench_db_size import ecg_files as sample_copies

    return sample_copies(n, patients=n)


def instrument(clock: Clock) -> Callable[[], None]:
    """Wrap the worker's stage calls with ``clock``; returns the undo."""
    import gateway.process.worker as w

    saved: list[tuple[object, str, Any]] = []

    def patch(owner: object, attr: str, name: str) -> None:
        original = getattr(owner, attr)
        saved.append((owner, attr, original))
        setattr(owner, attr, clock.wrap(name, original))

    patch(w.Worker, "_claim", "claim")
    patch(w.Worker, "_load", "load")
    patch(w.Worker, "_prepare", "prepare")
    patch(w, "read_dataset", "read")
    patch(w, "cart_report", "cart report")
    patch(w, "normalise_dataset", "normalise")
    patch(w.Worker, "_infer", "infer")
    patch(StubEnsemble, "predict", "model")
    patch(w.Worker, "_finish", "finish")
    patch(w.Worker, "_write", "write")
    patch(w, "enqueue_result", "ORU + enqueue")
    patch(w.Worker, "_prediction", "prediction row")

    def undo() -> None:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)

    return undo


def per_ecg(spent: dict[str, float], total: float, n: int) -> dict[str, float]:
    """Milliseconds per ECG by stage (the 'rest' of a call is its time minus its wrapped parts)."""
    s = {k: v * 1000 / n for k, v in spent.items()}
    g = s.get
    return {
        "claim": g("claim", 0.0),
        "load": g("load", 0.0),
        "read": g("read", 0.0),
        "cart report": g("cart report", 0.0),
        "normalise": g("normalise", 0.0),
        "prepare, rest": g("prepare", 0.0) - g("read", 0.0) - g("cart report", 0.0) - g("normalise", 0.0),
        "infer, rest": g("infer", 0.0) - g("model", 0.0),
        "ORU + enqueue": g("ORU + enqueue", 0.0),
        "prediction row": g("prediction row", 0.0),
        "write, rest": g("write", 0.0) - g("ORU + enqueue", 0.0) - g("prediction row", 0.0),
        "finish, rest": g("finish", 0.0) - g("write", 0.0),
        "outside model": total * 1000 / n - g("model", 0.0),
    }


def naive_ms(raw: bytes, rounds: int) -> float:
    """CPU ms per ECG of dcmread + waveform_array + resample_poly + pad (median of rounds)."""
    import pydicom
    from scipy.signal import resample_poly

    def once() -> None:
        ds = pydicom.dcmread(io.BytesIO(raw))
        y = resample_poly(ds.waveform_array(0) / 1000.0, 2, 5, axis=0)
        np.pad(y, ((48, 48), (0, 0))).astype(np.float32)

    once()
    out = []
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(20):
            once()
        out.append((time.process_time() - t) * 1000 / 20)
    return statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="ECGs per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", default="", help="write a cProfile of one more round to this file")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the worker logs INFO per ECG; its cost is measured, not printed

    from sqlalchemy import event, func, select

    from gateway.config import Config
    from gateway.process.worker import Worker
    from gateway.receive.spool import IncomingInstance, StoreContext, store_instance
    from gateway.store.db import make_engine, make_sessionmaker, upgrade
    from gateway.store.models import PROCESSED, EcgInstance
    from gateway.store.spool import Spool

    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        url = f"sqlite:///{tmp}/gateway.db"
        upgrade(url)
        engine = make_engine(url)
        factory = make_sessionmaker(engine)
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda _c, _r, sql, *_: statements.append(sql))
        cfg = Config.model_validate(
            {
                "storage": {"database_url": url, "spool_dir": f"{tmp}/spool"},
                "model": {"files": ["stub.hdf5"], "batch_size": args.batch, "max_wait_ms": 0},
            }
        )
        worker = Worker(cfg, factory, StubEnsemble())
        worker.warm_up()
        files = ecg_files((args.rounds + 2) * args.n)

        def one_round(profile: cProfile.Profile | None = None) -> dict[str, float]:
            for raw in [next(files) for _ in range(args.n)]:
                out = store_instance(
                    IncomingInstance.from_file(raw, calling_ae="CART01", peer_address="10.1.2.3"),
                    StoreContext(factory, Spool.from_config(cfg.storage)),
                )
                assert out.status == 0 and not out.duplicate, out
            clock = Clock()
            statements.clear()
            undo = instrument(clock)
            try:
                with profile or contextlib.nullcontext():
                    cpu, done = time.process_time(), 0
                    while n := worker.run_once():
                        done += n
                    cpu = time.process_time() - cpu
            finally:
                undo()
            assert done == args.n, f"{done} of {args.n} processed"
            return {**per_ecg(clock.spent, cpu, args.n), "SQL statements": len(statements) / args.n}

        one_round()  # warm: first batches pay for imports and caches
        rounds = [one_round() for _ in range(args.rounds)]
        if args.profile:
            profile = cProfile.Profile()
            one_round(profile)
            profile.dump_stats(args.profile)
        with factory() as s:
            processed = s.scalar(select(func.count()).select_from(EcgInstance).where(EcgInstance.status == PROCESSED))
        assert processed == (args.rounds + 1 + bool(args.profile)) * args.n, processed

    from pydicom.data import get_testdata_file

    naive = naive_ms(Path(get_testdata_file("waveform_ecg.dcm")).read_bytes(), args.rounds)
    print(
        f"worker per-ECG CPU, stub model, SQLite, HL7 on; {args.n} ECGs a round in batches of {args.batch}; "
        f"median of {args.rounds} rounds; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}"
    )
    for stage in (*STAGES, "outside model"):
        values = [r[stage] for r in rounds]
        print(f"  {stage:16} {statistics.median(values):7.2f} ms  (min {min(values):.2f}, max {max(values):.2f})")
    print(f"  SQL statements   {statistics.median(r['SQL statements'] for r in rounds):7.2f} per ECG")
    outside = statistics.median(r["outside model"] for r in rounds)
    print(f"worker CPU per ECG outside the model       {outside:7.2f} ms")
    print(f"naive dcmread+waveform_array+resample      {naive:7.2f} ms  (baseline, same process)")
    print(f"ratio worker / naive                       {outside / naive:7.2f}")
    print(f"load average after the run                 {os.getloadavg()[0]:7.2f}")


if __name__ == "__main__":
    main()
