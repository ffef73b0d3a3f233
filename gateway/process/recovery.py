"""Start-up recovery: unfinished claims, and spool files and rows that lost each other."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import Config
from gateway.process.claim import release_dead_claims, this_process
from gateway.process.worker import spool_file
from gateway.store.models import EcgInstance

log = logging.getLogger("gateway.process")

#: Names the receive stage uses for files still being written.
_PARTIAL_SUFFIXES = (".tmp", ".part")


@dataclass
class SpoolReport:
    files_without_row: list[str] = field(default_factory=list)
    rows_without_file: list[int] = field(default_factory=list)
    #: Rows a retention prune marked and has not finished (their file may be gone
    #: already); consistent, and the next prune removes them.
    mid_prune: list[int] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.files_without_row or self.rows_without_file)


def check_spool(spool_dir: str | Path, session_factory: sessionmaker[Session]) -> SpoolReport:
    """Compare the spool folder with the rows that point into it."""
    root = Path(spool_dir)
    with session_factory() as session:
        rows = session.execute(select(EcgInstance.id, EcgInstance.spool_path, EcgInstance.pruning_since)).all()
    expected = {spool_file(root, p).resolve(): ecg_id for ecg_id, p, _ in rows}
    report = SpoolReport(mid_prune=sorted(ecg_id for ecg_id, _, marked in rows if marked is not None))
    pruning = set(report.mid_prune)
    for ecg_id_path, ecg_id in expected.items():
        if ecg_id not in pruning and not ecg_id_path.is_file():
            report.rows_without_file.append(ecg_id)
    if root.is_dir():
        for f in sorted(root.rglob("*")):
            if f.is_file() and not f.name.startswith(".") and not f.name.endswith(_PARTIAL_SUFFIXES):
                if f.resolve() not in expected:
                    report.files_without_row.append(str(f))
    report.rows_without_file.sort()
    return report


def log_spool_report(report: SpoolReport, limit: int = 20) -> None:
    for path in report.files_without_row[:limit]:
        log.warning("spool file without a database row (not acknowledged, or the row was lost): %s", path)
    for ecg_id in report.rows_without_file[:limit]:
        log.error("ECG id=%s: its spool file is missing", ecg_id)
    more = len(report.files_without_row) + len(report.rows_without_file) - 2 * limit
    if more > 0:
        log.warning("... and more; run `ecg-gateway db check-spool` for the full list")


def recover_on_start(cfg: Config, session_factory: sessionmaker[Session]) -> SpoolReport:
    """Make unfinished work claimable again and report spool inconsistencies.

    Claims of processes on this host that died (killed, crashed) go back to
    ``received`` now; live claims and other hosts' claims are left to their
    leases.  On SQLite claims recorded without a claimer (older versions) are
    released too, as only one host can use the file.
    """
    sqlite = make_url(cfg.storage.database_url).get_backend_name() == "sqlite"
    release_dead_claims(session_factory, this_process(), include_unknown=sqlite)
    report = check_spool(cfg.storage.spool_dir, session_factory)
    log_spool_report(report)
    return report
