"""The sender thread: outbox rows -> MLLP -> delivered / retried / failed.

Each message is *claimed* in a short transaction (``attempts`` + 1 and a lease
in ``next_attempt_at``), sent with no transaction open, and its outcome
recorded in a second short transaction.  Several gateway processes may share
one PostgreSQL database: claims use ``FOR UPDATE SKIP LOCKED`` and a process
that dies mid-send leaves a row that becomes due again when its lease ends.

Per order key (one patient) rows go out in id order: a row is eligible only
when no earlier row of its key is still pending.  AA -> delivered (ACK
stored); AE -> retried with backoff, failed after ``max_attempts``; AR,
timeouts, wrong MSA-2 and connection problems -> retried with capped
exponential backoff, indefinitely.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Callable

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from gateway.deliver.mllp import MllpClient, SendResult, make_ssl_context
from gateway.deliver.oru import payload_codec
from gateway.store.models import HL7_DELIVERED, HL7_FAILED, HL7_PENDING, Hl7Message

if TYPE_CHECKING:
    from gateway.config import Hl7Config

log = logging.getLogger("gateway.deliver")

#: Longest idle sleep between outbox polls when nothing is due.
IDLE_POLL_S = 1.0


@dataclass(frozen=True)
class Claimed:
    id: int
    ecg_id: int
    control_id: str
    payload: str
    #: attempts after the claim: the token that proves the row is still ours.
    attempts: int


def backoff_delay(attempts: int, cfg: Hl7Config) -> float:
    """Seconds before attempt ``attempts + 1``: initial * 2**(attempts-1), capped."""
    exponent = max(attempts - 1, 0)
    if exponent > 60:
        return cfg.backoff_max_s
    return min(cfg.backoff_initial_s * (2.0 ** exponent), cfg.backoff_max_s)


def lease_seconds(cfg: Hl7Config) -> float:
    """How long a claimed row is hidden from other senders: one full attempt
    (including the one immediate reconnect) plus a margin."""
    return 2 * (cfg.connect_timeout + cfg.ack_timeout) + 30.0


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _eligible():  # type: ignore[no-untyped-def]
    """WHERE clause: pending and no earlier pending row of the same order key."""
    earlier = aliased(Hl7Message)
    blocked = exists().where(
        earlier.order_key == Hl7Message.order_key,
        earlier.status == HL7_PENDING,
        earlier.id < Hl7Message.id,
    )
    return (Hl7Message.status == HL7_PENDING) & ~blocked


def claim_next(session: Session, cfg: Hl7Config, now: datetime) -> Claimed | None:
    """Claim the oldest due, unblocked row and commit the claim; None when
    nothing is due."""
    stmt = (
        select(Hl7Message)
        .where(_eligible(), Hl7Message.next_attempt_at <= now)
        .order_by(Hl7Message.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=Hl7Message)
    with session.begin():
        row = session.scalars(stmt).first()
        if row is None:
            return None
        row.attempts += 1
        row.last_attempt_at = now
        row.next_attempt_at = now + timedelta(seconds=lease_seconds(cfg))
        claimed = Claimed(row.id, row.ecg_id, row.control_id, row.payload, row.attempts)
    return claimed


def seconds_until_due(session: Session, now: datetime) -> float | None:
    """Seconds until the next unblocked pending row is due (None: no such row)."""
    with session.begin():
        nxt = session.scalar(select(func.min(Hl7Message.next_attempt_at)).where(_eligible()))
    if nxt is None:
        return None
    return max((_as_utc(nxt) - now).total_seconds(), 0.0)


def record_result(session: Session, claimed: Claimed, result: SendResult, cfg: Hl7Config, now: datetime) -> str | None:
    """Store the outcome of one attempt; returns the row's new status (None
    when the row is no longer ours: lease lost or deleted)."""
    with session.begin():
        row = session.get(Hl7Message, claimed.id, with_for_update=True)
        if row is None or row.attempts != claimed.attempts:
            log.warning("hl7 message %s: outcome %s dropped, row changed meanwhile", claimed.id, result.outcome)
            return None
        if result.ack is not None:
            row.ack = result.ack
        if result.outcome == "accepted":
            row.delivered_at = now
            if row.status == HL7_PENDING:  # a superseded row stays superseded
                row.status = HL7_DELIVERED
                row.last_error = None
            log.info("hl7 message %s (ecg %s) delivered, attempt %s", row.id, row.ecg_id, row.attempts)
            return row.status
        if row.status != HL7_PENDING:
            return row.status
        row.last_error = result.detail
        if result.outcome == "error" and row.attempts >= cfg.max_attempts:
            row.status = HL7_FAILED
            log.error("hl7 message %s (ecg %s) failed after %s attempts: %s",
                      row.id, row.ecg_id, row.attempts, result.detail)
        else:
            delay = backoff_delay(row.attempts, cfg)
            row.next_attempt_at = now + timedelta(seconds=delay)
            log.warning("hl7 message %s (ecg %s) attempt %s: %s; retry in %.1f s",
                        row.id, row.ecg_id, row.attempts, result.detail, delay)
        return row.status


def make_client(cfg: Hl7Config) -> MllpClient:
    ctx = make_ssl_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key) if cfg.tls else None
    return MllpClient(cfg.host, cfg.port, cfg.connect_timeout, cfg.ack_timeout, ctx)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def run_sender(
    session_factory: Callable[[], Session],
    cfg: Hl7Config,
    stop: threading.Event,
    wake: threading.Event | None = None,
) -> None:
    """Deliver the outbox until ``stop`` is set (meant to run in a thread).

    ``wake`` (optional) is set by whoever enqueues, to skip the idle wait.
    While the receiver cannot be reached, the sender backs off as a whole
    (no other message is tried) and only the message that found it down is
    charged an attempt.
    """
    if not cfg.enabled:
        log.info("hl7 sender disabled")
        return
    client = make_client(cfg)
    waiter = wake if wake is not None else stop
    link_failures = 0
    log.info("hl7 sender started: %s:%s%s", cfg.host, cfg.port, " (TLS)" if cfg.tls else "")
    try:
        while not stop.is_set():
            try:
                with session_factory() as session:
                    claimed = claim_next(session, cfg, _utcnow())
                    if claimed is None:
                        due = seconds_until_due(session, _utcnow())
                        if due is None:
                            client.close()  # nothing queued: do not hold the receiver's connection
                        _wait(waiter, stop, IDLE_POLL_S if due is None else min(max(due, 0.01), IDLE_POLL_S))
                        continue
                    codec = payload_codec(claimed.payload)
                    result = client.send(claimed.payload.encode(codec), claimed.control_id, codec)
                    record_result(session, claimed, result, cfg, _utcnow())
            except Exception:  # the database may be briefly unavailable; keep the thread alive
                log.exception("hl7 sender: unexpected error; retrying")
                client.close()
                _wait(waiter, stop, IDLE_POLL_S)
                continue
            if result.connect_failed:
                link_failures += 1
                _wait(stop, stop, backoff_delay(link_failures, cfg))
            else:
                link_failures = 0
    finally:
        client.close()
        log.info("hl7 sender stopped")


def _wait(waiter: threading.Event, stop: threading.Event, seconds: float) -> None:
    """Sleep up to ``seconds``, waking early on ``waiter`` or ``stop``."""
    if waiter is stop:
        stop.wait(seconds)
        return
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or waiter.wait(min(remaining, 0.25)):
            break
    waiter.clear()
