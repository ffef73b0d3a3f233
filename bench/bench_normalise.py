"""Normalise throughput: ECGs per second from pydicom's real sample (decode + normalise).

One run prints ECG/s for

  (a) decode only: ``pydicom.dcmread`` of the file bytes (the floor of any decode + normalise),
  (b) the naive recipe: dcmread + ``waveform_array`` + uV->mV + ``resample_poly`` + pad,
      the baseline the gateway's extra checks are compared with,
  (c) ``normalise_dataset`` alone on an already decoded data set,
  (d) decode + ``normalise_dataset`` in one process, and in ``--workers`` processes,

  (e) the worker's read: ``gateway.dicomio.reader.read`` (skips the
      annotation and acquisition-context sequences pydicom parses eagerly) alone,
      and + ``normalise_dataset`` in one process and in ``--workers`` processes,

and the ratios (c)/(b-normalise part), (d)/(b), (d)/model, (e)/(d) and (e)/model.  The model figure
(about 30 ECG/s compiled on 2 cores, docs/ecg-model.md) is quoted, not measured.

Usage: .venv/bin/python bench/bench_normalise.py [--seconds 2] [--rounds 3] [--workers 2] [--cpu-time]

On a busy shared machine, --cpu-time gives per-core figures that other load
does not distort (the N-process line stays wall time).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from scipy.signal import resample_poly  # noqa: E402

from gateway.dicomio.reader import read  # noqa: E402
from gateway.normalise import NormaliseParams, normalise_dataset  # noqa: E402

MODEL_ECG_PER_S = 30.0  # compiled Keras on 2 cores (quoted from docs/ecg-model.md)


CPU_TIME = False  # --cpu-time: rates from this process's CPU time (robust on a busy, shared machine)


def rate(fn: Callable[[], object], seconds: float, rounds: int) -> float:
    """Best-of-rounds calls per second (wall clock, or CPU time with --cpu-time)."""
    clock = time.process_time if CPU_TIME else time.perf_counter
    fn()
    best = 0.0
    for _ in range(rounds):
        n, start, wall = 0, clock(), time.perf_counter()
        while time.perf_counter() - wall < seconds:
            fn()
            n += 1
        best = max(best, n / max(clock() - start, 1e-9))
    return best


def naive(raw: bytes) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(raw))
    mv = ds.waveform_array(0) / 1000.0
    y = resample_poly(mv, 2, 5, axis=0)
    return np.pad(y, ((48, 48), (0, 0))).astype(np.float32)


def decode_and_normalise(raw: bytes) -> np.ndarray:
    return normalise_dataset(pydicom.dcmread(io.BytesIO(raw)), NormaliseParams()).signal


def fast_read_and_normalise(raw: bytes) -> np.ndarray:
    """What the worker does per ECG: the fast read, then normalise."""
    return normalise_dataset(read(raw), NormaliseParams()).signal


def _worker(args: tuple[bytes, float, bool]) -> int:
    raw, seconds, fast = args
    fn = fast_read_and_normalise if fast else decode_and_normalise
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(raw)
        n += 1
    return n


def parallel_rate(raw: bytes, workers: int, seconds: float, fast: bool = False) -> float:
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_worker, [(raw, 0.2, fast)] * workers)  # warm up every worker
        start = time.perf_counter()
        counts = pool.map(_worker, [(raw, seconds, fast)] * workers)
        return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--cpu-time", action="store_true", help="measure single-process rates in CPU time (per core), not wall time"
    )
    args = parser.parse_args()
    global CPU_TIME
    CPU_TIME = args.cpu_time

    raw = Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(raw))
    np.testing.assert_allclose(decode_and_normalise(raw), naive(raw), atol=1e-5)  # same numbers, or the race is void

    decode = rate(lambda: pydicom.dcmread(io.BytesIO(raw)), args.seconds, args.rounds)
    baseline = rate(lambda: naive(raw), args.seconds, args.rounds)
    alone = rate(lambda: normalise_dataset(ds), args.seconds, args.rounds)
    combined = rate(lambda: decode_and_normalise(raw), args.seconds, args.rounds)
    parallel = parallel_rate(raw, args.workers, args.seconds)
    np.testing.assert_array_equal(fast_read_and_normalise(raw), decode_and_normalise(raw))  # exactly equal
    fast_read = rate(lambda: read(raw), args.seconds, args.rounds)
    fast = rate(lambda: fast_read_and_normalise(raw), args.seconds, args.rounds)
    fast_parallel = parallel_rate(raw, args.workers, args.seconds, fast=True)

    naive_normalise = 1 / (1 / baseline - 1 / decode)  # the naive recipe's own part
    print(
        f"sample: {len(raw)} bytes, 12 x 10000 at 1000 Hz; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f};"
        f" single-process rates in {'CPU time (per core)' if CPU_TIME else 'wall time'}"
    )
    print(f"(a) decode only (pydicom.dcmread)            {decode:8.1f} ECG/s  {1000 / decode:6.2f} ms")
    print(f"(b) naive dcmread+waveform_array+resample    {baseline:8.1f} ECG/s  {1000 / baseline:6.2f} ms  (baseline)")
    print(f"(c) normalise_dataset alone                  {alone:8.1f} ECG/s  {1000 / alone:6.2f} ms")
    print(f"(d) decode + normalise_dataset, 1 process    {combined:8.1f} ECG/s  {1000 / combined:6.2f} ms")
    print(f"(d) decode + normalise_dataset, {args.workers} processes  {parallel:8.1f} ECG/s")
    print(f"ratio (d, 1 process) / (b) baseline          {combined / baseline:8.2f}")
    print(f"ratio (c) / naive normalise part ({naive_normalise:.0f}/s)   {alone / naive_normalise:8.2f}")
    print(
        f"ratio (d, {args.workers} processes) / model {MODEL_ECG_PER_S:g} ECG/s      {parallel / MODEL_ECG_PER_S:8.2f}"
    )
    print(f"share of decode in (d)                       {combined / decode:8.0%}")
    print(f"(e) dicomio.read only                       {fast_read:8.1f} ECG/s  {1000 / fast_read:6.2f} ms")
    print(f"(e) dicomio.read + normalise, 1 p.          {fast:8.1f} ECG/s  {1000 / fast:6.2f} ms")
    print(f"(e) dicomio.read + normalise, {args.workers} p.          {fast_parallel:8.1f} ECG/s")
    print(f"ratio (e) / (d), 1 process                   {fast / combined:8.2f}")
    print(f"ratio (e) / (d), {args.workers} processes                  {fast_parallel / parallel:8.2f}")
    print(
        f"ratio (e, {args.workers} processes) / model {MODEL_ECG_PER_S:g} ECG/s      "
        f"{fast_parallel / MODEL_ECG_PER_S:8.2f}"
    )
    print(f"load average after the run                   {os.getloadavg()[0]:8.2f}")


if __name__ == "__main__":
    main()
