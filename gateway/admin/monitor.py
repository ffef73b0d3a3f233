"""/healthz and /metrics: component states and database gauges, without PHI."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import text

from gateway.admin.queries import hl7_counts, status_counts
from gateway.config import Config
from gateway.deliver.pacs import pacs_counts
from gateway.deliver.watch import DOWN, REJECTING, current_watch, outbox_snapshot
from gateway.store.models import PROCESSING, RECEIVED

#: What serve reports for a component another process runs.
NOT_HERE = "not in this process"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {(str(orig).strip().splitlines() or [''])[0]}"


def _existing(folder: str) -> Path:
    path = Path(folder).resolve()
    while not path.exists():  # the spool may not exist before the first C-STORE; the SCP creates it
        path = path.parent
    return path


def spool_health(cfg: Config) -> dict[str, Any]:
    """Free space against ``dicom.min_free_disk_mb`` (the SCP's own refusal
    threshold) and whether a file can be created there (a dot-file, removed
    at once: not a spool file to ``db check-spool``)."""
    try:
        folder = _existing(cfg.storage.spool_dir)
        free = shutil.disk_usage(folder).free / 1e6
    except OSError as exc:
        return {"ok": False, "writable": False, "error": _first_line(exc)}
    out: dict[str, Any] = {"free_mb": round(free, 1), "min_free_mb": cfg.dicom.min_free_disk_mb}
    try:
        fd, probe = tempfile.mkstemp(prefix=".healthz-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        out["writable"] = True
    except OSError as exc:
        out["writable"], out["error"] = False, _first_line(exc)
    out["ok"] = out["writable"] and free >= cfg.dicom.min_free_disk_mb
    return {"ok": out.pop("ok"), **out}


def hl7_health(cfg: Config, snapshot: Any) -> dict[str, Any]:
    """The ``hl7`` component from an outbox snapshot (``deliver.watch``) and
    the link state of this process's sender; ``problems`` says what makes it
    unhealthy, by the ``[admin]`` thresholds."""
    a = cfg.admin
    watch = current_watch()
    link = watch.status() if watch is not None else None
    out: dict[str, Any] = {
        "link": "disabled" if not cfg.hl7.enabled else link.state if link else NOT_HERE,
        "link_for_s": round(link.for_s, 1) if link and link.for_s is not None else None,
    }
    if link and link.detail:
        out["link_detail"] = link.detail
    problems: list[str] = []
    if snapshot is None:
        problems.append("database unreachable")
    else:
        oldest = snapshot.oldest_pending_s
        out.update(
            pending=snapshot.pending,
            max_pending=a.max_hl7_backlog,
            oldest_pending_s=round(oldest, 1) if oldest is not None else None,
            max_pending_age_s=a.healthz_max_hl7_pending_age_s,
            failed=snapshot.failed,
            fail_on_failed=a.healthz_fail_on_failed_hl7,
        )
        if a.max_hl7_backlog and snapshot.pending > a.max_hl7_backlog:
            problems.append(f"{snapshot.pending} messages pending (max {a.max_hl7_backlog})")
        if a.healthz_max_hl7_pending_age_s and oldest is not None and oldest > a.healthz_max_hl7_pending_age_s:
            problems.append(f"oldest pending message waiting {oldest:.0f} s (max {a.healthz_max_hl7_pending_age_s:g})")
        if a.healthz_fail_on_failed_hl7 and snapshot.failed:
            problems.append(f"{snapshot.failed} failed message(s): see ecg-gateway hl7 list, then hl7 resend")
        if (
            link
            and link.state in (DOWN, REJECTING)
            and snapshot.pending
            and a.healthz_max_hl7_link_down_s
            and (link.for_s or 0) > a.healthz_max_hl7_link_down_s
        ):
            problems.append(
                f"link {link.state} for {link.for_s:.0f} s with messages pending "
                f"(max {a.healthz_max_hl7_link_down_s:g})"
            )
    return {"ok": not problems, **out, "problems": problems}


def pacs_health(cfg: Config, counts: dict[str, int] | None) -> dict[str, Any]:
    """The ``pacs`` component: objects pending and failed; a failed object
    (``max_attempts`` used up) makes it unhealthy until it is resent."""
    if not cfg.pacs.enabled:
        return {"ok": True, "enabled": False}
    if counts is None:
        return {"ok": False, "enabled": True, "error": "database unreachable"}
    out: dict[str, Any] = {
        "ok": not counts["failed"],
        "enabled": True,
        "pending": counts["pending"],
        "failed": counts["failed"],
    }
    if counts["failed"]:
        out["problems"] = [f"{counts['failed']} failed object(s): see ecg-gateway pacs list, then pacs resend"]
    return out


def health_report(
    cfg: Config, session_factory: Callable[[], Any], health: Callable[[], dict[str, bool | str]] | None = None
) -> tuple[bool, dict[str, dict[str, Any]]]:
    """``(healthy, components)``; each component is ``{"ok": bool, ...details}``.

    Checked here: ``database`` (SELECT 1), ``spool`` (free space against
    ``dicom.min_free_disk_mb``, writable) and ``hl7`` (link state of this
    process's sender, pending count and oldest pending age, failed count:
    :func:`hl7_health`).  ``health()`` adds the parts only serve can see (SCP
    listening, model loaded): ``True``/``"ok"`` is healthy, so is ``"not in
    this process"`` (that component runs elsewhere); ``False`` or any other
    text is not (the text is the reason).
    """
    components: dict[str, dict[str, Any]] = {}
    snapshot = pacs = None
    try:
        with session_factory() as session:
            session.execute(text("SELECT 1"))
            snapshot = outbox_snapshot(session)
            pacs = pacs_counts(session) if cfg.pacs.enabled else None
        components["database"] = {"ok": True}
    except Exception as exc:  # any driver error means "unreachable" here
        components["database"] = {"ok": False, "error": _first_line(exc)}
    components["spool"] = spool_health(cfg)
    components["hl7"] = hl7_health(cfg, snapshot)
    components["pacs"] = pacs_health(cfg, pacs)
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
    """Gauges computed at scrape time: database counts, and with ``cfg`` the
    /healthz components (link, oldest pending age, spool space...)."""

    def __init__(
        self,
        session_factory: Callable[[], Any],
        cfg: Config | None = None,
        health: Callable[[], dict[str, bool | str]] | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._cfg = cfg
        self._health = health

    def describe(self) -> list[Metric]:
        return []  # no scrape at registration

    def collect(self) -> Iterator[Metric]:
        if self._cfg is not None:
            yield from self._health_gauges(self._cfg)
        up = GaugeMetricFamily("ecg_gateway_database_up", "1 when the last scrape could read the database")
        try:
            with self._session_factory() as session:
                ecgs, hl7 = status_counts(session), hl7_counts(session)
                pacs = pacs_counts(session)
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
        objects = GaugeMetricFamily(
            "ecg_gateway_pacs_messages", "Objects for PACS (PDF, SR) per status", labels=["status"]
        )
        for status, n in pacs.items():
            objects.add_metric([status], n)
        yield objects

    def _health_gauges(self, cfg: Config) -> Iterator[Metric]:
        _ok, components = health_report(cfg, self._session_factory, self._health)
        healthy = GaugeMetricFamily(
            "ecg_gateway_component_healthy", "1 when the /healthz component is ok", labels=["component"]
        )
        for name, comp in components.items():
            healthy.add_metric([name], 1 if comp["ok"] else 0)
        yield healthy
        hl7 = components["hl7"]
        if hl7["link"] in ("up", "down", "rejecting"):
            link = GaugeMetricFamily(
                "ecg_gateway_hl7_link_up",
                "1 while the HL7 receiver answers (0: down or rejecting); only where the sender runs",
            )
            link.add_metric([], 1 if hl7["link"] == "up" else 0)
            yield link
            since = GaugeMetricFamily(
                "ecg_gateway_hl7_link_state_seconds", "Seconds the HL7 link has been in its state"
            )
            since.add_metric([], hl7["link_for_s"] or 0)
            yield since
        if "oldest_pending_s" in hl7:
            oldest = GaugeMetricFamily(
                "ecg_gateway_hl7_oldest_pending_seconds", "Age of the oldest pending HL7 message (0: none pending)"
            )
            oldest.add_metric([], hl7["oldest_pending_s"] or 0)
            yield oldest
            failed = GaugeMetricFamily("ecg_gateway_hl7_failed_messages", "HL7 messages that failed (need a resend)")
            failed.add_metric([], hl7["failed"])
            yield failed
        spool = components["spool"]
        if "free_mb" in spool:
            free = GaugeMetricFamily("ecg_gateway_spool_free_bytes", "Free space where the spool is")
            free.add_metric([], spool["free_mb"] * 1e6)
            yield free
            floor = GaugeMetricFamily(
                "ecg_gateway_spool_min_free_bytes", "[dicom] min_free_disk_mb: below it C-STOREs are refused"
            )
            floor.add_metric([], spool["min_free_mb"] * 1e6)
            yield floor
        writable = GaugeMetricFamily("ecg_gateway_spool_writable", "1 when a file can be created in the spool")
        writable.add_metric([], 1 if spool.get("writable") else 0)
        yield writable
