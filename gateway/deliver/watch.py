"""What operators need to see of HL7 delivery: the link, the queue, failures.

:class:`Hl7Watch` belongs to the sender running in this process.  The sender
reports each batch's results (:meth:`Hl7Watch.link_result`); the watch keeps
the link state (``up``: the receiver answers; ``rejecting``: it answers AR;
``down``: no usable answer - connection refused, timeout, broken frame) and
logs ONE line per change, not one per retry.  A message the sender fails
(AE after max_attempts, the last check before framing) gets its WARNING from
the sender, with the reason and the counts; a thread (:meth:`Hl7Watch.run`)
notices outbox rows that became ``failed`` by any other hand (an ORU that
could not be built, another process) and logs a WARNING for them.
/healthz and /metrics read :func:`outbox_snapshot` and :func:`current_watch`.

Log lines carry message and ECG ids, counts and ages, never message text:
an AR/AE text may quote patient data (``ecg-gateway hl7 show ID`` has it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.store.models import HL7_FAILED, HL7_PENDING, Hl7Message
from gateway.timeutil import as_utc, utcnow

if TYPE_CHECKING:
    from gateway.config import Hl7Config
    from gateway.deliver.mllp import SendResult

log = logging.getLogger("gateway.deliver")

UNKNOWN, UP, REJECTING, DOWN = "unknown", "up", "rejecting", "down"
#: Seconds between checks for newly failed messages.
POLL_S = 5.0
#: Ids named in one log line at most.
_SHOWN = 20


@dataclass(frozen=True)
class OutboxSnapshot:
    """The outbox as an operator sees it."""

    pending: int
    #: Seconds since the oldest pending message was queued (None: nothing pending).
    oldest_pending_s: float | None
    failed: int

    def describe(self) -> str:
        """``3 pending (oldest 75 s), 1 failed`` - for log lines."""
        oldest = f" (oldest {self.oldest_pending_s:.0f} s)" if self.oldest_pending_s is not None else ""
        return f"{self.pending} pending{oldest}, {self.failed} failed"


def outbox_snapshot(session: Session, now: datetime | None = None) -> OutboxSnapshot:
    """Pending count, age of the oldest pending message, failed count (one query)."""
    now = now or utcnow()
    pending, oldest, failed = session.execute(
        select(
            func.count(Hl7Message.id).filter(Hl7Message.status == HL7_PENDING),
            func.min(Hl7Message.created_at).filter(Hl7Message.status == HL7_PENDING),
            func.count(Hl7Message.id).filter(Hl7Message.status == HL7_FAILED),
        ).where(Hl7Message.status.in_((HL7_PENDING, HL7_FAILED)))
    ).one()
    age = max((now - as_utc(oldest)).total_seconds(), 0.0) if oldest is not None else None
    return OutboxSnapshot(int(pending or 0), age, int(failed or 0))


@dataclass(frozen=True)
class LinkStatus:
    """The link as last seen by the sender: state, since when, why."""

    state: str
    #: Seconds in this state (None while unknown).
    for_s: float | None
    #: For ``down``: the transport error; for ``rejecting``: the ACK code.
    detail: str | None


_current: Hl7Watch | None = None
_current_lock = threading.Lock()


def current_watch() -> Hl7Watch | None:
    """The watch of the HL7 sender running in this process (None: no sender here)."""
    return _current


class Hl7Watch:
    """Link state and failed-message notices of one sender (see module doc)."""

    def __init__(self, cfg: Hl7Config, session_factory: Callable[[], Session]) -> None:
        self.target = f"{cfg.host}:{cfg.port}"
        self._session_factory = session_factory
        self._lock = threading.Lock()
        self._state, self._since = UNKNOWN, time.monotonic()
        self._detail: str | None = None
        self._failed_ids: set[int] | None = None  # None: not read yet
        self._failed_fingerprint: tuple[int, int, int] | None = None
        self._failed_lock = threading.Lock()
        self._reported: set[int] = set()  # failed ids the sender has logged itself
        self._poke = threading.Event()

    # -- registration -------------------------------------------------------------------------

    def register(self) -> None:
        """Make this the watch /healthz and /metrics of this process read."""
        global _current
        with _current_lock:
            _current = self

    def unregister(self) -> None:
        global _current
        with _current_lock:
            if _current is self:
                _current = None

    # -- link state ---------------------------------------------------------------------------

    def status(self) -> LinkStatus:
        with self._lock:
            state, since, detail = self._state, self._since, self._detail
        return LinkStatus(state, None if state == UNKNOWN else time.monotonic() - since, detail)

    def link_result(self, outcomes: Sequence[tuple[Any, SendResult | None]]) -> None:
        """Update the link state from one batch (the last result that went
        out decides) and log a change once."""
        results = [r for _, r in outcomes if r is not None]
        if not results:
            return
        last = results[-1]
        if last.outcome == "transport":  # incl. an ACK naming another message: nothing gets through
            state, detail = DOWN, last.detail
        elif last.outcome == "reject":
            state, detail = REJECTING, last.detail.split(":", 1)[0]  # the code: AR text may quote PHI
        elif last.ack is not None:
            state, detail = UP, None
        else:
            return  # not an answer from the receiver (e.g. a message refused before sending)
        with self._lock:
            old, since = self._state, self._since
            if state == old:
                self._detail = detail
                return
            self._state, self._since, self._detail = state, time.monotonic(), detail
        self._log_change(old, state, detail, time.monotonic() - since)

    def _snapshot_text(self) -> str:
        try:
            with self._session_factory() as session:
                return outbox_snapshot(session).describe()
        except Exception as exc:  # the log line must not fail with the database
            return f"outbox unreadable: {type(exc).__name__}"

    def _log_change(self, old: str, new: str, detail: str | None, old_for_s: float) -> None:
        queue = self._snapshot_text()
        if new == DOWN:
            log.warning("hl7 link to %s down: %s; %s", self.target, detail, queue)
        elif new == REJECTING:
            log.warning("hl7 receiver %s rejects messages (%s); %s", self.target, detail, queue)
        elif old == UNKNOWN:
            log.info("hl7 link to %s up; %s", self.target, queue)
        else:
            log.warning("hl7 link to %s up again after %.0f s %s; %s", self.target, old_for_s, old, queue)

    # -- failed messages ----------------------------------------------------------------------

    def poke(self) -> None:
        """Check for failed messages now, not at the next poll."""
        self._poke.set()

    @contextmanager
    def recording(self) -> Iterator[set[int]]:
        """Around the sender's record of a batch: the ids it adds to the
        yielded set became failed and were logged by the sender (with the
        reason only it knows), so the watch does not log them again.  Holds
        the check's lock, so no check sees them committed but not yet noted."""
        noted: set[int] = set()
        with self._failed_lock:
            yield noted
            if self._failed_ids is None:  # before the first check: keep them out of its report
                self._reported |= noted
            elif noted:  # known failed from now on (an all-clear follows when they are resent)
                self._failed_ids |= noted
                self._failed_fingerprint = None  # the known set changed: the next check reads the rows

    def check_failed(self) -> list[int]:
        """Log a WARNING for messages that became ``failed`` since the last
        check (the first check reports those already failed); returns their ids."""
        with self._failed_lock:
            return self._check_failed()

    def _check_failed(self) -> list[int]:
        with self._session_factory() as session:
            count, top, total = session.execute(
                select(
                    func.count(Hl7Message.id),
                    func.coalesce(func.max(Hl7Message.id), 0),
                    func.coalesce(func.sum(Hl7Message.id), 0),
                ).where(Hl7Message.status == HL7_FAILED)
            ).one()
            fingerprint = (int(count), int(top), int(total))
            if fingerprint == self._failed_fingerprint:
                return []
            rows = session.execute(
                select(Hl7Message.id, Hl7Message.ecg_id).where(Hl7Message.status == HL7_FAILED).order_by(Hl7Message.id)
            ).all()
            snapshot = outbox_snapshot(session)
        first = self._failed_ids is None
        known = self._failed_ids or set()
        self._failed_ids = {i for i, _ in rows}
        self._failed_fingerprint = fingerprint
        new = [(i, e) for i, e in rows if i not in known and i not in self._reported]
        self._reported -= self._failed_ids
        if new and first:
            log.warning(
                "%d hl7 message(s) failed and wait for an admin (ids %s); %s; "
                "see ecg-gateway hl7 list, resend with ecg-gateway hl7 resend ID",
                len(new),
                _ids(i for i, _ in new),
                snapshot.describe(),
            )
        elif new:
            for msg_id, ecg_id in new[:_SHOWN]:
                log.warning(
                    "hl7 message %s (ecg %s) failed: it will not be sent again without an admin "
                    "(ecg-gateway hl7 show %s; hl7 resend %s); %s",
                    msg_id,
                    ecg_id,
                    msg_id,
                    msg_id,
                    snapshot.describe(),
                )
            if len(new) > _SHOWN:
                log.warning("... and %d more hl7 message(s) failed", len(new) - _SHOWN)
        elif known and not self._failed_ids:
            log.info("no failed hl7 messages any more; %s", snapshot.describe())
        return [i for i, _ in new]

    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        """Check for failed messages every ``interval`` (default POLL_S)
        seconds, and when poked, until ``stop`` is set (poke after setting it
        to end at once)."""
        interval = interval or POLL_S
        while not stop.is_set():
            try:
                self.check_failed()
            except Exception as exc:  # the database briefly away: the sender logs that
                log.debug("hl7 watch: %s", exc)
            self._poke.wait(interval)
            self._poke.clear()


def _ids(ids: Any) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids[:_SHOWN])) + (", ..." if len(ids) > _SHOWN else "")
