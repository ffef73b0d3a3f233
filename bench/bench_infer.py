"""Inference throughput: Keras model.predict vs the gateway's compiled function.

One run, one set of weights (an untrained demo file of the published
architecture; speed does not depend on the weights).  Prints ECG/s of

  (a) Keras ``model.predict`` on one ECG at a time (what naive code does),
  (b) the gateway's ``Ensemble.predict`` at batch 1 and at the micro-batch size
      (the worker claims its micro-batches from the database and calls it once per batch),
  (c) the best raw compiled call (``tf.function`` of ``model(x)``, fixed shapes)
      at the same batch sizes: the baseline (b) is compared with,
  (d) the FLOP ceiling of this CPU (about 3.65 GFLOP per ECG).

Usage: .venv/bin/python bench/bench_infer.py [--batch-size 8] [--seconds 1.5] [--rounds 6] [--threads 0] [--model PATH]

On a shared machine run it when nothing else is busy (uptime): the figures
are best-of-rounds, so short bursts of other load are filtered out, but
sustained load is not.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

GFLOP_PER_ECG = 3.65  # 2 x 1.83 G multiply-adds (docs/ecg-model.md)


def cpu_peak_gflops() -> tuple[float, str]:
    """Cores x clock x single-precision FLOP/cycle (2 FMA pipes x vector width x 2)."""
    cores = os.cpu_count() or 1
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)]
    ghz = max(mhz) / 1000 if mhz else 2.5
    flags = set(re.findall(r"^flags\s*:(.*)$", info, re.M)[0].split()) if "flags" in info else set()
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
    per_cycle = 2 * lanes * 2
    return cores * ghz * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle"


def rate(fn: Callable[[], int], seconds: float, min_calls: int = 3) -> tuple[float, float]:
    """(ECG per wall second, ECG per CPU second of this process) of ``fn``
    (which returns the ECGs it did), run for about ``seconds``.  CPU seconds
    are the fairer figure when other programs share the machine."""
    fn()  # warm
    done, calls = 0, 0
    start, cpu0 = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds or calls < min_calls:
        done += fn()
        calls += 1
    return done / elapsed, done / max(time.process_time() - cpu0, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    ap.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="interleaved rounds in shuffled order; the best of each case is kept (robust to other load)",
    )
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", help="HDF5 model file (default: a demo file written to a temporary directory)")
    args = ap.parse_args()

    from gateway.infer.runner import configure_threads

    configure_threads(args.threads)  # before TensorFlow starts, as the gateway does
    import keras
    import tensorflow as tf

    from gateway.infer.demo import write_demo_model
    from gateway.infer.runner import load_ensemble

    tmp = tempfile.TemporaryDirectory()
    path = args.model or str(write_demo_model(Path(tmp.name) / "demo.hdf5", seed=0))
    bs = args.batch_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((bs, 4096, 12)).astype(np.float32)

    ens = load_ensemble([path], threads=args.threads, batch_size=bs)
    model = ens.members[0].model  # the same weights, the same Keras object

    raw = {}
    for size in sorted({1, bs}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw[size] = tf.function(lambda t: model(t, training=False), autograph=False).get_concrete_function(
                tf.TensorSpec((size, 4096, 12), tf.float32)
            )
    xt = {size: tf.constant(x[:size]) for size in raw}

    def predict_one_by_one() -> int:
        for i in range(2):
            model.predict(x[i : i + 1], verbose=0)
        return 2

    cases: dict[str, Callable[[], int]] = {
        "(a) keras model.predict, one ECG per call": predict_one_by_one,
        "(b) gateway Ensemble.predict, batch 1": lambda: (ens.predict(x[:1]), 1)[1],
        f"(b) gateway Ensemble.predict, batch {bs}": lambda: (ens.predict(x), bs)[1],
        "(c) raw compiled call, batch 1": lambda: (raw[1](xt[1]).numpy(), 1)[1],
        f"(c) raw compiled call, batch {bs}": lambda: (raw[bs](xt[bs]).numpy(), bs)[1],
    }
    best = {name: 0.0 for name in cases}
    best_cpu = {name: 0.0 for name in cases}
    order = list(cases)
    for r in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            wall, cpu = rate(cases[name], args.seconds)
            best[name], best_cpu[name] = max(best[name], wall), max(best_cpu[name], cpu)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    peak, how = cpu_peak_gflops()
    ceiling = peak / GFLOP_PER_ECG
    raw_names = [k for k in cases if k.startswith("(c)")]
    baseline, baseline_cpu = max(best[k] for k in raw_names), max(best_cpu[k] for k in raw_names)
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    print(
        f"model file: {path} (loader: {ens.members[0].loader}); TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
    print(
        f"threads: intra-op {tf.config.threading.get_intra_op_parallelism_threads()}, "
        f"inter-op {tf.config.threading.get_inter_op_parallelism_threads()}; micro-batch size {bs}; "
        f"best of {args.rounds} rounds; load average {load} on {os.cpu_count()} CPUs"
    )
    print(f"{'case':58} {'ECG/s':>7} {'vs raw':>7} {'vs ceil':>7} {'ECG/CPU-s':>9} {'vs raw':>7}")
    for name in cases:
        print(
            f"{name:58} {best[name]:7.2f} {best[name] / baseline:7.0%} {best[name] / ceiling:7.0%} "
            f"{best_cpu[name]:9.2f} {best_cpu[name] / baseline_cpu:7.0%}"
        )
    print(f"{'(d) FLOP ceiling (' + how + f' = {peak:.0f} GFLOP/s)':58} {ceiling:7.2f}")
    name = f"(b) gateway Ensemble.predict, batch {bs}"
    print(
        f"gateway at micro-batch {bs} / best raw compiled call: {best[name] / baseline:.1%} wall, "
        f"{best_cpu[name] / baseline_cpu:.1%} CPU (aim >= 95%); "
        f"vs model.predict per ECG: {best[name] / best['(a) keras model.predict, one ECG per call']:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
