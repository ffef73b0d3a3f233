"""The process stage: claims, one-transaction outcomes, failure policy, recovery."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import func, select, update

from gateway import FINDINGS, __version__
from gateway.config import Config
from gateway.process import claim
from gateway.process.claim import claim_batch
from gateway.process.worker import Worker
from gateway.store.models import FAILED, PROCESSED, PROCESSING, RECEIVED, REJECTED, EcgInstance, Hl7Message, Prediction
from gateway.store.spool import Spool
from gateway.timeutil import as_utc


def make_config(db_url: str, tmp_path: Path, model: Path, **process: object) -> Config:
    return Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "model": {"files": [str(model)], "batch_size": 4, "max_wait_ms": 0},
            "process": {"lease_seconds": 60, "max_attempts": 2, **process},
        }
    )


def encode(ds) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def store(cfg: Config, session_factory, ds) -> int:  # type: ignore[no-untyped-def]
    from gateway.receive.spool import IncomingInstance, StoreContext, store_instance

    out = store_instance(
        IncomingInstance.from_file(encode(ds), calling_ae="TESTCART", peer_address="127.0.0.1"),
        StoreContext(session_factory, Spool.from_config(cfg.storage)),
    )
    assert out.status == 0 and out.ecg_id is not None, out
    return out.ecg_id


def drain(worker: Worker) -> None:
    for _ in range(50):
        if not worker.run_once():
            return
    raise AssertionError("worker did not drain the queue")


@pytest.fixture
def sample(sample_path):  # type: ignore[no-untyped-def]
    return dcmread(sample_path)


def test_outcomes_are_complete_and_reproducible(db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample):
    import ecg_variants as v
    from gateway.admin.exports import model_input_array
    from gateway.normalise import (
        NORMALISER_VERSION,
        NormaliseParams,
        input_sha256,
        normalise_dataset,
        normaliser_version,
    )

    cfg = make_config(db_url, tmp_path, demo_model)
    ok_id = store(cfg, session_factory, v.new_uids(sample))
    short_id = store(cfg, session_factory, v.new_uids(v.with_duration(sample, 5.0)))
    no_v3_id = store(cfg, session_factory, v.new_uids(v.drop_lead(sample, "V3")))
    drain(Worker(cfg, session_factory, demo_ensemble))

    with session_factory() as s:
        ok, short, no_v3 = (s.get(EcgInstance, i) for i in (ok_id, short_id, no_v3_id))
        assert (ok.status, short.status, no_v3.status) == (PROCESSED, REJECTED, REJECTED)
        assert "V3" in no_v3.error and "missing" in no_v3.error.lower()
        assert "short" in short.error.lower()
        assert short.report  # what normalisation learned is kept for the admin
        for row in (ok, short, no_v3):  # exactly one outbox row each, the rejection included
            assert s.scalar(select(func.count()).select_from(Hl7Message).where(Hl7Message.ecg_id == row.id)) == 1
        assert s.scalar(select(func.count()).select_from(Prediction)) == 1
        p = s.scalar(select(Prediction).where(Prediction.ecg_id == ok_id))
        assert p.model_sha256 == hashlib.sha256(demo_model.read_bytes()).hexdigest()
        assert p.demo_model is True
        assert p.thresholds == cfg.model.thresholds
        assert p.gateway_version == __version__
        assert set(p.probabilities) == set(FINDINGS)
        assert p.findings == [c for c in FINDINGS if p.probabilities[c] > cfg.model.thresholds[c]]
        assert {"normalise_ms", "infer_ms", "batch_size", "received_to_processed_ms", "worker"} <= set(p.timings)
        assert p.timings["batch_size"] == 1
        # The input is not stored: its hash and the normaliser version are, and the
        # report once, on the ECG (its parameters rebuild the input).
        assert "input_npy" not in Prediction.__table__.c and "normalisation" not in Prediction.__table__.c
        assert p.normaliser_version == normaliser_version() and p.normaliser_version.startswith(NORMALISER_VERSION)
        assert ok.report["params"] == {
            "gain": 1.0,
            "limb_lead_order": ["I", "II", "III", "aVR", "aVL", "aVF"],
            "min_duration_s": 8.0,
        }
        seen = model_input_array(ok, cfg.storage.spool_dir)
    # the recorded input is exactly what normalisation gives, and the stored
    # probabilities are what the model says on it
    normalised = normalise_dataset(sample, NormaliseParams(**cfg.normalise.model_dump()))
    expected = normalised.signal
    assert p.input_sha256 == input_sha256(expected) == hashlib.sha256(expected.astype("<f4").tobytes()).hexdigest()
    assert ok.report == json.loads(json.dumps({**normalised.report, "sop_instance_uid": ok.sop_instance_uid}))
    assert seen.dtype == np.float32 and seen.shape == (4096, 12)
    np.testing.assert_array_equal(seen, expected)
    direct = demo_ensemble.predict(expected[None])
    np.testing.assert_allclose([p.probabilities[c] for c in FINDINGS], direct.mean[0], atol=1e-6)


def test_unexpected_error_is_retried_then_failed_and_others_go_on(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample, monkeypatch
):
    import ecg_variants as v

    cfg = make_config(db_url, tmp_path, demo_model)
    lost_id = store(cfg, session_factory, v.new_uids(sample))
    ok_id = store(cfg, session_factory, v.new_uids(sample))
    with session_factory() as s:
        path = Spool.from_config(cfg.storage).resolve(s.get(EcgInstance, lost_id).spool_path)
    path.unlink()  # a real fault: the file vanished from the spool
    worker = Worker(cfg, session_factory, demo_ensemble)
    before = datetime.now(UTC)
    worker.run_once()
    after = datetime.now(UTC)
    with session_factory() as s:
        lost = s.get(EcgInstance, lost_id)
        assert (lost.status, lost.attempts) == (RECEIVED, 1)
        assert "FileNotFoundError" in lost.error
        assert s.get(EcgInstance, ok_id).status == PROCESSED
    # backing off 2 s (retry_delay(1)) from when the outcome was written
    retry_at = as_utc(lost.lease_expires_at)
    assert before + timedelta(seconds=2) <= retry_at <= after + timedelta(seconds=2)
    # one second into the backoff it is not claimed; the clock is the test's, so a
    # slow machine (the model call above can take seconds under load) cannot pass the window
    monkeypatch.setattr(claim, "utcnow", lambda: retry_at - timedelta(seconds=1))
    assert worker.run_once() == 0
    monkeypatch.undo()
    with session_factory.begin() as s:  # let the backoff pass
        s.execute(update(EcgInstance).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    worker.run_once()
    with session_factory() as s:
        lost = s.get(EcgInstance, lost_id)
        assert (lost.status, lost.attempts) == (FAILED, 2)
        assert "Traceback" in lost.error
        assert s.scalar(select(func.count()).select_from(Hl7Message).where(Hl7Message.ecg_id == lost_id)) == 0


def test_a_batch_is_written_in_one_transaction_and_one_bad_write_holds_back_no_other(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample, monkeypatch, caplog
):
    from sqlalchemy import event

    import ecg_variants as v
    import gateway.process.worker as worker_module

    cfg = make_config(db_url, tmp_path, demo_model)
    ids = [store(cfg, session_factory, v.new_uids(sample)) for _ in range(3)]
    worker = Worker(cfg, session_factory, demo_ensemble)
    engine = session_factory.kw["bind"]
    commits: list[int] = []

    def count(_conn) -> None:  # type: ignore[no-untyped-def]
        commits.append(1)

    assert worker._claim(3) == ids
    event.listen(engine, "commit", count)
    worker.process(ids)
    event.remove(engine, "commit", count)
    assert len(commits) == 1  # the three outcomes (results, statuses, outbox rows): one commit
    with session_factory() as s:
        assert {s.get(EcgInstance, i).status for i in ids} == {PROCESSED}
        assert s.scalar(select(func.count()).select_from(Hl7Message)) == 3

    # the database refuses one ECG's outcome: the batch is written ECG by ECG;
    # the others land, it stays claimed (its lease brings it back), the error
    # reaches the loop as before
    more = [store(cfg, session_factory, v.new_uids(sample)) for _ in range(3)]
    real = worker_module.enqueue_pacs

    def refuse(session, row, pacs):  # type: ignore[no-untyped-def]
        if row.id == more[1]:
            raise RuntimeError("refused by the database")
        return real(session, row, pacs)

    monkeypatch.setattr(worker_module, "enqueue_pacs", refuse)
    assert worker._claim(3) == more
    with pytest.raises(RuntimeError, match="refused"):
        worker.process(more)
    assert "one by one" in caplog.text
    with session_factory() as s:
        statuses = [s.get(EcgInstance, i).status for i in more]
        assert statuses == [PROCESSED, PROCESSING, PROCESSED]
        assert s.scalar(select(func.count()).select_from(Prediction).where(Prediction.ecg_id.in_(more))) == 2


def _bare_rows(session_factory, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    with session_factory.begin() as s:
        rows = [
            EcgInstance(
                sop_instance_uid=f"1.2.826.0.1.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.1",
                spool_path=f"x/{i}.dcm",
                sha256="0" * 64,
                size_bytes=1,
            )
            for i in range(n)
        ]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def test_concurrent_claims_never_overlap(session_factory):
    ids = _bare_rows(session_factory, 60)
    got: dict[str, list[int]] = {}

    def claimer(name: str) -> None:
        mine = got.setdefault(name, [])
        while batch := claim_batch(session_factory, name, 3, lease_seconds=60, max_attempts=3):
            mine.extend(batch)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for batch in got.values() for i in batch]
    assert sorted(claimed) == ids  # every row once, none twice
    with session_factory() as s:
        assert set(s.scalars(select(EcgInstance.status))) == {PROCESSING}


def test_expired_lease_is_taken_over_and_old_owner_cannot_write(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample
):
    import ecg_variants as v

    cfg = make_config(db_url, tmp_path, demo_model)
    ecg_id = store(cfg, session_factory, v.new_uids(sample))
    dead = Worker(cfg, session_factory, demo_ensemble, worker_id="dead-worker")
    assert dead._claim(1) == [ecg_id]
    alive = Worker(cfg, session_factory, demo_ensemble, worker_id="alive-worker")
    assert alive.run_once() == 0  # lease still valid
    with session_factory.begin() as s:
        s.execute(update(EcgInstance).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert alive._claim(1) == [ecg_id]
    dead.process([ecg_id])  # the old owner wakes up: its result must not land
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 0
        assert s.get(EcgInstance, ecg_id).claimed_by == "alive-worker"
    alive.process([ecg_id])
    with session_factory() as s:
        assert s.get(EcgInstance, ecg_id).status == PROCESSED
        assert s.scalar(select(func.count()).select_from(Prediction)) == 1
        assert s.scalar(select(func.count()).select_from(Hl7Message)) == 1


def test_ecg_that_keeps_killing_its_worker_ends_failed(session_factory):
    [ecg_id] = _bare_rows(session_factory, 1)
    with session_factory.begin() as s:
        s.execute(
            update(EcgInstance).values(
                status=PROCESSING,
                attempts=3,
                claimed_by="gone",
                lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
            )
        )
    assert claim_batch(session_factory, "w", 5, lease_seconds=60, max_attempts=3) == []
    with session_factory() as s:
        row = s.get(EcgInstance, ecg_id)
        assert row.status == FAILED
        assert row.error == "gave up after 3 attempts (a worker stopped while processing it)"


def test_spool_check_reports_both_directions(session_factory, tmp_path):
    spool = tmp_path / "spool"
    (spool / "x").mkdir(parents=True)
    [a, b] = _bare_rows(session_factory, 2)  # rows point at x/0.dcm and x/1.dcm
    (spool / "x" / "0.dcm").write_bytes(b"dicm")
    (spool / "x" / "orphan.dcm").write_bytes(b"dicm")
    (spool / "x" / "half.dcm.tmp").write_bytes(b"di")  # a write in progress is not an orphan
    report = Spool(spool).check(session_factory)
    assert report.rows_without_file == [b]
    assert report.files_without_row == [str(spool / "x" / "orphan.dcm")]


def test_warm_up_runs_the_read_and_normalise_path(db_url, session_factory, tmp_path, demo_model, demo_ensemble):
    cfg = make_config(db_url, tmp_path, demo_model)
    out = Worker(cfg, session_factory, demo_ensemble).warm_up()
    assert out.signal.shape == (4096, 12) and out.quality_flags == []
    with session_factory() as s:  # nothing is written
        assert s.scalar(select(func.count()).select_from(EcgInstance)) == 0


@pytest.mark.parametrize("warm_up", [True, False])
def test_serve_traces_every_batch_size_before_serving_unless_told_not_to(
    db_url, session_factory, tmp_path, demo_model, warm_up
):
    from gateway.serve import Listeners, Serve

    cfg = make_config(db_url, tmp_path, demo_model)
    cfg.model.warm_up, cfg.model.batch_size = warm_up, 2
    worker = Serve(cfg, ("worker",), Listeners())._worker(session_factory, on_outbox=lambda: None)
    assert sorted(worker.ensemble._compiled) == ([1, 2] if warm_up else [])
