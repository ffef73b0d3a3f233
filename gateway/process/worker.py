"""The worker: stored ECG -> normalised input -> model -> persisted result.

One loop per process claims waiting ECGs in micro-batches, decodes and
normalises each, runs the model once per batch, and then writes the batch's
outcomes in ONE transaction: for each ECG the prediction (or the rejection),
the new status and the outbox row for the HL7 result (one commit per batch,
not per ECG: on SQLite each commit is an fsync).  Nothing in between is
committed, so a crash leaves the ECGs claimed, and their leases bring them
back.  When that transaction fails, each ECG's outcome is written in its own,
so one ECG the database refuses does not hold back the others.

The loop (:meth:`Worker.run`) overlaps consecutive batches
(:mod:`gateway.process.pipeline`): the model call and the write run on
threads of their own, so the model does not wait while Python reads and
normalises the next batch or writes the previous one.  ``run_once`` and
``process`` run one batch through every step on the caller's thread.

Failure policy:
- a later version of a SOP Instance UID with another patient identity than
  its first version (``gateway.store.versions``): quarantined, ``rejected``,
  no ORU, audited;
- the input cannot be analysed (``NormaliseError``): final, ``rejected`` with
  the reason, and an HL7 message saying so, so the order does not hang open;
- anything else: retried with backoff, ``failed`` with the traceback after
  ``max_attempts``; the loop itself never dies on one bad ECG.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gateway import __version__
from gateway.config import Config
from gateway.deliver.outbox import enqueue_result
from gateway.deliver.pacs import enqueue_pacs
from gateway.findings import FINDINGS
from gateway.infer.thresholds import apply_thresholds
from gateway.normalise import (
    OUTPUT_LEADS,
    NormalisedEcg,
    NormaliseError,
    NormaliseParams,
    input_sha256,
    normalise_dataset,
    normaliser_version,
)
from gateway.normalise.encode import make_ecg_dataset
from gateway.process import metrics
from gateway.process.claim import claim_batch, release_dead_claims, still_claimed, this_process
from gateway.process.outcome import Decision, Facts, Outcome, decide
from gateway.process.pipeline import Pipeline
from gateway.rebuild import normalise_document, read_dataset
from gateway.report.measurements import CartReport
from gateway.report.measurements import extract as cart_report
from gateway.store.audit import audit
from gateway.store.models import EcgInstance, Prediction
from gateway.store.spool import Spool
from gateway.store.versions import IDENTITY_CHANGED, IDENTITY_CHANGED_AUDIT, corrected_version, identity_conflict
from gateway.timeutil import as_utc, utcnow

log = logging.getLogger("gateway.process")

#: Seconds between checks for claims of dead processes on this host (another
#: gateway process there may have been killed while this one runs).
DEAD_CLAIM_CHECK_S = 10.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Item:
    """One claimed ECG on its way through a batch."""

    ecg_id: int
    sop_instance_uid: str = ""
    received_at: datetime | None = None
    attempts: int = 0
    source_format: str = "dicom"
    path: Path | None = None  # the spooled original
    normalised: NormalisedEcg | None = None
    rejection: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # unexpected failure, with traceback
    normalise_ms: float = 0.0
    output: dict[str, Any] | None = None
    #: Another patient than the UID's first version: (ecg id, version) of that version.
    identity_conflict: tuple[int, int] | None = None
    #: The cart's measurements and statements.
    cart: CartReport | None = None


class Worker:
    """Processes ECGs until ``stop`` is set.  ``wake()`` (called by the SCP
    after each stored instance) cuts the polling delay to nothing."""

    def __init__(
        self,
        cfg: Config,
        session_factory: sessionmaker[Session],
        ensemble: Any,
        worker_id: str | None = None,
        on_outbox: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.session_factory = session_factory
        self.ensemble = ensemble
        self.worker_id = worker_id or new_worker_id()
        self.params = NormaliseParams(**cfg.normalise.model_dump())
        self.on_outbox = on_outbox
        self._wake = threading.Event()
        self.claimer = this_process()
        self.spool = Spool.from_config(cfg.storage)
        self._next_dead_check = time.monotonic() + DEAD_CLAIM_CHECK_S

    def warm_up(self) -> Any:
        """Run a synthetic ECG through the read and normalise path once, so
        the first real ECG after start does not pay for imports and filter
        design (about 2 s, measured)."""
        from gateway.dicomio.reader import read

        t = np.arange(5000) / 500.0
        signal = np.stack([np.sin(2 * np.pi * (1 + k / 10) * t) for k in range(len(OUTPUT_LEADS))], axis=1)
        buf = io.BytesIO()
        make_ecg_dataset(signal, 500.0, OUTPUT_LEADS).save_as(buf, enforce_file_format=True)
        return normalise_dataset(read(buf.getvalue()), self.params)

    def wake(self, _ecg_id: int | None = None) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Process ECGs until ``stop`` is set, batches overlapped
        (:mod:`gateway.process.pipeline`): while one batch is in the model,
        this thread claims and prepares the next and another thread writes
        the previous one.  At stop, no more is claimed; what was claimed is
        inferred and written before this returns."""
        log.info(
            "worker %s started (batch %d, wait %d ms)",
            self.worker_id,
            self.cfg.model.batch_size,
            self.cfg.model.max_wait_ms,
        )
        pipe: Pipeline[list[_Item]] = Pipeline(self._model, self._finish)
        try:
            while True:
                pipe.wait_for_room()  # before claiming: at most pipeline.DEPTH batches in flight
                if stop.is_set():
                    break
                try:
                    if time.monotonic() >= self._next_dead_check:
                        self._next_dead_check = time.monotonic() + DEAD_CLAIM_CHECK_S
                        release_dead_claims(self.session_factory, self.claimer)
                    ids = self._claim_batch()
                    if ids:
                        pipe.submit(self._intake(ids))
                except Exception:  # database down, etc.: keep the loop alive
                    log.exception("worker loop error; retrying")
                    ids = []
                    stop.wait(min(5.0, self.cfg.process.poll_interval_s * 4))
                if not ids:
                    self._wake.wait(self.cfg.process.poll_interval_s)
                    self._wake.clear()
        finally:
            pipe.close()
        log.info("worker %s stopped", self.worker_id)

    def _claim(self, limit: int) -> list[int]:
        p = self.cfg.process
        return claim_batch(self.session_factory, self.worker_id, limit, p.lease_seconds, p.max_attempts, self.claimer)

    def _claim_batch(self) -> list[int]:
        """Claim up to one micro-batch, waiting up to ``max_wait_ms`` for it to fill."""
        size, wait_s = self.cfg.model.batch_size, self.cfg.model.max_wait_ms / 1000
        ids = self._claim(size)
        if not ids:
            return ids
        # ECGs that arrive together share one model call: wait briefly for more.
        deadline = time.monotonic() + wait_s
        while len(ids) < size and time.monotonic() < deadline:
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            self._wake.clear()
            ids += self._claim(size - len(ids))
        return ids

    def run_once(self) -> int:
        """Claim one micro-batch and finish it on this thread; returns how many ECGs were claimed."""
        ids = self._claim_batch()
        if ids:
            self.process(ids)
        return len(ids)

    # -- one batch ---------------------------------------------------------

    def process(self, ids: Sequence[int]) -> None:
        """One claimed batch from start to end on this thread (:meth:`run` overlaps these steps)."""
        items = self._intake(ids)
        self._model(items)
        self._finish(items)

    def _intake(self, ids: Sequence[int]) -> list[_Item]:
        """Load and prepare (read, normalise) the claimed ECGs."""
        return [self._prepare(it) for it in self._load(ids)]

    def _model(self, items: list[_Item]) -> None:
        """The model call for the batch's ECGs that normalise read."""
        ready = [it for it in items if it.normalised is not None]
        if ready:
            self._infer(ready)

    def _load(self, ids: Sequence[int]) -> list[_Item]:
        """The claimed rows' facts the read needs, from one session."""
        items = [_Item(ecg_id) for ecg_id in ids]
        try:
            with self.session_factory() as session:
                rows = {r.id: r for r in session.scalars(select(EcgInstance).where(EcgInstance.id.in_(ids)))}
                for item in items:
                    try:
                        row = rows.get(item.ecg_id)
                        assert row is not None, f"ECG {item.ecg_id} vanished"
                        item.sop_instance_uid, item.received_at, item.attempts = (
                            row.sop_instance_uid,
                            row.received_at,
                            row.attempts,
                        )
                        item.source_format, item.path = row.source_format, self.spool.resolve(row.spool_path)
                        # The door quarantines such versions; rows stored before it did are caught here.
                        conflict = identity_conflict(session, row) if row.version > 1 else None
                        if conflict is not None:
                            item.identity_conflict = (conflict.id, conflict.version)
                    except Exception:
                        item.error = traceback.format_exc()
        except Exception:  # database down: each ECG goes its way as an unexpected error
            tb = traceback.format_exc()
            for item in items:
                item.error = item.error or tb
        return items

    def _prepare(self, item: _Item) -> _Item:
        """Read and normalise one loaded ECG (and read the cart's report)."""
        from gateway.dicomio.limits import MIB, DatasetTooLarge, check_size

        if item.error is not None or item.identity_conflict is not None or item.path is None:
            return item
        t0 = time.perf_counter()
        path = item.path
        try:
            max_bytes = self.cfg.dicom.max_dataset_mb * MIB
            try:  # FileNotFoundError: not a rejection, handled as before
                check_size(path.stat().st_size, max_bytes)  # stored before the limit (or under a higher one): unread
            except DatasetTooLarge as exc:
                raise NormaliseError(str(exc)) from None
            raw = path.read_bytes()
            if item.source_format != "dicom":  # Philips XML, aECG: decoded by gateway.formats
                result = normalise_document(raw, item.source_format, self.params)
            else:
                ds = read_dataset(raw, max_bytes, annotations=True)
                item.cart = cart_report(ds)  # the cart's own reading, also for an ECG the model cannot read
                result = normalise_dataset(ds, self.params)
            item.normalised, item.report = result, result.report
        except NormaliseError as exc:
            item.rejection = str(exc)
            item.report = dict(getattr(exc, "report", None) or {})
        except Exception:
            item.error = traceback.format_exc()
        item.normalise_ms = (time.perf_counter() - t0) * 1000
        metrics.NORMALISE_SECONDS.observe(item.normalise_ms / 1000)
        return item

    def _infer(self, ready: list[_Item]) -> None:
        # ``ready``: the items normalise_dataset read (process() keeps only those)
        x = np.stack([it.normalised.signal for it in ready if it.normalised is not None]).astype(np.float32, copy=False)
        t0 = time.perf_counter()
        try:
            out = self.ensemble.predict(x)
        except Exception:
            tb = traceback.format_exc()
            for it in ready:
                it.error = tb
            return
        infer_ms = (time.perf_counter() - t0) * 1000
        metrics.BATCH_SIZE.observe(len(ready))
        metrics.INFERENCE_SECONDS.observe(infer_ms / 1000)
        for i, it in enumerate(ready):
            it.output = {
                "mean": out.mean[i],
                "min": out.min[i],
                "max": out.max[i],
                "std": out.std[i],
                "infer_ms": infer_ms,
                "batch_size": len(ready),
            }

    def _report_pdf(self, it: _Item, now: datetime) -> bytes | None:
        """The PDF report for the ORU when ``[hl7] embed_pdf`` (else None), from
        the model input in memory and the values the result will store (the
        same bytes ``ecg export-report`` gives later).  A report that cannot be
        drawn is logged and left out: the result goes without it."""
        hl7, output, normalised = self.cfg.hl7, it.output, it.normalised
        if (
            not (hl7.enabled and hl7.embed_pdf)
            or output is None
            or normalised is None
            or it.error is not None
            or it.identity_conflict is not None
        ):
            return None
        from types import SimpleNamespace

        from gateway.report.pdf import build_pdf, input_scale, report_data

        try:
            probs = {code: float(output["mean"][k]) for k, code in enumerate(FINDINGS)}
            thresholds = dict(self.cfg.model.thresholds)
            identity = self.ensemble.identity
            prediction = SimpleNamespace(
                probabilities=probs,
                thresholds=thresholds,
                findings=apply_thresholds(probs, thresholds),
                quality_flags=list(normalised.quality_flags),
                model_sha256=identity["model_sha256"],
                demo_model=bool(identity["demo"]),
                gateway_version=__version__,
                created_at=now,
            )
            with self.session_factory() as session:
                row = session.get(EcgInstance, it.ecg_id)
                ecg = SimpleNamespace(**{c.key: getattr(row, c.key) for c in EcgInstance.__table__.columns})
            cart = it.cart
            ecg.measurements = cart.measurements if cart is not None else None
            ecg.cart_statements = cart.statements if cart is not None else []
            fs, gain = input_scale(it.report)
            return build_pdf(report_data(ecg, normalised.signal, list(OUTPUT_LEADS), fs, gain, prediction=prediction))
        except Exception:  # noqa: BLE001 - the result must not wait for its picture
            log.exception(
                "ECG id=%s sop=%s: the PDF report for the ORU could not be built; sent without it",
                it.ecg_id,
                it.sop_instance_uid,
            )
            return None

    def _finish(self, items: list[_Item]) -> None:
        """Write the batch's outcomes (:func:`gateway.process.outcome.decide`)
        in one transaction, each only while our claim holds; then log and
        count them.  If that transaction fails, each ECG is written in its
        own: one ECG's write alone may fail (a value the database refuses);
        that ECG stays claimed until its lease, the others are written, and
        the error goes to the loop, which logs it."""
        now = utcnow()
        pdfs = [self._report_pdf(it, now) for it in items]  # before the transaction: ~50 ms each
        failed: Exception | None = None
        try:
            with self.session_factory() as session, session.begin():
                written = self._write(session, items, pdfs, now)
        except Exception as exc:
            if len(items) == 1:
                raise
            log.warning(
                "writing %d outcomes in one transaction failed; writing them one by one", len(items), exc_info=True
            )
            written, failed = [], exc
            for it, pdf in zip(items, pdfs, strict=True):
                try:
                    with self.session_factory() as session, session.begin():
                        written += self._write(session, [it], [pdf], now)
                except Exception as one:  # this ECG stays claimed: its lease brings it back
                    failed = one
        for it, decision, prediction, _ in written:
            self._log_outcome(it, decision, prediction)
        if self.on_outbox and any(enqueued for *_, enqueued in written):
            self.on_outbox()
        if failed is not None:  # to the loop, which logs it (as when one ECG's own transaction failed)
            raise failed

    def _write(
        self, session: Session, items: list[_Item], pdfs: list[bytes | None], now: datetime
    ) -> list[tuple[_Item, Decision, Prediction | None, bool]]:
        """Add the outcomes of ``items`` to ``session``'s transaction (the
        ECGs whose claim still holds); what was written, for the log."""
        rows = still_claimed(session, [it.ecg_id for it in items], self.worker_id)
        written = []
        for it, report_pdf in zip(items, pdfs, strict=True):
            row = rows.get(it.ecg_id)
            if row is None:
                log.warning(
                    "ECG id=%s sop=%s: claim lost (lease expired?); leaving it to its new owner",
                    it.ecg_id,
                    it.sop_instance_uid,
                )
                continue
            facts = Facts(
                inferred=it.output is not None,
                rejection=it.rejection,
                error=it.error,
                identity_conflict=it.identity_conflict,
            )
            prediction: Prediction | None = None
            enqueued = False
            # a later version of an instance whose result went out corrects it (OBR-25 = C)
            corrects = corrected_version(session, row) if row.version > 1 else None
            decision = decide(
                facts,
                attempts=row.attempts,
                max_attempts=self.cfg.process.max_attempts,
                now=now,
                corrects=corrects,
                report_pdf=report_pdf,
            )
            row.status, row.error = decision.status, decision.error
            if decision.outcome is Outcome.QUARANTINED:
                assert it.identity_conflict is not None  # what decide() quarantines on
                ref_id, ref_version = it.identity_conflict
                row.flags = [*(row.flags or []), IDENTITY_CHANGED]
                audit(
                    session,
                    f"worker:{self.worker_id}",
                    IDENTITY_CHANGED_AUDIT,
                    f"ecg:{row.id}",
                    sop_instance_uid=row.sop_instance_uid,
                    version=row.version,
                    reference_ecg_id=ref_id,
                    reference_version=ref_version,
                )
            elif decision.outcome is Outcome.PROCESSED:
                prediction = self._prediction(it, row, now)
                session.add(prediction)
                row.report = it.report
            elif decision.outcome is Outcome.REJECTED:
                row.report = it.report
            if decision.retry_at is not None:  # try again later, backing off
                row.lease_expires_at, row.claimed_by = decision.retry_at, None
            if decision.releases_claim:
                row.claimed_by, row.lease_expires_at, row.processed_at = None, None, now
            if decision.oru is not None:
                if it.cart is not None:
                    row.measurements, row.cart_statements = it.cart.measurements, it.cart.statements
                enqueued = enqueue_result(session, row, prediction, self.cfg.hl7, options=decision.oru) is not None
                if prediction is not None:  # the report and the SR to PACS ([pacs] send), with the result
                    enqueue_pacs(session, row, self.cfg.pacs)
            written.append((it, decision, prediction, enqueued))
        return written

    def _prediction(self, it: _Item, row: EcgInstance, now: datetime) -> Prediction:
        """The result row of an ECG the model read (its output and model input are in ``it``)."""
        output, normalised = it.output, it.normalised
        assert output is not None and normalised is not None  # only inferred ECGs are processed
        probs = {code: float(output["mean"][k]) for k, code in enumerate(FINDINGS)}
        thresholds = dict(self.cfg.model.thresholds)
        identity = self.ensemble.identity
        received = as_utc(row.received_at)
        return Prediction(
            ecg_id=row.id,
            probabilities=probs,
            spread={code: {s: float(output[s][k]) for s in ("min", "max", "std")} for k, code in enumerate(FINDINGS)},
            findings=apply_thresholds(probs, thresholds),
            thresholds=thresholds,
            created_at=now,  # the PDF report shows this time ([hl7] embed_pdf built it already)
            model_files=identity["files"],
            model_sha256=identity["model_sha256"],
            demo_model=bool(identity["demo"]),
            quality_flags=list(normalised.quality_flags),
            # The input is rebuilt from the spool on demand and checked against this.
            input_sha256=input_sha256(normalised.signal),
            normaliser_version=normaliser_version(),
            gateway_version=__version__,
            timings={
                "normalise_ms": round(it.normalise_ms, 3),
                "infer_ms": round(output["infer_ms"], 3),
                "batch_size": output["batch_size"],
                "worker": self.worker_id,
                "received_to_processed_ms": round((now - received).total_seconds() * 1000, 3),
            },
        )

    def _log_outcome(self, it: _Item, decision: Decision, prediction: Prediction | None) -> None:
        """One log line and the /metrics counters for a written outcome."""
        metrics.ECG_OUTCOMES.labels(decision.metric_label).inc()
        outcome = decision.outcome
        if prediction is not None:
            latency_ms = prediction.timings["received_to_processed_ms"]
            metrics.LATENCY.observe(latency_ms / 1000)
            log.info(
                "ECG id=%s sop=%s processed: findings=%s (%.0f ms after receipt)",
                it.ecg_id,
                it.sop_instance_uid,
                ",".join(prediction.findings) or "none",
                latency_ms,
            )
        elif outcome is Outcome.REJECTED:
            log.warning("ECG id=%s sop=%s rejected: %s", it.ecg_id, it.sop_instance_uid, it.rejection)
        elif outcome is Outcome.QUARANTINED:
            log.warning("ECG id=%s sop=%s quarantined, no ORU: %s", it.ecg_id, it.sop_instance_uid, decision.error)
        elif outcome is Outcome.RETRY:
            log.warning(
                "ECG id=%s sop=%s: unexpected error (attempt %d of %d), will retry: %s",
                it.ecg_id,
                it.sop_instance_uid,
                it.attempts,
                self.cfg.process.max_attempts,
                (it.error or "").strip().splitlines()[-1],
            )
        else:
            log.error(
                "ECG id=%s sop=%s failed after %d attempts: %s",
                it.ecg_id,
                it.sop_instance_uid,
                it.attempts,
                (it.error or "").strip().splitlines()[-1],
            )
