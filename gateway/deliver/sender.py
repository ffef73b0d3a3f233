"""The sender thread: outbox rows -> MLLP -> delivered / retried / failed.

Due messages are *claimed* in a short transaction (``attempts`` + 1 and a
lease in ``next_attempt_at``; up to BATCH_SIZE at a time, one per order key),
sent with no transaction open, and their outcomes recorded in a second short
transaction.  Both are plain SQL statements (SQLAlchemy Core: one SELECT and
one executemany UPDATE each), not ORM objects: the unit of work cost ~2 ms of
CPU per transaction, more than the send itself.  A crash between an AA and that record means the message is sent
again (same MSH-10) when the lease ends: delivery is at least once.  A database
error there does not: the outcomes are kept and recorded when it answers again.  Several gateway processes may share
one PostgreSQL database: claims use ``FOR UPDATE SKIP LOCKED``.  Each claim
records its claimer (host, pid, process start time; cleared with the
outcome): a row claimed by a process on this host that died mid-send is due
again at once (checked at start and every 10 s, ``deliver.claims``); one
claimed on another host becomes due when its lease ends.

Per order key (one patient) rows go out in id order: a row is eligible only
when no earlier row of its key is still pending.  AA -> delivered (ACK
stored); AE -> retried with backoff, failed after ``max_attempts``; AR,
timeouts, wrong MSA-2 and connection problems -> retried with capped
exponential backoff, indefinitely.  A message that fails the check before
framing (``mllp.frame_problem``) is never sent: failed at once, with the
reason and a WARNING.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, CursorResult, Select, Table, Update, bindparam, exists, func, select, update
from sqlalchemy.orm import Session

from gateway.deliver.claims import DEAD_CLAIM_CHECK_S, release_dead_outbox_claims
from gateway.deliver.mllp import MllpClient, SendResult, make_ssl_context
from gateway.deliver.oru import payload_codec
from gateway.deliver.watch import Hl7Watch, outbox_snapshot
from gateway.store.claimer import Claimer, this_process
from gateway.store.models import HL7_DELIVERED, HL7_FAILED, HL7_PENDING, Hl7Message
from gateway.timeutil import as_utc, utcnow

if TYPE_CHECKING:
    from gateway.config import Hl7Config

log = logging.getLogger("gateway.deliver")

#: Longest idle sleep between outbox polls when nothing is due.
IDLE_POLL_S = 1.0
#: Rows claimed per transaction (distinct order keys); one commit claims them
#: all and one records all outcomes.
BATCH_SIZE = 32
#: Part of the lease beyond one worst-case attempt: a batch starts no new send
#: after this many seconds.
LEASE_MARGIN_S = 30.0


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
    return min(cfg.backoff_initial_s * (2.0**exponent), cfg.backoff_max_s)


def lease_seconds(cfg: Hl7Config) -> float:
    """How long a claimed row is hidden from other senders: one full attempt
    (including the one immediate reconnect) plus a margin."""
    return 2 * (cfg.connect_timeout + cfg.ack_timeout) + LEASE_MARGIN_S + 5.0


#: The outbox table (statements here are Core: no ORM unit of work per message).
_T = cast(Table, Hl7Message.__table__)


def _eligible() -> ColumnElement[bool]:
    """WHERE clause: pending and no earlier pending row of the same order key."""
    earlier = _T.alias("earlier")
    blocked = exists().where(
        earlier.c.order_key == _T.c.order_key,
        earlier.c.status == HL7_PENDING,
        earlier.c.id < _T.c.id,
    )
    return (_T.c.status == HL7_PENDING) & ~blocked


@functools.cache
def _claim_statement(dialect: str) -> Select[int, int, str, str, int]:
    # Built once: constructing the aliased subquery costs more than running it.
    stmt = (
        select(_T.c.id, _T.c.ecg_id, _T.c.control_id, _T.c.payload, _T.c.attempts)
        .where(_eligible(), _T.c.next_attempt_at <= bindparam("now", type_=_T.c.next_attempt_at.type))
        .order_by(_T.c.id)
        .limit(bindparam("limit"))
    )
    if dialect == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=_T)
    return stmt


#: The claim of one row (executemany: one parameter set per claimed row).
_CLAIM = (
    update(_T)
    .where(_T.c.id == bindparam("row_id"))
    .values(
        attempts=bindparam("new_attempts"),
        last_attempt_at=bindparam("now", type_=_T.c.last_attempt_at.type),
        next_attempt_at=bindparam("lease_end", type_=_T.c.next_attempt_at.type),
        claim_host=bindparam("host", type_=_T.c.claim_host.type),
        claim_pid=bindparam("pid", type_=_T.c.claim_pid.type),
        claim_started=bindparam("started", type_=_T.c.claim_started.type),
    )
)


@functools.cache
def _due_statement() -> Select[datetime]:
    return select(func.min(_T.c.next_attempt_at)).where(_eligible())


def claim_due(
    session: Session, cfg: Hl7Config, now: datetime, limit: int = BATCH_SIZE, claimer: Claimer | None = None
) -> list[Claimed]:
    """Claim up to ``limit`` due rows, oldest first, at most one per order key
    (the head of each key), and commit the claim.  ``claimer`` (normally
    :func:`~gateway.store.claimer.this_process`) is recorded with each claim,
    so that the claim is released at once if this process dies."""
    host, pid, started = (claimer.host, claimer.pid, claimer.started) if claimer else (None, None, None)
    lease_end = now + timedelta(seconds=lease_seconds(cfg))
    with session.begin():
        conn = session.connection()
        rows = conn.execute(_claim_statement(conn.dialect.name), {"now": now, "limit": limit}).all()
        claimed = [Claimed(row.id, row.ecg_id, row.control_id, row.payload, row.attempts + 1) for row in rows]
        if claimed:
            conn.execute(
                _CLAIM,
                [
                    {
                        "row_id": c.id,
                        "new_attempts": c.attempts,
                        "now": now,
                        "lease_end": lease_end,
                        "host": host,
                        "pid": pid,
                        "started": started,
                    }
                    for c in claimed
                ],
            )
    return claimed


def seconds_until_due(session: Session, now: datetime) -> float | None:
    """Seconds until the next unblocked pending row is due (None: no such row)."""
    with session.begin():
        nxt = session.connection().scalar(_due_statement())
    if nxt is None:
        return None
    return max((as_utc(nxt) - now).total_seconds(), 0.0)


@dataclass
class _Outcome:
    """The columns of one claimed row that recording its outcome reads and
    writes (a plain record: written back with one UPDATE per row)."""

    id: int
    ecg_id: int
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    ack: str | None
    delivered_at: datetime | None


_OUTCOME_COLUMNS = (
    _T.c.id,
    _T.c.ecg_id,
    _T.c.status,
    _T.c.attempts,
    _T.c.next_attempt_at,
    _T.c.last_error,
    _T.c.ack,
    _T.c.delivered_at,
)
#: Writes one recorded outcome and ends its claim (executemany).
_RECORD: Update = (
    update(_T)
    .where(_T.c.id == bindparam("row_id"))
    .values(
        status=bindparam("new_status", type_=_T.c.status.type),
        attempts=bindparam("new_attempts", type_=_T.c.attempts.type),
        next_attempt_at=bindparam("new_next_attempt_at", type_=_T.c.next_attempt_at.type),
        last_error=bindparam("new_last_error", type_=_T.c.last_error.type),
        ack=bindparam("new_ack", type_=_T.c.ack.type),
        delivered_at=bindparam("new_delivered_at", type_=_T.c.delivered_at.type),
        claim_host=None,
        claim_pid=None,
        claim_started=None,
    )
)


def record_results(
    session: Session, outcomes: list[tuple[Claimed, SendResult | None]], cfg: Hl7Config, now: datetime
) -> dict[int, str]:
    """Store the outcome of each claimed row in one transaction (None = not
    sent: the claim is undone).  Returns {id: new status}; rows that are no
    longer ours (lease lost, deleted) are left alone."""
    if not outcomes:
        return {}
    by_id = {c.id: (c, r) for c, r in outcomes}
    stmt = select(*_OUTCOME_COLUMNS).where(_T.c.id.in_(list(by_id))).with_for_update()
    out: dict[int, str] = {}
    failures: list[str] = []
    with session.begin():
        conn = session.connection()
        updates = []
        for fields in conn.execute(stmt).all():
            row = _Outcome(*fields)
            claimed, result = by_id[row.id]
            if row.attempts != claimed.attempts:
                log.warning("hl7 message %s: outcome dropped, the row changed meanwhile", row.id)
                continue
            failure = _apply(row, result, cfg, now)
            if failure is not None:
                failures.append(failure)
            out[row.id] = row.status
            updates.append(
                {
                    "row_id": row.id,
                    "new_status": row.status,
                    "new_attempts": row.attempts,
                    "new_next_attempt_at": row.next_attempt_at,
                    "new_last_error": row.last_error,
                    "new_ack": row.ack,
                    "new_delivered_at": row.delivered_at,
                }
            )
        if updates:
            conn.execute(_RECORD, updates)  # the claim ends with its outcome
        if failures:  # the queue's state read in this transaction: these rows already count as failed
            state = outbox_snapshot(session).describe()
            for failure in failures:
                log.warning("%s; %s", failure, state)
    return out


def _apply(row: _Outcome, result: SendResult | None, cfg: Hl7Config, now: datetime) -> str | None:
    """Apply one outcome to ``row``; returns the WARNING line of a message that
    failed now (the caller adds the queue's state), else None."""
    if result is None:  # claimed but not sent (stop, link down, lease margin)
        row.attempts -= 1
        row.next_attempt_at = now
        return None
    if result.connect_failed:  # the message never left: not an attempt; the sender backs off as a whole
        row.attempts -= 1
        row.next_attempt_at = now
        if row.status == HL7_PENDING:
            row.last_error = result.detail
        return None
    if result.outcome == "unsendable":  # failed the last check before framing: never sent, never retried
        if row.status == HL7_PENDING:
            row.status, row.last_error = HL7_FAILED, result.detail
            return f"hl7 message {row.id} (ecg {row.ecg_id}) failed: {result.detail}"
        return None
    if result.ack is not None:
        row.ack = result.ack
    if result.outcome == "accepted":
        row.delivered_at = now
        if row.status == HL7_PENDING:  # a row superseded meanwhile stays superseded
            row.status = HL7_DELIVERED
            row.last_error = None
        log.info("hl7 message %s (ecg %s) delivered, attempt %s", row.id, row.ecg_id, row.attempts)
        return None
    if row.status != HL7_PENDING:
        return None
    row.last_error = result.detail
    if result.outcome == "error" and row.attempts >= cfg.max_attempts:
        row.status = HL7_FAILED
        return f"hl7 message {row.id} (ecg {row.ecg_id}) failed after {row.attempts} attempts: {_loggable(result)}"
    delay = backoff_delay(row.attempts, cfg)
    row.next_attempt_at = now + timedelta(seconds=delay)
    # INFO: the link watch logs the state change (down, rejecting) once, not every retry
    log.info(
        "hl7 message %s (ecg %s) attempt %s: %s; retry in %.1f s",
        row.id,
        row.ecg_id,
        row.attempts,
        _loggable(result),
        delay,
    )
    return None


def _loggable(result: SendResult) -> str:
    """The receiver's error text may quote patient data: logs get the code only
    (the full text is in ``last_error``, shown by ``hl7 show``)."""
    if result.outcome in ("error", "reject"):
        return result.detail.split(":", 1)[0] + " (details: ecg-gateway hl7 show)"
    return result.detail


def send_batch(
    client: MllpClient, batch: list[Claimed], cfg: Hl7Config, stop: threading.Event
) -> list[tuple[Claimed, SendResult | None]]:
    """Send claimed rows in order over one connection.  After a transport
    failure, a stop request, or when the lease margin is used up, the rest is
    returned unsent (None) so its claim is undone."""
    started = time.monotonic()
    outcomes: list[tuple[Claimed, SendResult | None]] = []
    halted = False
    for claimed in batch:
        # Start a send only while the lease still covers a full worst-case attempt.
        if halted or stop.is_set() or time.monotonic() - started > LEASE_MARGIN_S:
            outcomes.append((claimed, None))
            continue
        codec = payload_codec(claimed.payload)
        try:
            data = claimed.payload.encode(codec)
        except UnicodeEncodeError as exc:  # never raised for a built message; one bad row must not stop the sender
            result = SendResult(
                "unsendable", f"not sent: the message cannot be encoded as {codec} (character {exc.start})"
            )
        else:
            result = client.send(data, claimed.control_id, codec)
        outcomes.append((claimed, result))
        halted = result.outcome == "transport"
    return outcomes


def release_stale_claims(session: Session, now: datetime) -> int:
    """SQLite only (one gateway process by design): rows claimed by a previous
    run that died mid-send, and rows waiting out a backoff, become due now,
    so a restart resumes at once.  On PostgreSQL another live process may
    hold those leases, so they are left to expire (but the claims of a dead
    process on this host are released: ``deliver.claims``)."""
    if session.get_bind().dialect.name != "sqlite":
        return 0
    with session.begin():
        result = session.execute(
            update(Hl7Message)
            .where(Hl7Message.status == HL7_PENDING, Hl7Message.next_attempt_at > now)
            .values(next_attempt_at=now)
        )
    return cast(CursorResult[Any], result).rowcount or 0


def make_client(cfg: Hl7Config) -> MllpClient:
    ctx = make_ssl_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key) if cfg.tls else None
    return MllpClient(cfg.host, cfg.port, cfg.connect_timeout, cfg.ack_timeout, ctx, keep_open=cfg.keep_connection_open)


def run_sender(
    session_factory: Callable[[], Session],
    cfg: Hl7Config,
    stop: threading.Event,
    wake: threading.Event | None = None,
) -> None:
    """Deliver the outbox until ``stop`` is set (meant to run in a thread).

    ``wake`` (optional) is set by whoever enqueues, to skip the idle wait
    (set it after ``stop`` too, for an immediate exit).
    While the receiver cannot be reached, the sender backs off as a whole
    (capped exponential backoff) and no message is charged an attempt, so
    ``attempts`` counts real sends and hours of downtime do not use up
    ``max_attempts``.
    """
    if not cfg.enabled:
        log.info("hl7 sender disabled")
        return
    client = make_client(cfg)
    claimer = this_process()
    waiter = wake if wake is not None else stop
    link_failures = 0
    watch = Hl7Watch(cfg, session_factory)  # link state and failed messages, for the log and /healthz
    watch.register()
    watcher = threading.Thread(target=watch.run, args=(stop,), name="hl7-watch", daemon=True)
    watcher.start()
    log.info("hl7 sender started: %s:%s%s", cfg.host, cfg.port, " (TLS)" if cfg.tls else "")
    try:
        # a process on this host that died mid-send (kill -9, power loss): its messages are due now
        release_dead_outbox_claims(session_factory, Hl7Message, claimer)
        with session_factory() as session:
            if released := release_stale_claims(session, utcnow()):
                log.info("hl7 sender: %s waiting message(s) due now (restart)", released)
    except Exception:
        log.exception("hl7 sender: could not release stale claims")
    # Outcomes of a batch that was sent but could not be recorded (the database
    # went away between the send and the write): recorded first once it answers,
    # so an ACKed message is not sent again when its lease runs out.
    unrecorded: list[tuple[Claimed, SendResult | None]] = []

    def record(session: Session, outcomes: list[tuple[Claimed, SendResult | None]]) -> None:
        nonlocal unrecorded
        unrecorded = outcomes
        with watch.recording() as failed_here:  # failures logged by _apply, not again by the watch
            statuses = record_results(session, outcomes, cfg, utcnow())
            failed_here.update(i for i, st in statuses.items() if st == HL7_FAILED)
        unrecorded = []

    next_dead_check = time.monotonic() + DEAD_CLAIM_CHECK_S
    try:
        while not stop.is_set():
            try:
                if time.monotonic() >= next_dead_check:  # a sibling process on this host was killed
                    next_dead_check = time.monotonic() + DEAD_CLAIM_CHECK_S
                    release_dead_outbox_claims(session_factory, Hl7Message, claimer)
                if unrecorded:
                    with session_factory() as session:
                        record(session, unrecorded)
                    log.info("hl7 sender: recorded the outcomes of the batch sent before the database error")
                with session_factory() as session:
                    batch = claim_due(session, cfg, utcnow(), claimer=claimer)
                    if not batch:
                        due = seconds_until_due(session, utcnow())
                        if due is None:
                            client.close()  # nothing queued: do not hold the receiver's connection
                        _wait(waiter, stop, IDLE_POLL_S if due is None else min(max(due, 0.01), IDLE_POLL_S))
                        continue
                    outcomes = send_batch(client, batch, cfg, stop)
                    record(session, outcomes)
                watch.link_result(outcomes)
            except Exception:  # e.g. the database briefly unavailable: keep the thread alive
                log.exception("hl7 sender: unexpected error; retrying")
                client.close()
                _wait(waiter, stop, IDLE_POLL_S)
                continue
            if any(r is not None and r.connect_failed for _, r in outcomes):
                link_failures += 1
                _wait(stop, stop, backoff_delay(link_failures, cfg))
            else:
                link_failures = 0
    finally:
        client.close()
        watch.unregister()
        watch.poke()
        watcher.join(5)
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
