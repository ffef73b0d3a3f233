"""Admin read path: how fast the list and the ECG page answer on a filled database.

One run fills a fresh database with N processed ECGs (prediction, HL7
message; one ECG also carries its model input) and prints, best of rounds:

  (a) ``ecg_rows`` (100 newest rows as dicts, HL7 status included), ms, against
      a baseline measured in the same run: one plain SQL SELECT of the same
      columns for the same 100 rows (SQLAlchemy Core, no objects, no dicts);
  (b) ``ecg_rows(finding="AF")`` (a scan of the findings JSON) and
      ``count_ecgs`` (what pagination adds), against (a);
  (c) ``GET /api/ecgs?limit=100`` through the whole FastAPI app (in-process
      HTTP client, token check, JSON), against (a);
  (d) the ECG page ``GET /ecgs/{id}`` and the SVG alone (``ecg_svg``), ms.

Usage: .venv/bin/python bench/bench_admin.py [--ecgs 5000] [--rounds 7] [--database-url URL]
       (default: a temporary SQLite file; a PostgreSQL URL must name an empty database)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from gateway.config import PAPER_THRESHOLDS, Config  # noqa: E402
from gateway.store.db import make_engine, make_sessionmaker, upgrade  # noqa: E402
from gateway.store.models import EcgInstance, Hl7Message, Prediction  # noqa: E402

TOKEN = "bench-token"


def best_ms(fn, rounds: int) -> float:
    fn()  # warm caches and pools
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return min(times)


def sample_input() -> tuple[np.ndarray, dict]:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from gateway.normalise import normalise_dataset

    out = normalise_dataset(dcmread(get_testdata_file("waveform_ecg.dcm")))
    return out.signal, out.report


def fill(engine, n: int, spool: Path) -> int:
    """``n`` processed ECGs; the last has its spooled original (its page rebuilds and draws the input)."""
    from pydicom.data import get_testdata_file

    from gateway.normalise import input_sha256, normaliser_version

    signal, report = sample_input()
    original = Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()
    (spool / "sample.dcm").write_bytes(original)
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    codes = list(PAPER_THRESHOLDS)
    with engine.begin() as conn:
        conn.execute(
            insert(EcgInstance),
            [
                {
                    "id": i,
                    "sop_instance_uid": f"1.2.826.0.1.3680043.10.9.{i}",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.9.1.1",
                    "patient_id": f"P{i % 997}",
                    "patient_name": f"PATIENT^{i}",
                    "accession_number": f"A{i}",
                    "spool_path": "sample.dcm" if i == n else f"x/{i}.dcm",
                    "status": "processed",
                    "sha256": hashlib.sha256(original).hexdigest() if i == n else "0" * 64,
                    "size_bytes": len(original),
                    "received_at": t0 + timedelta(seconds=i),
                    "updated_at": t0,
                    "flags": [],
                    "attempts": 1,
                    "report": report,
                }
                for i in range(1, n + 1)
            ],
        )
        preds = []
        for i in range(1, n + 1):
            probs = {c: float(p) for c, p in zip(codes, rng.random(6) * 0.5, strict=True)}
            preds.append(
                {
                    "ecg_id": i,
                    "probabilities": probs,
                    "findings": [c for c in codes if probs[c] > PAPER_THRESHOLDS[c]],
                    "thresholds": PAPER_THRESHOLDS,
                    "model_files": [],
                    "model_sha256": "ab" * 32,
                    "demo_model": False,
                    "quality_flags": [],
                    "spread": {},
                    "input_sha256": input_sha256(signal),
                    "normaliser_version": normaliser_version(),
                    "gateway_version": "bench",
                    "timings": {},
                    "created_at": t0,
                }
            )
        conn.execute(insert(Prediction), preds)
        conn.execute(
            insert(Hl7Message),
            [
                {
                    "ecg_id": i,
                    "control_id": f"C{i}",
                    "order_key": f"P{i % 997}",
                    "payload": "MSH|^~\\&|",
                    "status": "delivered",
                    "attempts": 1,
                    "next_attempt_at": t0,
                    "created_at": t0,
                }
                for i in range(1, n + 1)
            ],
        )
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ecgs", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    from fastapi.testclient import TestClient

    from gateway.admin.app import create_app
    from gateway.admin.ecg_svg import ecg_svg
    from gateway.admin.queries import count_ecgs, ecg_rows

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        engine = make_engine(url)
        sf = make_sessionmaker(engine)
        t = time.perf_counter()
        last = fill(engine, args.ecgs, Path(tmp))
        print(f"database: {engine.url.get_backend_name()}, {args.ecgs} ECGs filled in {time.perf_counter() - t:.1f} s")

        def baseline() -> None:
            stmt = (
                select(
                    EcgInstance.id,
                    EcgInstance.sop_instance_uid,
                    EcgInstance.study_instance_uid,
                    EcgInstance.patient_id,
                    EcgInstance.patient_name,
                    EcgInstance.accession_number,
                    EcgInstance.received_at,
                    EcgInstance.status,
                    EcgInstance.error,
                    Prediction.probabilities,
                    Prediction.findings,
                    Prediction.quality_flags,
                    Prediction.model_sha256,
                    Prediction.demo_model,
                )
                .outerjoin(Prediction, Prediction.ecg_id == EcgInstance.id)
                .order_by(EcgInstance.received_at.desc(), EcgInstance.id.desc())
                .limit(100)
            )
            with engine.connect() as conn:
                conn.execute(stmt).all()

        def rows(**kw) -> None:
            with sf() as s:
                ecg_rows(s, limit=100, **kw)

        def count() -> None:
            with sf() as s:
                count_ecgs(s)

        cfg = Config.model_validate({"storage": {"database_url": url, "spool_dir": tmp}, "admin": {"token": TOKEN}})
        client = TestClient(create_app(cfg, sf))
        client.post("/login", data={"token": TOKEN})
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert len(client.get("/api/ecgs?limit=100", headers=auth).json()["items"]) == 100
        signal, report = sample_input()

        r = args.rounds
        base = best_ms(baseline, r)
        a = best_ms(rows, r)
        af = best_ms(lambda: rows(finding="AF"), r)
        cnt = best_ms(count, r)
        api = best_ms(lambda: client.get("/api/ecgs?limit=100", headers=auth), r)
        page = best_ms(lambda: client.get(f"/ecgs/{last}"), r)
        svg = best_ms(lambda: ecg_svg(signal, report["output_leads"]), r)
        listpage = best_ms(lambda: client.get("/ecgs"), r)
        print(f"(a) baseline: plain SELECT of 100 rows      {base:8.2f} ms")
        print(f"    ecg_rows(limit=100)                     {a:8.2f} ms   {a / base:5.1f}x baseline")
        print(f"(b) ecg_rows(finding='AF', limit=100)       {af:8.2f} ms   {af / a:5.1f}x (a)")
        print(f"    count_ecgs() over {args.ecgs} rows          {cnt:8.2f} ms   {cnt / a:5.1f}x (a)")
        print(f"(c) GET /api/ecgs?limit=100 (full app)      {api:8.2f} ms   {api / a:5.1f}x (a)")
        print(f"(d) GET /ecgs/{{id}} (ECG page, SVG inline)  {page:8.2f} ms")
        print(f"    ecg_svg() alone                         {svg:8.2f} ms   {svg / page:5.0%} of the page")
        print(f"    GET /ecgs (list page, 50 rows + count)  {listpage:8.2f} ms")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
