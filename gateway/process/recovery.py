"""Start-up recovery: unfinished claims, and spool files and rows that lost each other."""

from __future__ import annotations

import logging

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import Config
from gateway.process.claim import release_dead_claims, this_process
from gateway.store.spool import Spool, SpoolReport

log = logging.getLogger("gateway.process")


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
    report = Spool.from_config(cfg.storage).check(session_factory)
    log_spool_report(report)
    return report
