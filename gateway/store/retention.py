"""Retention: remove finished ECGs older than a limit, rows and spool files together.

A crash at any point leaves no row without its file and no file without its
row, as ``db check-spool`` sees them.  Each batch goes in three steps:

1. mark: one UPDATE sets ``pruning_since`` on the chosen rows (committed);
2. files: each marked row's spool file is removed (its folder fsynced);
3. rows: the marked rows, their predictions, HL7 messages and PACS objects are deleted in one
   transaction, with one audit row saying what went.

A marked row may have lost its file (a crash in step 2 or 3): ``check-spool``
counts it as mid-prune, not missing, and the next prune (``serve`` prunes
once a day, and ``db prune``) finishes it first.

What is kept: the audit log; ECGs still waiting or in processing; ECGs with an
HL7 message or a PACS object not yet delivered; and every version of a SOP Instance UID while
any version is kept (the receive path numbers versions from the stored ones).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Row, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.orm.util import AliasedClass

from gateway.store.models import (
    FAILED,
    HL7_PENDING,
    PACS_PENDING,
    PROCESSED,
    REJECTED,
    AuditLog,
    Confirmation,
    EcgInstance,
    Hl7Message,
    PacsMessage,
    Prediction,
)
from gateway.store.spool import Spool
from gateway.timeutil import as_utc, utcnow

log = logging.getLogger("gateway.store")

#: Statuses after which nothing more happens to an ECG by itself.
FINAL = (PROCESSED, REJECTED, FAILED)
#: Rows per batch (one mark, one delete transaction).
BATCH = 500
#: ``serve`` prunes at start and then this often.
INTERVAL_S = 24 * 3600.0


@dataclass
class PruneResult:
    """What one prune removed (or, with ``dry_run``, would remove)."""

    cutoff: datetime
    dry_run: bool
    ecgs: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    predictions: int = 0
    hl7_messages: int = 0
    pacs_messages: int = 0
    files: int = 0
    file_bytes: int = 0
    #: Rows past the limit that stay: in progress, HL7 or PACS not delivered, or a newer version kept.
    kept: int = 0
    #: Files named by pruned rows but outside the spool folder: left in place.
    outside_spool: int = 0
    #: One line per ECG (id, SOP Instance UID, status, received, file); no PHI.
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items())) or "none"
        return (
            f"{verb} {self.ecgs} ECG(s) received before {self.cutoff.isoformat(timespec='seconds')} "
            f"({statuses}), {self.predictions} prediction(s), {self.hl7_messages} HL7 message(s), "
            f"{self.pacs_messages} PACS object(s), {self.files} spool file(s) "
            f"({self.file_bytes / 2**20:.1f} MB); kept {self.kept} older ECG(s) still in progress, "
            f"awaiting HL7 or PACS delivery, or with a newer version; audit log kept"
            + (f"; {self.outside_spool} file(s) outside the spool folder left in place" if self.outside_spool else "")
        )


def _prunable(ecg: type[EcgInstance] | AliasedClass[EcgInstance], cutoff: datetime) -> ColumnElement[bool]:
    """SQL: this row alone may go (old enough, finished, nothing left to deliver)."""
    return and_(
        ecg.received_at < cutoff,
        ecg.status.in_(FINAL),
        ~exists().where(Hl7Message.ecg_id == ecg.id, Hl7Message.status == HL7_PENDING),
        ~exists().where(PacsMessage.ecg_id == ecg.id, PacsMessage.status == PACS_PENDING),
    )


def _candidates(cutoff: datetime) -> ColumnElement[bool]:
    """SQL: rows to prune: prunable, and so is every other version of their UID
    (rows refused without a usable UID stand alone)."""
    other = aliased(EcgInstance)
    return and_(
        _prunable(EcgInstance, cutoff),
        or_(
            EcgInstance.sop_instance_uid == "",
            ~exists().where(
                other.sop_instance_uid == EcgInstance.sop_instance_uid,
                other.id != EcgInstance.id,
                ~_prunable(other, cutoff),
            ),
        ),
    )


def prune(
    session_factory: sessionmaker[Session],
    spool_dir: str | Path,
    older_than_days: int,
    *,
    dry_run: bool = False,
    actor: str = "retention",
    now: datetime | None = None,
    list_rows: bool = False,
    batch: int = BATCH,
    stop: threading.Event | None = None,
) -> PruneResult:
    """Remove finished ECGs received more than ``older_than_days`` days ago, with
    their spool files, predictions and HL7 messages (see the module docstring).
    Rows a crashed earlier prune marked are finished first, whatever their age.
    ``stop`` ends the work between batches (what is left waits for the next prune)."""
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    cutoff = (now or utcnow()) - timedelta(days=older_than_days)
    result = PruneResult(cutoff=cutoff, dry_run=dry_run)
    spool = Spool(Path(spool_dir))
    if dry_run:
        with session_factory() as s:
            past = s.scalar(select(func.count()).select_from(EcgInstance).where(EcgInstance.received_at < cutoff)) or 0
            rows = s.execute(
                select(
                    EcgInstance.id,
                    EcgInstance.sop_instance_uid,
                    EcgInstance.status,
                    EcgInstance.received_at,
                    EcgInstance.spool_path,
                    EcgInstance.size_bytes,
                )
                .where(or_(_candidates(cutoff), EcgInstance.pruning_since.is_not(None)))
                .order_by(EcgInstance.id)
            ).all()
            ids = [r.id for r in rows]
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                result.predictions += (
                    s.scalar(select(func.count()).select_from(Prediction).where(Prediction.ecg_id.in_(chunk))) or 0
                )
                result.hl7_messages += (
                    s.scalar(select(func.count()).select_from(Hl7Message).where(Hl7Message.ecg_id.in_(chunk))) or 0
                )
                result.pacs_messages += (
                    s.scalar(select(func.count()).select_from(PacsMessage).where(PacsMessage.ecg_id.in_(chunk))) or 0
                )
        for r in rows:
            _count(result, r, list_rows)
            path = spool.resolve(r.spool_path)
            if path.is_file():
                result.files += 1
                result.file_bytes += path.stat().st_size
        result.kept = past - sum(1 for r in rows if r.received_at is not None and as_utc(r.received_at) < cutoff)
        return result

    while not (stop is not None and stop.is_set()):
        marked = _mark(session_factory, cutoff, batch)
        if not marked:
            break
        _remove_files(session_factory, spool, marked, result)
        _delete_rows(session_factory, marked, result, actor, older_than_days, list_rows)
    with session_factory() as s:
        result.kept = (
            s.scalar(select(func.count()).select_from(EcgInstance).where(EcgInstance.received_at < cutoff)) or 0
        )
    if result.ecgs:
        log.info("retention: %s", result.summary())
    return result


def _count(result: PruneResult, row: Row[*tuple[Any, ...]], list_rows: bool) -> None:
    """Count ``row`` (id, sop_instance_uid, status, received_at, spool_path, ...) into ``result``."""
    result.ecgs += 1
    result.by_status[row.status] += 1
    if list_rows:
        result.lines.append(
            f"ECG id={row.id} sop={row.sop_instance_uid or '-'} {row.status} "
            f"received {as_utc(row.received_at).isoformat(timespec='seconds')} file {row.spool_path}"
        )


def _mark(session_factory: sessionmaker[Session], cutoff: datetime, batch: int) -> list[int]:
    """Step 1: the ids of up to ``batch`` rows marked for pruning (rows marked by an
    earlier, interrupted prune come first)."""
    with session_factory() as s, s.begin():
        left = s.scalars(
            select(EcgInstance.id).where(EcgInstance.pruning_since.is_not(None)).order_by(EcgInstance.id).limit(batch)
        ).all()
        if left:
            return list(left)
        ids = s.scalars(select(EcgInstance.id).where(_candidates(cutoff)).order_by(EcgInstance.id).limit(batch)).all()
        if not ids:
            return []
        # The conditions again in the UPDATE: a row resent or requeued meanwhile stays.
        s.execute(
            update(EcgInstance)
            .where(EcgInstance.id.in_(ids), _candidates(cutoff))
            .values(pruning_since=utcnow())
            .execution_options(synchronize_session=False)
        )
    with session_factory() as s:
        return list(
            s.scalars(select(EcgInstance.id).where(EcgInstance.id.in_(ids), EcgInstance.pruning_since.is_not(None)))
        )


def _remove_files(session_factory: sessionmaker[Session], spool: Spool, ids: list[int], result: PruneResult) -> None:
    """Step 2: the marked rows' files (a file another, unmarked row still names stays)."""
    with session_factory() as s:
        paths = s.scalars(select(EcgInstance.spool_path).where(EcgInstance.id.in_(ids))).all()
        # a row from before migration 0009 may name the same file by its absolute path
        forms = {form for p in paths for form in spool.stored_forms(p)}
        shared = set(
            s.scalars(
                select(EcgInstance.spool_path).where(
                    EcgInstance.spool_path.in_(forms), EcgInstance.pruning_since.is_(None)
                )
            )
        )
    kept = {spool.resolve(p) for p in shared}
    remove = []
    for path in map(spool.resolve, paths):
        if path in kept:
            continue
        if not spool.contains(path):
            # Only the spool is ours to delete from (a database restored elsewhere may name
            # absolute paths of another machine): the file stays, the row goes.
            log.warning("retention: %s is not under the spool folder %s: file left in place", path, spool.root)
            result.outside_spool += 1
            continue
        remove.append(path)
    files, size = spool.remove_files(remove)
    result.files += files
    result.file_bytes += size


def _delete_rows(
    session_factory: sessionmaker[Session], ids: list[int], result: PruneResult, actor: str, days: int, list_rows: bool
) -> None:
    """Step 3: the marked rows and what hangs on them, with one audit row, in one transaction."""
    with session_factory() as s, s.begin():
        # Locked (PostgreSQL): a second pruner finishing the same rows waits, then finds them gone.
        rows = s.execute(
            select(
                EcgInstance.id,
                EcgInstance.sop_instance_uid,
                EcgInstance.status,
                EcgInstance.received_at,
                EcgInstance.spool_path,
            )
            .where(EcgInstance.id.in_(ids), EcgInstance.pruning_since.is_not(None))
            .with_for_update()
        ).all()
        gone = [r.id for r in rows]
        if not gone:
            return
        # Resends point at earlier messages of the same ECG: unlink them, then delete.
        s.execute(
            update(Hl7Message)
            .where(Hl7Message.ecg_id.in_(gone), Hl7Message.resend_of.is_not(None))
            .values(resend_of=None)
            .execution_options(synchronize_session=False)
        )
        s.execute(delete(Confirmation).where(Confirmation.ecg_id.in_(gone)))  # they name outbox rows
        hl7 = cast(CursorResult[Any], s.execute(delete(Hl7Message).where(Hl7Message.ecg_id.in_(gone)))).rowcount
        pacs = cast(CursorResult[Any], s.execute(delete(PacsMessage).where(PacsMessage.ecg_id.in_(gone)))).rowcount
        preds = cast(CursorResult[Any], s.execute(delete(Prediction).where(Prediction.ecg_id.in_(gone)))).rowcount
        s.execute(delete(EcgInstance).where(EcgInstance.id.in_(gone)))
        batch = PruneResult(cutoff=result.cutoff, dry_run=False)
        for r in rows:
            _count(batch, r, list_rows)
        s.add(
            AuditLog(
                actor=actor,
                action="prune",
                target=f"ecgs:{min(gone)}-{max(gone)}",
                detail={
                    "older_than_days": days,
                    "cutoff": result.cutoff.isoformat(),
                    "ecgs": len(gone),
                    "by_status": dict(batch.by_status),
                    "predictions": preds,
                    "hl7_messages": hl7,
                    "pacs_messages": pacs,
                },
            )
        )
    result.ecgs += batch.ecgs
    result.by_status.update(batch.by_status)
    result.lines += batch.lines
    result.predictions += preds
    result.hl7_messages += hl7
    result.pacs_messages += pacs


def run_daily(
    session_factory: sessionmaker[Session],
    spool_dir: str | Path,
    days: int,
    stop: threading.Event,
    interval_s: float = INTERVAL_S,
    on_error: Callable[[Exception], None] | None = None,
) -> None:
    """``serve``'s retention loop: prune now, then every ``interval_s`` until ``stop``."""
    log.info("retention: keeping %d day(s); pruning now and every %.0f h", days, interval_s / 3600)
    while not stop.is_set():
        try:
            prune(session_factory, spool_dir, days, actor="serve:retention", stop=stop)
        except Exception as exc:  # the database may be down: try again next time
            log.exception("retention: prune failed; next attempt in %.0f h", interval_s / 3600)
            if on_error:
                on_error(exc)
        stop.wait(interval_s)
