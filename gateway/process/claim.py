"""Claiming stored ECGs for processing, safely across processes.

On PostgreSQL several gateway processes share one database: a claim is
``SELECT ... FOR UPDATE SKIP LOCKED`` plus a lease (``lease_expires_at``), so
two workers never take the same row, and a row whose worker died becomes
claimable again when its lease runs out.  On SQLite (one process) the same
statements run; SQLite ignores ``FOR UPDATE`` and serialises writers.

The outcome is written only while the claim still holds (``finish_claim``
checks ``claimed_by``), so an ECG whose lease expired and was taken over is
never written twice; the unique ``predictions.ecg_id`` backs that up.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.store.models import FAILED, PROCESSING, RECEIVED, EcgInstance


def _now() -> datetime:
    return datetime.now(timezone.utc)


def claim_batch(session_factory: sessionmaker[Session], worker_id: str, limit: int, lease_seconds: int,
                max_attempts: int) -> list[int]:
    """Claim up to ``limit`` ECGs that are waiting (or whose lease ran out).

    Returns the claimed ids in arrival order.  A row whose attempts are used up
    (e.g. it crashed the process every time) is marked ``failed`` instead.
    """
    now = _now()
    waiting = or_(
        # received and not backing off after an error
        and_(EcgInstance.status == RECEIVED,
             or_(EcgInstance.lease_expires_at.is_(None), EcgInstance.lease_expires_at <= now)),
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
        claimed: list[int] = []
        for ecg_id, attempts, status in rows:
            if attempts >= max_attempts:
                # Every earlier attempt ended without an outcome (worker killed
                # or crashed): stop retrying so one poison ECG cannot loop.
                session.execute(
                    update(EcgInstance).where(EcgInstance.id == ecg_id, EcgInstance.attempts == attempts, waiting).values(
                        status=FAILED, claimed_by=None, lease_expires_at=None, updated_at=now,
                        error=(f"gave up after {attempts} attempts"
                               + (" (a worker stopped while processing it)" if status == PROCESSING else "")),
                    )
                )
                continue
            # Compare-and-set: the row must still be waiting with the attempts we
            # read.  PostgreSQL's row lock already guarantees it; on SQLite
            # (no FOR UPDATE) this is what keeps two claimers apart.
            result = session.execute(
                update(EcgInstance)
                .where(EcgInstance.id == ecg_id, EcgInstance.attempts == attempts, waiting)
                .values(
                    status=PROCESSING, claimed_by=worker_id, attempts=attempts + 1, updated_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                )
            )
            if result.rowcount == 1:
                claimed.append(ecg_id)
    return claimed


def still_claimed(session: Session, ecg_id: int, worker_id: str) -> EcgInstance | None:
    """Lock and return the row if this worker still holds its claim."""
    return session.execute(
        select(EcgInstance)
        .where(EcgInstance.id == ecg_id, EcgInstance.status == PROCESSING, EcgInstance.claimed_by == worker_id)
        .with_for_update()
    ).scalar_one_or_none()


def release_all_claims(session_factory: sessionmaker[Session]) -> int:
    """Single-process start-up recovery (SQLite): put every mid-claim row back.

    Only safe when no other process can be working on the database.
    """
    with session_factory() as session, session.begin():
        result = session.execute(
            update(EcgInstance).where(EcgInstance.status == PROCESSING).values(
                status=RECEIVED, claimed_by=None, lease_expires_at=None, updated_at=_now())
        )
        return result.rowcount or 0
