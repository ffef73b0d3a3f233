"""Soak: 4 carts sending at a steady rate to one `ecg-gateway serve` while the
hospital's HL7 receiver goes down and comes back, again and again.

At the end every acknowledged ECG is processed once and delivered, the
receiver saw every message (a message cut off by a receiver stop may arrive
twice, with the same control id: at most once per stop), and serve's RSS and
open file descriptors, sampled every second, did not grow after warm-up.

Knobs (environment):
  ECG_GATEWAY_SOAK_SECONDS   sending time; default 40 (CI).  The real run:
                             ECG_GATEWAY_SOAK_SECONDS=1800 .venv/bin/pytest -s tests/test_soak.py
  ECG_GATEWAY_SOAK_RATE      ECGs per second per cart (default 0.5; 4 carts)
  ECG_GATEWAY_SOAK_REPORT    write the figures as JSON to this file

Runs once, on PostgreSQL when ECG_GATEWAY_TEST_DATABASE_URL is set (the
production database), else on SQLite.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import PG_URL, free_port, migrated_database
from deliver_helpers import Receiver
from e2e_helpers import gateway_env, start_serve, stop, storescu, wait_for_port, wait_until
from fault_helpers import ResourceSampler, open_fds, proc_status_kb
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import HL7_DELIVERED, PROCESSED, EcgInstance, Hl7Message, Prediction

SECONDS = float(os.environ.get("ECG_GATEWAY_SOAK_SECONDS", "40"))
RATE = float(os.environ.get("ECG_GATEWAY_SOAK_RATE", "0.5"))
CARTS = 4
#: The receiver is up for 2/3 of each cycle and down for 1/3 (every few minutes in a long run).
CYCLE_S = min(180.0, max(12.0, SECONDS / 6))
WARMUP_FRACTION = 0.3
#: Growth allowed after warm-up, last fifth vs first fifth (medians).
RSS_GROWTH_MB = 64.0
FD_GROWTH = 8


@pytest.fixture
def soak_db_url(request, tmp_path):  # type: ignore[no-untyped-def]
    yield from migrated_database(request, "postgresql" if PG_URL else "sqlite", tmp_path)


class Cart(threading.Thread):
    """Sends one new ECG (fresh SOP/Series/Study UIDs) per association at a
    steady rate with DCMTK storescu until ``stop`` is set."""

    def __init__(self, name: str, sample, folder: Path, port: int, rate: float, stop: threading.Event) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name=name, daemon=True)
        self.sample, self.folder, self.port, self.rate, self.stop_event = sample, folder, port, rate, stop
        self.sent: list[tuple[str, str, str]] = []  # (SOP UID, Study UID, response)
        folder.mkdir(parents=True)

    def run(self) -> None:
        import ecg_variants as v

        start = time.monotonic()
        k = 0
        while not self.stop_event.is_set():
            ds = v.new_uids(self.sample)
            path = v.save(ds, self.folder / "next.dcm")
            results, _ = storescu([path], self.port, aet=self.name)
            self.sent.append((str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), results[0][1] if results else "none"))
            k += 1
            self.stop_event.wait(max(0.0, start + k / self.rate - time.monotonic()))  # steady, not back-to-back


@pytest.mark.slow
def test_soak(soak_db_url, tmp_path, demo_model, sample_path):
    from pydicom import dcmread

    dicom_port, admin_port, hl7_port = free_port(), free_port(), free_port()
    env = gateway_env(
        tmp_path,
        soak_db_url,
        demo_model,
        dicom_port,
        admin_port,
        ECG_GATEWAY_HL7__ENABLED="true",
        ECG_GATEWAY_HL7__PORT=str(hl7_port),
        ECG_GATEWAY_HL7__CONNECT_TIMEOUT="1",
        ECG_GATEWAY_HL7__ACK_TIMEOUT="5",
        ECG_GATEWAY_HL7__BACKOFF_INITIAL_S="0.2",
        ECG_GATEWAY_HL7__BACKOFF_MAX_S="2",
        ECG_GATEWAY_LOGGING__LEVEL="INFO",
    )  # readiness is the INFO start line
    engine = make_engine(soak_db_url)
    sf = make_sessionmaker(engine)
    rx_log = tmp_path / "hl7.jsonl"
    log = tmp_path / "serve.log"
    stop_sending = threading.Event()
    receiver_stops = 0
    ehr: Receiver | None = Receiver(hl7_port, rx_log)
    proc = start_serve(env, log)
    sampler = None
    try:
        wait_for_port(dicom_port, proc=proc)
        sampler = ResourceSampler(proc.pid, interval=1.0)
        sample = dcmread(sample_path)
        carts = [Cart(f"CART{i}", sample, tmp_path / f"cart{i}", dicom_port, RATE, stop_sending) for i in range(CARTS)]
        t0 = time.monotonic()
        for c in carts:
            c.start()
        while (elapsed := time.monotonic() - t0) < SECONDS:
            assert proc.poll() is None, log.read_text()[-3000:]
            phase = elapsed % CYCLE_S
            if ehr is not None and phase >= CYCLE_S * 2 / 3:
                ehr.stop()
                ehr, receiver_stops = None, receiver_stops + 1
            elif ehr is None and phase < CYCLE_S * 2 / 3:
                ehr = Receiver(hl7_port, rx_log)
            time.sleep(0.2)
        stop_sending.set()
        for c in carts:
            c.join(120)
        if ehr is None:
            ehr = Receiver(hl7_port, rx_log)
        sent = [s for c in carts for s in c.sent]
        acked = {uid: study for uid, study, status in sent if status == "Success"}

        def drained() -> bool:
            with sf() as s:
                processed = s.scalar(select(func.count()).where(EcgInstance.status == PROCESSED))
                delivered = s.scalar(select(func.count()).where(Hl7Message.status == HL7_DELIVERED))
            return processed == len(acked) and delivered == len(acked)

        wait_until(drained, 300 + SECONDS / 2, what="every ECG processed and delivered", procs=[proc])
        time.sleep(3)  # idle samples after the drain
        hwm_mb = proc_status_kb(proc.pid, "VmHWM") / 1024
        fds_idle = open_fds(proc.pid)
    finally:
        stop_sending.set()
        if sampler is not None:
            sampler.stop()
        code = stop(proc)
        if ehr is not None:
            ehr.stop()
    assert code == 0, log.read_text()[-3000:]

    # every send acknowledged; every ECG once through the pipeline
    assert Counter(status for _, _, status in sent) == Counter({"Success": len(sent)})
    with sf() as s:
        rows = dict(s.execute(select(EcgInstance.sop_instance_uid, EcgInstance.status)).all())
        predictions = Counter(s.scalars(select(Prediction.ecg_id)))
        outbox = s.execute(select(Hl7Message.ecg_id, Hl7Message.control_id, Hl7Message.status)).all()
    engine.dispose()
    assert rows == {uid: PROCESSED for uid in acked}
    assert len(predictions) == len(acked) and set(predictions.values()) == {1}
    assert len(outbox) == len(acked) and len({e for e, _, _ in outbox}) == len(acked)
    # the receiver saw each message; a repeat (same control id) only for a message cut off by a stop
    received = [json.loads(line) for line in rx_log.read_text().splitlines() if line]
    controls = Counter(m["control_id"] for m in received)
    assert set(controls) == {c for _, c, _ in outbox}
    assert sum(n - 1 for n in controls.values()) <= receiver_stops, controls.most_common(3)
    studies_seen = Counter(study for m in received for study in set(acked.values()) if study in m["message"])
    assert set(studies_seen) == set(acked.values())

    # resources: no growth after warm-up
    g = sampler.growth(WARMUP_FRACTION)
    figures = {
        "seconds": SECONDS,
        "carts": CARTS,
        "rate_per_cart": RATE,
        "ecgs": len(acked),
        "receiver_stops": receiver_stops,
        "repeats_at_receiver": sum(n - 1 for n in controls.values()),
        "database": soak_db_url.split(":", 1)[0],
        "vm_hwm_mb": round(hwm_mb, 1),
        "fds_idle": fds_idle,
        **{k: round(v, 1) for k, v in g.items()},
    }
    print("\nsoak figures:", json.dumps(figures))
    if os.environ.get("ECG_GATEWAY_SOAK_REPORT"):
        Path(os.environ["ECG_GATEWAY_SOAK_REPORT"]).write_text(
            json.dumps({**figures, "samples_t_rss_kb_fds": sampler.samples}, indent=1)
        )
    assert receiver_stops >= 2 or SECONDS < 2 * CYCLE_S, "the receiver never went down"
    assert g["rss_end_mb"] <= g["rss_start_mb"] + RSS_GROWTH_MB, figures
    assert g["fds_end"] <= g["fds_start"] + FD_GROWTH, figures
    assert fds_idle <= g["fds_start"] + FD_GROWTH, figures
