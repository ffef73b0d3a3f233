"""How long commissioning takes, phase by phase.

One run prints, for N tracings built from pydicom's real ECG (tests/validate_helpers.py)
and an untrained demo model of the published architecture:

  (a) direct check: ``Ensemble.predict`` on all N at once, ECG/s - the BASELINE
      (the model is the floor of any path through the gateway);
  (b) encoding alone: tracing -> cart-like DICOM (padding removed, 400 or 500 Hz,
      16-bit), ECG/s;
  (c) the DICOM round trip through a gateway started for the run: first C-STORE
      to the last result stored, ECG/s, and (c)/(a);
  (d) the gateway's start-up (process start to listening), s;
  (e) a projection for the published 827 exams: start-up + 827/(a) + 827/(c).

Usage: .venv/bin/python bench/bench_validate.py [--n 64] [--database-url URL]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    import os

    os.environ.setdefault("ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB", "1")
    from gateway.config import load_config
    from gateway.infer.demo import write_demo_model
    from gateway.infer.runner import load_ensemble
    from gateway.validate.dataset import lead_names
    from gateway.validate.roundtrip import (
        Variant,
        collect_results,
        encode_tracing,
        send_tracings,
        started_gateway,
        wait_listening,
    )
    from validate_helpers import make_tracings

    tmp = Path(tempfile.mkdtemp(prefix="bench-validate-"))
    tracings = make_tracings(args.n)
    model = write_demo_model(tmp / "demo.hdf5")
    cfg = load_config(ROOT / "config/gateway.toml")
    leads = lead_names(cfg.normalise.limb_lead_order)
    variants = [Variant(400, "SCPECG"), Variant(500, "MDC")]

    db_url = args.database_url or f"sqlite:///{tmp / 'gateway.db'}"
    with started_gateway(
        tmp / "run", db_url, [str(model)], cfg.dicom.ae_title, config_path=str(ROOT / "config/gateway.toml")
    ) as gw:
        t_start = time.perf_counter()
        ensemble = load_ensemble([str(model)], batch_size=cfg.model.batch_size)
        t0 = time.perf_counter()
        ensemble.predict(tracings)
        direct_rate = args.n / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i in range(args.n):
            encode_tracing(tracings[i], i, variants[i % 2], leads, 1.0)
        encode_rate = args.n / (time.perf_counter() - t0)

        wait_listening(gw)
        startup_s = time.perf_counter() - t_start  # lower bound: the gateway started just before t_start
        t0 = time.perf_counter()
        results = send_tracings(tracings, list(range(args.n)), variants, leads, 1.0, gw.host, gw.port, gw.ae_title)
        collect_results(db_url, results, tracings, cfg.normalise.gain, timeout=600, poll_s=0.1)
        rt_rate = args.n / (time.perf_counter() - t0)
        done = sum(r.status == "processed" for r in results)

    print(f"N = {args.n} tracings, demo model, batch {cfg.model.batch_size}, {os.cpu_count()} CPUs")
    print(f"(a) direct check (baseline)      {direct_rate:8.1f} ECG/s")
    print(f"(b) encode to DICOM              {encode_rate:8.1f} ECG/s   ({encode_rate / direct_rate:.1f} x baseline)")
    print(
        f"(c) DICOM round trip             {rt_rate:8.1f} ECG/s   ({rt_rate / direct_rate:.2f} x baseline); "
        f"{done}/{args.n} processed"
    )
    print(f"(d) gateway start-up            ~{startup_s:8.1f} s (overlapped with the direct model load)")
    full = startup_s + 827 / direct_rate + 827 / rt_rate
    print(f"(e) projection for 827 exams    ~{full:8.0f} s")


if __name__ == "__main__":
    main()
