"""Claiming stored ECGs for processing, safely across processes.

On PostgreSQL several gateway processes share one database: a claim is
``SELECT ... FOR UPDATE SKIP LOCKED`` plus a lease (``lease_expires_at``), so
two workers never take the same row, and a row whose worker died becomes
claimable again when its lease runs out.  On SQLite (one process) the same
statements run; SQLite ignores ``FOR UPDATE`` and serialises writers.

The outcome is written only while the claim still holds (the worker writes
it under :func:`still_claimed`, which locks the rows and checks ``claimed_by``),
so an ECG whose lease expired and was taken over is never written twice; the
unique ``predictions.ecg_id`` backs that up.

Each claim also records who holds it (:class:`gateway.store.claimer.Claimer`:
host, pid and the process's start time; the outbox claims use the same).  A
claim whose holder is *provably* dead - same host, and that pid is not
running or is a different process now - is released at once by
:func:`release_dead_claims` (at start and periodically) instead of waiting
out the lease; claims of other hosts still wait for their lease.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.store.claimer import Claimer, claimer_alive
from gateway.store.claimer import this_process as this_process  # re-exported: the worker's claimer
from gateway.store.models import FAILED, PROCESSING, RECEIVED, EcgInstance
from gateway.timeutil import utcnow

log = logging.getLogger("gateway.process")


def claim_batch(
    session_factory: sessionmaker[Session],
    worker_id: str,
    limit: int,
    lease_seconds: int,
    max_attempts: int,
    claimer: Claimer | None = None,
) -> list[int]:
    """Claim up to ``limit`` ECGs that are waiting (or whose lease ran out).

    Returns the claimed ids in arrival order.  A row whose attempts are used up
    (e.g. it crashed the process every time) is marked ``failed`` instead.
    ``claimer`` (normally :func:`this_process`) is recorded with each claim so
    that :func:`release_dead_claims` can release it if this process dies.
    """
    now = utcnow()
    waiting = or_(
        # received and not backing off after an error
        and_(
            EcgInstance.status == RECEIVED,
            or_(EcgInstance.lease_expires_at.is_(None), EcgInstance.lease_expires_at <= now),
        ),
        # claimed by a worker that did not finish in time
        and_(EcgInstance.status == PROCESSING, EcgInstance.lease_expires_at <= now),
    )
    with session_factory() as session, session.begin():
        rows = session.execute(
            select(EcgInstance.id, EcgInstance.attempts, EcgInstance.status)
            .where(waiting)
            .order_by(EcgInstance.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        fresh = [ecg_id for ecg_id, attempts, _ in rows if attempts < max_attempts]
        for ecg_id, attempts, status in rows:
            if attempts >= max_attempts:
                # Every earlier attempt ended without an outcome (worker killed
                # or crashed): stop retrying so one poison ECG cannot loop.
                session.execute(
                    update(EcgInstance)
                    .where(EcgInstance.id == ecg_id, EcgInstance.attempts == attempts, waiting)
                    .values(
                        status=FAILED,
                        claimed_by=None,
                        lease_expires_at=None,
                        updated_at=now,
                        error=(
                            f"gave up after {attempts} attempts"
                            + (" (a worker stopped while processing it)" if status == PROCESSING else "")
                        ),
                    )
                )
        if not fresh:
            return []
        # One statement for the batch (one per row cost ~1 ms of statement
        # building each).  The rows must still be waiting, with attempts left:
        # PostgreSQL's row lock already guarantees it; on SQLite (no FOR
        # UPDATE) this condition is what keeps two claimers apart.
        claimed = session.scalars(
            update(EcgInstance)
            .where(EcgInstance.id.in_(fresh), EcgInstance.attempts < max_attempts, waiting)
            .values(
                status=PROCESSING,
                claimed_by=worker_id,
                attempts=EcgInstance.attempts + 1,
                updated_at=now,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                claim_host=claimer.host if claimer else None,
                claim_pid=claimer.pid if claimer else None,
                claim_started=claimer.started if claimer else None,
            )
            .returning(EcgInstance.id)
            .execution_options(synchronize_session=False)
        ).all()
    return sorted(claimed)


def still_claimed(session: Session, ecg_ids: Collection[int], worker_id: str) -> dict[int, EcgInstance]:
    """Lock and return (by id) the rows of ``ecg_ids`` this worker still
    holds the claim of (locked in id order, so two such calls cannot deadlock)."""
    rows = session.scalars(
        select(EcgInstance)
        .where(EcgInstance.id.in_(ecg_ids), EcgInstance.status == PROCESSING, EcgInstance.claimed_by == worker_id)
        .order_by(EcgInstance.id)
        .with_for_update()
    )
    return {row.id: row for row in rows}


#: What a released claim becomes: waiting again, its attempts kept (so an ECG
#: that kills its worker every time still ends ``failed`` after max_attempts).
_RELEASED = dict(
    status=RECEIVED, claimed_by=None, lease_expires_at=None, claim_host=None, claim_pid=None, claim_started=None
)


def release_dead_claims(
    session_factory: sessionmaker[Session], me: Claimer | None, include_unknown: bool = False
) -> dict[int, list[int]]:
    """Put back the claims of processes on this host that provably died.

    A claim is released when it was made on ``me.host`` and its pid is not
    running, is a zombie, or now belongs to another process (start time
    differs); claims of live processes and of other hosts are left to their
    leases.  ``include_unknown`` also releases claims without a recorded
    claimer (made before claimers were recorded): only safe when no other
    process can hold claims, i.e. SQLite.  Returns {dead pid: [ECG ids]}
    (pid 0: no claimer recorded) and logs one WARNING per dead process.
    """
    if me is None and not include_unknown:
        return {}
    mine = EcgInstance.claim_host == me.host if me else None
    unknown = EcgInstance.claim_host.is_(None) if include_unknown else None
    where = or_(*(c for c in (mine, unknown) if c is not None))
    released: dict[int, list[int]] = {}
    with session_factory() as session, session.begin():
        rows = session.execute(
            select(
                EcgInstance.id,
                EcgInstance.claimed_by,
                EcgInstance.claim_host,
                EcgInstance.claim_pid,
                EcgInstance.claim_started,
            )
            .where(EcgInstance.status == PROCESSING, where)
            .order_by(EcgInstance.id)
        ).all()
        for ecg_id, claimed_by, host, pid, started in rows:
            if host is not None:
                if me is not None and pid == me.pid and started == me.started:
                    continue  # our own live claim
                if pid is not None and claimer_alive(pid, started):  # no pid: nothing can prove it alive
                    continue
            # Compare-and-set on the claim token: a claim taken over meanwhile stays.
            result = session.execute(
                update(EcgInstance)
                .where(
                    EcgInstance.id == ecg_id,
                    EcgInstance.status == PROCESSING,
                    EcgInstance.claimed_by == claimed_by
                    if claimed_by is not None
                    else EcgInstance.claimed_by.is_(None),
                )
                .values(updated_at=utcnow(), **_RELEASED)
            )
            if cast(CursorResult[Any], result).rowcount == 1:
                released.setdefault(pid or 0, []).append(ecg_id)
    for pid, ids in released.items():
        shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
        if pid:
            log.warning(
                "released %d ECG claim(s) of process %d on this host, which is no longer running "
                "(ids %s): processed again now, not after the lease",
                len(ids),
                pid,
                shown,
            )
        else:
            log.warning("released %d ECG claim(s) left by an earlier run (ids %s)", len(ids), shown)
    return released
