"""The result back to PACS: the outbox of DICOM objects and its sender thread.

For each analysed ECG the worker adds one ``pacs_messages`` row per kind in
``[pacs] send`` ("pdf": Encapsulated PDF of the report, "sr": Comprehensive
SR of the findings) in the result's own transaction, with the object's SOP
Instance UID and series UID chosen there.  The sender builds the object when
it sends it (:mod:`gateway.report.dicom`, from the stored original and the
database rows: the same PDF bytes as ``ecg export-report``) and stores it by
C-STORE (pynetdicom).

Guarantees, as the HL7 outbox's: nothing is lost (the row is committed with
the result, before anything is sent); a refused or failed store is retried
with capped exponential backoff and is ``failed`` after ``max_attempts``
(``ecg-gateway pacs resend ID`` queues it again, audited); exactly one copy
per ECG and kind reaches PACS, across crashes: a row is claimed with a lease
(attempts + 1 as the owner's token; ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), and a process killed between PACS's success and the record of
it sends the object again under the same SOP Instance UID, which PACS stores
once.  The claim records its claimer (host, pid, process start time; cleared
with the outcome): the claim of a process on this host that died is due again
at once (checked at start and every 10 s, ``deliver.claims``), one of another
host when its lease ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from gateway.deliver.claims import DEAD_CLAIM_CHECK_S, release_dead_outbox_claims
from gateway.store.claimer import Claimer, this_process
from gateway.store.models import (
    PACS_DELIVERED,
    PACS_FAILED,
    PACS_PENDING,
    PACS_STATUSES,
    Confirmation,
    EcgInstance,
    PacsMessage,
)
from gateway.timeutil import utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from gateway.config import Config, PacsConfig

log = logging.getLogger("gateway.deliver.pacs")

#: Longest sleep between outbox polls when nothing is due.
IDLE_POLL_S = 1.0
#: C-STORE statuses that mean "stored": success and the warnings (coercion, elements discarded).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class PacsBuildError(Exception):
    """The object cannot be built (no model input, unreadable original): failed at once."""


def enqueue_pacs(session: Session, ecg: EcgInstance, cfg: PacsConfig) -> list[PacsMessage]:
    """Add one outbox row per kind in ``cfg.send`` for ``ecg`` in the caller's
    transaction (no commit); none when PACS is disabled."""
    from pydicom.uid import generate_uid

    from gateway.report.dicom import COMPREHENSIVE_SR, ENCAPSULATED_PDF

    if not cfg.enabled:
        return []
    if getattr(ecg, "source_format", "dicom") != "dicom":
        # the PDF and SR reuse the original's DICOM patient and study modules: a Philips XML or aECG
        # original has none (no study UID in either format), so nothing goes back to PACS for it
        log.info("ecg %s: no PACS objects for a %s original (no DICOM study to add them to)", ecg.id, ecg.source_format)
        return []
    rows = []
    for kind in cfg.send:
        row = PacsMessage(
            ecg_id=ecg.id,
            kind=kind,
            sop_class_uid=ENCAPSULATED_PDF if kind == "pdf" else COMPREHENSIVE_SR,
            sop_instance_uid=generate_uid(),
            series_instance_uid=generate_uid(),
            status=PACS_PENDING,
            attempts=0,
            next_attempt_at=utcnow(),
            created_at=utcnow(),
        )
        session.add(row)
        rows.append(row)
    return rows


def build_object(session: Session, msg: PacsMessage, spool_dir: str | Path, max_bytes: int) -> Any:
    """The DICOM data set of outbox row ``msg`` (raises :class:`PacsBuildError`)."""
    from gateway import __version__
    from gateway.dicomio.reader import read
    from gateway.rebuild import RebuildError, report_pdf, stored_original
    from gateway.report.dicom import ResultValues, comprehensive_sr, encapsulated_pdf
    from gateway.timeutil import as_utc

    ecg = session.get(EcgInstance, msg.ecg_id)
    if ecg is None or ecg.prediction is None:
        raise PacsBuildError(f"ECG {msg.ecg_id} has no AI result")
    try:
        source = read(stored_original(ecg, spool_dir)[1], max_bytes, sequences=None)
    except RebuildError as exc:  # missing, or changed on disk
        raise PacsBuildError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - unreadable now
        raise PacsBuildError(f"ECG {ecg.id}: stored original unreadable: {type(exc).__name__}") from None
    p = ecg.prediction
    when = as_utc(p.created_at) or utcnow()
    # an object queued by a physician's confirmation reports it ("confirmed by X at T")
    confirmation = session.get(Confirmation, msg.confirmation_id) if msg.confirmation_id is not None else None
    if confirmation is not None:
        when = as_utc(confirmation.created_at) or when
    if msg.kind == "pdf":
        try:
            pdf = report_pdf(ecg, spool_dir, confirmation=confirmation)
        except RebuildError as exc:
            raise PacsBuildError(str(exc)) from None
        return encapsulated_pdf(
            source,
            pdf,
            series_uid=msg.series_instance_uid,
            sop_uid=msg.sop_instance_uid,
            when=when,
            software_version=f"ECG gateway {__version__}",
            confirmed=confirmation is not None,
        )
    from gateway.report.pdf import reader_confirmation
    from gateway.report.people import split_name

    reader_pn = ""
    if confirmation is not None:
        family, given = split_name(confirmation.full_name, confirmation.username)  # as the ORU's OBR-32
        reader_pn = f"{family}^{given}".rstrip("^")[:64]
    values = ResultValues(
        probabilities=p.probabilities or {},
        thresholds=p.thresholds or {},
        findings=list(p.findings or []),
        model_sha256=p.model_sha256,
        gateway_version=p.gateway_version,
        demo_model=bool(p.demo_model),
        measurements=ecg.measurements,
        cart_statements=list(ecg.cart_statements or []),
        result_time=when,
        confirmation=reader_confirmation(confirmation) if confirmation is not None else None,
        reader_pn=reader_pn,
    )
    # the earlier SRs of this ECG (the AI's, earlier over-reads): all of them, whatever
    # their delivery, so a rebuild after a crash gives the same object
    earlier = session.execute(
        select(PacsMessage.series_instance_uid, PacsMessage.sop_instance_uid)
        .where(PacsMessage.ecg_id == msg.ecg_id, PacsMessage.kind == "sr", PacsMessage.id < msg.id)
        .order_by(PacsMessage.id)
    ).all()
    return comprehensive_sr(
        source,
        values,
        series_uid=msg.series_instance_uid,
        sop_uid=msg.sop_instance_uid,
        predecessors=[(series, instance) for series, instance in earlier],
    )


def c_store(ds: Any, cfg: PacsConfig) -> str | None:
    """Store ``ds`` at ``[pacs]`` by C-STORE: None when PACS stored it, else why not."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=cfg.calling_ae_title)
    ae.acse_timeout = ae.network_timeout = cfg.connect_timeout
    ae.dimse_timeout = cfg.dimse_timeout
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = None
    if cfg.tls:
        from gateway.deliver.mllp import make_ssl_context

        tls_args = (make_ssl_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key), cfg.host)
    assoc = ae.associate(cfg.host, cfg.port, ae_title=cfg.called_ae_title, tls_args=tls_args)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no association"
        return f"association {why} by {cfg.called_ae_title}@{cfg.host}:{cfg.port}"
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        return "no C-STORE response (timeout or aborted)"
    if code not in STORED:
        return f"C-STORE status 0x{code:04X}"
    return None


def backoff_delay(attempts: int, cfg: PacsConfig) -> float:
    """Seconds before attempt ``attempts + 1``: initial * 2**(attempts-1), capped."""
    exponent = min(max(attempts - 1, 0), 60)
    return min(cfg.backoff_initial_s * (2.0**exponent), cfg.backoff_max_s)


@dataclass(frozen=True)
class Claimed:
    id: int
    #: attempts after the claim: the token that proves the row is still ours.
    attempts: int


def _claim(session_factory: Callable[[], Session], cfg: PacsConfig, claimer: Claimer | None) -> Claimed | None:
    # one attempt (association + C-STORE) and a margin; a killed sender's row is sent again after it
    lease = timedelta(seconds=2 * (cfg.connect_timeout + cfg.dimse_timeout) + 10)
    now = utcnow()
    with session_factory() as session, session.begin():
        stmt = (
            select(PacsMessage)
            .where(PacsMessage.status == PACS_PENDING, PacsMessage.next_attempt_at <= now)
            .order_by(PacsMessage.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        row = session.scalars(stmt).first()
        if row is None:
            return None
        row.attempts += 1
        row.last_attempt_at, row.next_attempt_at = now, now + lease
        if claimer is not None:  # released at once if this process dies (deliver.claims)
            row.claim_host, row.claim_pid, row.claim_started = claimer.host, claimer.pid, claimer.started
        return Claimed(row.id, row.attempts)


def send_one(session_factory: Callable[[], Session], config: Config, claimer: Claimer | None = None) -> bool:
    """Claim, build, send and record one due object; False when none was due.
    ``claimer`` (normally :func:`~gateway.store.claimer.this_process`) is
    recorded with the claim."""
    cfg = config.pacs
    claimed = _claim(session_factory, cfg, claimer)
    if claimed is None:
        return False
    from gateway.dicomio.limits import MIB

    error, permanent = None, False
    with session_factory() as session:
        msg = session.get(PacsMessage, claimed.id)
        assert msg is not None
        uid, kind, ecg_id = msg.sop_instance_uid, msg.kind, msg.ecg_id
        try:
            ds = build_object(session, msg, config.storage.spool_dir, config.dicom.max_dataset_mb * MIB)
        except PacsBuildError as exc:
            error, permanent = str(exc), True
    if error is None:
        try:
            error = c_store(ds, cfg)
        except Exception as exc:  # noqa: BLE001 - network, TLS, pynetdicom: retried
            error = f"{type(exc).__name__}: {exc}"
    now = utcnow()
    with session_factory() as session, session.begin():
        row = session.get(PacsMessage, claimed.id)
        if row is None or row.attempts != claimed.attempts or row.status != PACS_PENDING:
            log.warning("pacs message %s (SOP %s): claim lost; leaving it", claimed.id, uid)
            return True
        row.claim_host = row.claim_pid = row.claim_started = None  # the claim ends with its outcome
        if error is None:
            row.status, row.delivered_at, row.last_error = PACS_DELIVERED, now, None
            log.info("pacs message %s: %s of ECG %s stored in PACS (SOP %s)", row.id, kind, ecg_id, uid)
        elif permanent or row.attempts >= cfg.max_attempts:
            row.status, row.last_error = PACS_FAILED, error
            log.warning(
                "pacs message %s: %s of ECG %s failed after %d attempt(s): %s",
                row.id,
                kind,
                ecg_id,
                row.attempts,
                error,
            )
        else:
            row.last_error = error
            row.next_attempt_at = now + timedelta(seconds=backoff_delay(row.attempts, cfg))
            log.info("pacs message %s: attempt %d failed (%s); retrying", row.id, row.attempts, error)
    return True


def run_pacs_sender(
    session_factory: Callable[[], Session], config: Config, stop: threading.Event, wake: threading.Event | None = None
) -> None:
    """Send due PACS objects until ``stop`` is set; ``wake`` cuts the idle wait."""
    wake = wake or threading.Event()
    claimer = this_process()
    log.info(
        "PACS sender started (%s@%s:%d, %s)",
        config.pacs.called_ae_title,
        config.pacs.host,
        config.pacs.port,
        ", ".join(config.pacs.send),
    )
    next_dead_check = 0.0  # at start, then periodically: a process on this host died mid-send
    while not stop.is_set():
        try:
            if time.monotonic() >= next_dead_check:
                next_dead_check = time.monotonic() + DEAD_CLAIM_CHECK_S
                release_dead_outbox_claims(session_factory, PacsMessage, claimer)
            busy = send_one(session_factory, config, claimer)
        except Exception:  # database down, ...: keep the loop alive
            log.exception("PACS sender error; retrying")
            busy = False
            stop.wait(IDLE_POLL_S)
        if not busy:
            wake.wait(IDLE_POLL_S)
            wake.clear()
    log.info("PACS sender stopped")


def resend(session: Session, message_id: int, actor: str) -> PacsMessage:
    """Queue outbox row ``message_id`` again (same SOP Instance UID: PACS keeps
    one copy); writes an audit row; the caller commits.  Raises LookupError."""
    from gateway.store.audit import audit

    row = session.get(PacsMessage, message_id)
    if row is None:
        raise LookupError(f"no PACS message with id {message_id}")
    old_status = row.status
    row.status, row.attempts, row.next_attempt_at, row.last_error = PACS_PENDING, 0, utcnow(), None
    row.claim_host = row.claim_pid = row.claim_started = None  # a send under way loses its claim (attempts changed)
    audit(
        session,
        actor,
        "pacs_resend",
        f"pacs_message:{row.id}",
        ecg_id=row.ecg_id,
        kind=row.kind,
        sop_instance_uid=row.sop_instance_uid,
        old_status=old_status,
    )
    return row


def pacs_counts(session: Session) -> dict[str, int]:
    """Outbox rows per status (every status, zeros included)."""
    counts = dict.fromkeys(PACS_STATUSES, 0)
    for status, n in session.execute(select(PacsMessage.status, func.count()).group_by(PacsMessage.status)):
        counts[status] = n
    return counts
