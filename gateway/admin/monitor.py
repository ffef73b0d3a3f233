"""/healthz and /metrics: component states and database gauges, without PHI."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import text

from gateway.admin.queries import hl7_backlog, hl7_counts, status_counts
from gateway.config import Config
from gateway.store.models import PROCESSING, RECEIVED


#: What serve reports for a component another process runs.
NOT_HERE = "not in this process"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {(str(orig).strip().splitlines() or [''])[0]}"


def _free_mb(folder: str) -> float:
    path = Path(folder).resolve()
    while not path.exists():  # the spool may not exist before the first C-STORE
        path = path.parent
    return shutil.disk_usage(path).free / 1e6


def health_report(
    cfg: Config, session_factory: Callable[[], Any], health: Callable[[], dict[str, bool | str]] | None = None
) -> tuple[bool, dict[str, dict[str, Any]]]:
    """``(healthy, components)``; each component is ``{"ok": bool, ...details}``.

    Checked here: database (SELECT 1), spool disk free space against
    ``dicom.min_free_disk_mb``, HL7 backlog (pending messages) against
    ``admin.max_hl7_backlog`` (0 = never unhealthy).  ``health()`` adds the
    parts only serve can see (SCP listening, model loaded): ``True``/``"ok"``
    is healthy, so is ``"not in this process"`` (that component runs
    elsewhere); ``False`` or any other text is not (the text is the reason).
    """
    components: dict[str, dict[str, Any]] = {}
    try:
        with session_factory() as session:
            session.execute(text("SELECT 1"))
            backlog = hl7_backlog(session)
        components["database"] = {"ok": True}
        limit = cfg.admin.max_hl7_backlog
        components["hl7_backlog"] = {"ok": not limit or backlog <= limit, "pending": backlog, "max": limit}
    except Exception as exc:  # any driver error means "unreachable" here
        components["database"] = {"ok": False, "error": _first_line(exc)}
        components["hl7_backlog"] = {"ok": False, "error": "database unreachable"}
    try:
        free = _free_mb(cfg.storage.spool_dir)
        components["spool_disk"] = {"ok": free >= cfg.dicom.min_free_disk_mb, "free_mb": round(free, 1),
                                    "min_free_mb": cfg.dicom.min_free_disk_mb}
    except OSError as exc:
        components["spool_disk"] = {"ok": False, "error": _first_line(exc)}
    if health is not None:
        try:
            states = health()
        except Exception as exc:
            states = {"serve": _first_line(exc)}
        for name, state in states.items():
            ok = state is True or (isinstance(state, str) and (state == "ok" or state.startswith(NOT_HERE)))
            components[name] = {"ok": ok} if isinstance(state, bool) else {"ok": ok, "detail": str(state)}
    return all(c["ok"] for c in components.values()), components


class DatabaseCollector:
    """Gauges computed from the database at scrape time."""

    def __init__(self, session_factory: Callable[[], Any]) -> None:
        self._session_factory = session_factory

    def describe(self) -> list[Metric]:
        return []  # no scrape at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ecg_gateway_database_up", "1 when the last scrape could read the database")
        try:
            with self._session_factory() as session:
                ecgs, hl7 = status_counts(session), hl7_counts(session)
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        per_status = GaugeMetricFamily("ecg_gateway_ecgs", "ECG instances per status", labels=["status"])
        for status, n in ecgs.items():
            per_status.add_metric([status], n)
        yield per_status
        queue = GaugeMetricFamily("ecg_gateway_queue_depth", "ECGs waiting for or in processing")
        queue.add_metric([], ecgs.get(RECEIVED, 0) + ecgs.get(PROCESSING, 0))
        yield queue
        messages = GaugeMetricFamily("ecg_gateway_hl7_messages", "Outbound HL7 messages per status", labels=["status"])
        for status, n in hl7.items():
            messages.add_metric([status], n)
        yield messages
