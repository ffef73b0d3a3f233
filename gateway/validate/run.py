"""One commissioning run: direct check, DICOM round trip, report.

:func:`run_validation` is what ``ecg-gateway validate`` calls; it returns the
result dictionary (the JSON report) and writes the reports under
``<report_dir>/<timestamp>/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway import __version__
from gateway.config import PAPER_THRESHOLDS, Config
from gateway.findings import FINDINGS, TEST_SET_EXAMS
from gateway.timeutil import utcnow
from gateway.validate.dataset import TestSet, check_limb_leads, lead_names, load_test_set
from gateway.validate.metrics import RoundTripComparison, compare_probabilities, direct_metrics
from gateway.validate.report import write_reports
from gateway.validate.roundtrip import (
    RoundTripRun,
    StartedGateway,
    Variant,
    collect_results,
    send_tracings,
    started_gateway,
    wait_listening,
)

log = logging.getLogger("gateway.validate")

SEED_NOTE = (
    "The published model.hdf5 is not the seed behind the paper's Table 2 (its outputs equal "
    "other_seeds/model_6.hdf5): differences of a few F1 points to Table 2 are expected. The column "
    "'model.hdf5 F1' is that file's own F1 at the paper's thresholds, from the authors' published predictions."
)


@dataclass
class ValidateOptions:
    """What the command line decided; everything else comes from the config."""

    data_dir: Path
    report_dir: Path
    roundtrip: bool = True
    limit: int | None = None
    variants: list[Variant] = field(default_factory=lambda: [Variant(400, "SCPECG"), Variant(500, "MDC")])
    resolution_uv: float = 1.0
    #: (host, port, called AE) of a running gateway; None = start one for the run.
    target: tuple[str, int, str] | None = None
    #: The running gateway's database (with target), or the database for the started one.
    database_url: str | None = None
    flip_margin: float = 0.02
    max_abs_difference: float = 0.0
    timeout_s: float = 900.0
    config_path: str | None = None
    #: Notes from before the run (e.g. an unverified download).
    notes: list[str] = field(default_factory=list)


def new_run_dir(report_dir: Path, now: datetime | None = None) -> Path:
    """``<report_dir>/<UTC timestamp>``, suffixed when that already exists."""
    stamp = (now or utcnow()).strftime("%Y%m%dT%H%M%SZ")
    run_dir = report_dir / stamp
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = report_dir / f"{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def per_variant_summary(run: RoundTripRun, direct: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per cart variant: how many compared, max probability and input differences."""
    out: dict[str, dict[str, Any]] = {}
    for label in run.variants:
        rows = [r for r in run.results if r.variant == label and r.probabilities is not None]
        prob = max((float(np.max(np.abs(np.array(r.probabilities) - direct[r.index]))) for r in rows), default=None)
        inputs = [r.input_max_abs_diff_mv for r in rows if r.input_max_abs_diff_mv is not None]
        out[label] = {
            "compared": len(rows),
            "max_abs_prob_diff": prob,
            "max_abs_input_diff_mv": max(inputs) if inputs else None,
        }
    return out


def run_roundtrip(
    cfg: Config,
    opts: ValidateOptions,
    test_set: TestSet,
    gw: StartedGateway | None,
    progress: Callable[[str, int, int], None] | None = None,
) -> RoundTripRun:
    """Send every tracing through a gateway (``gw``, started for the run, or
    ``opts.target``) and collect what it stored."""
    indices = list(range(len(test_set)))
    leads = lead_names(cfg.normalise.limb_lead_order)
    if gw is not None:
        wait_listening(gw)
        host, port, aet, db_url = gw.host, gw.port, gw.ae_title, gw.database_url
        target = f"gateway started for the run on {host}:{port} (log {gw.log_path})"
    else:
        assert opts.target and opts.database_url, "without a started gateway, a target and its database are needed"
        (host, port, aet), db_url = opts.target, opts.database_url
        target = f"running gateway {host}:{port} ({aet})"
    n = len(indices)
    results = send_tracings(
        test_set.tracings,
        indices,
        opts.variants,
        leads,
        opts.resolution_uv,
        host,
        port,
        aet,
        progress=(lambda k: progress("C-STORE", k, n)) if progress else None,
    )
    collect_results(
        db_url,
        results,
        test_set.tracings,
        cfg.normalise.gain,
        timeout=opts.timeout_s,
        progress=(lambda k: progress("gateway results", k, n)) if progress else None,
        spool_dir=gw.spool_dir if gw is not None else cfg.storage.spool_dir,
    )
    return RoundTripRun(
        results=results,
        target=target,
        resolution_uv=opts.resolution_uv,
        variants=[v.label for v in opts.variants],
        gateway_log=str(gw.log_path) if gw is not None else None,
    )


def roundtrip_section(
    run: RoundTripRun,
    direct: np.ndarray,
    cfg: Config,
    opts: ValidateOptions,
) -> tuple[dict[str, Any], RoundTripComparison | None, list[str]]:
    """The report's round-trip section, the comparison, and the failures."""
    failures: list[str] = []
    done = [r for r in run.results if r.probabilities is not None]
    comparison = None
    section: dict[str, Any] = run.as_dict()
    section.update(
        flip_margin=opts.flip_margin,
        max_abs_difference=opts.max_abs_difference,
        compared=len(done),
        findings={},
        flips=[],
        findings_flipped=0,
        quantisation_half_step_mv=opts.resolution_uv / 2000.0,
        per_variant=per_variant_summary(run, direct),
    )
    if done:
        idx = [r.index for r in done]
        comparison = compare_probabilities(
            direct[idx],
            np.array([r.probabilities for r in done]),
            cfg.model.thresholds,
            flip_margin=opts.flip_margin,
            max_abs_difference=opts.max_abs_difference,
            indices=idx,
        )
        section.update(comparison.as_dict())
        failures += comparison.failures
    min_s = cfg.normalise.min_duration_s
    for r in run.results:
        if r.status == "processed":
            continue
        if r.status == "rejected" and r.duration_s < min_s:
            continue  # expected: shorter than [normalise] min_duration_s, reported as a note
        failures.append(
            f"tracing {r.index} ({r.variant}, {r.sop_instance_uid}): {r.status}"
            + (f": {r.error.splitlines()[0]}" if r.error else "")
        )
    if not done:
        failures.append("no tracing came back processed from the gateway")
    return section, comparison, failures


def run_validation(
    cfg: Config,
    opts: ValidateOptions,
    *,
    ensemble: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[dict[str, Any], Path, dict[str, Path]]:
    """Direct check, optional round trip, reports.  Returns (result, run dir,
    report paths).  Raises :class:`~gateway.validate.dataset.DatasetError`
    for an unusable test set and :class:`~gateway.validate.roundtrip.RoundTripError`
    when the round trip cannot run."""
    test_set = load_test_set(opts.data_dir, limit=opts.limit)
    run_dir = new_run_dir(opts.report_dir)
    with ExitStack() as stack:
        gw = None
        if opts.roundtrip and opts.target is None:
            # Started first: it loads its model while the direct check runs.
            db_url = opts.database_url or f"sqlite:///{(run_dir / 'gateway.db').resolve()}"
            gw = stack.enter_context(
                started_gateway(run_dir, db_url, cfg.model.files, cfg.dicom.ae_title, config_path=opts.config_path)
            )
        return _run(cfg, opts, test_set, run_dir, gw, ensemble, progress)


def _run(
    cfg: Config,
    opts: ValidateOptions,
    test_set: TestSet,
    run_dir: Path,
    gw: StartedGateway | None,
    ensemble: Any,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[dict[str, Any], Path, dict[str, Path]]:
    order = list(cfg.normalise.limb_lead_order)
    notes = list(opts.notes)
    if ensemble is None:
        from gateway.infer.runner import load_ensemble

        ensemble = load_ensemble(cfg.model.files, threads=cfg.model.threads, batch_size=cfg.model.batch_size)
    identity = ensemble.identity
    direct = ensemble.predict(test_set.tracings).mean
    thresholds = dict(cfg.model.thresholds)
    metrics = direct_metrics(test_set.gold, direct, thresholds)

    check = check_limb_leads(test_set.tracings[:200], order)
    dataset = {**test_set.source, "lead_order": lead_names(order), "limb_lead_check": check}
    result: dict[str, Any] = {
        "generated_at": utcnow().isoformat(timespec="seconds"),
        "gateway_version": __version__,
        "model": identity,
        "dataset": dataset,
        "thresholds": thresholds,
        "direct": metrics.as_dict(),
        "direct_probabilities_file": str(run_dir / "direct_probabilities.npy"),
    }
    np.save(run_dir / "direct_probabilities.npy", direct.astype(np.float32), allow_pickle=False)

    failures: list[str] = []
    comparison = None
    if opts.roundtrip:
        run = run_roundtrip(cfg, opts, test_set, gw, progress)
        section, comparison, failures = roundtrip_section(run, direct, cfg, opts)
        result["roundtrip"] = section
        short = [r for r in run.results if r.status == "rejected" and r.duration_s < cfg.normalise.min_duration_s]
        if short:
            notes.append(
                f"{len(short)} tracing(s) shorter than [normalise] min_duration_s = "
                f"{cfg.normalise.min_duration_s:g} s were rejected by the gateway as configured "
                f"(tracings {', '.join(str(r.index) for r in short[:10])}{'...' if len(short) > 10 else ''})."
            )
        clipped = [r for r in run.results if r.clipped_samples]
        if clipped:
            notes.append(
                f"{len(clipped)} tracing(s) exceeded the 16-bit range at {opts.resolution_uv:g} uV and were "
                "clipped by the encoder; use a coarser --resolution-uv."
            )
    else:
        result["roundtrip"] = None
        notes.append("The DICOM round trip was skipped (--no-roundtrip).")

    if identity.get("demo"):
        notes.append(
            "An UNTRAINED DEMO MODEL was used: the direct metrics are meaningless; the round trip still "
            "shows whether the DICOM path distorts the model input."
        )
    notes.append(SEED_NOTE)
    if thresholds != PAPER_THRESHOLDS:
        notes.append(
            "The configured thresholds differ from the paper's: the comparison with Table 2 is not like for like."
        )
    if len(test_set) != TEST_SET_EXAMS or test_set.source.get("exams_in_file") != TEST_SET_EXAMS:
        notes.append(
            f"{len(test_set)} exams were used, not the published {TEST_SET_EXAMS}: "
            "the metrics are not comparable with the paper's."
        )
    notes.append(
        f"The file's columns were read as {', '.join(lead_names(order))} ([normalise] limb_lead_order); "
        "the DICOM objects are labelled accordingly."
    )
    if not check["agrees"]:
        notes.append(
            f"WARNING: the signals of limb-lead columns 0-5 look like {', '.join(check['looks_like'])}, not "
            f"the configured {', '.join(order)} (the published file is documented to store aVL, aVF, aVR); "
            "check [normalise] limb_lead_order."
        )
    if cfg.normalise.gain != 1.0:
        notes.append(
            f"[normalise] gain = {cfg.normalise.gain:g}: the gateway scales the signal, the direct check does "
            "not; the round trip shows the effect."
        )
    result["failures"] = failures
    result["notes"] = notes
    verdict = "PASS" if not failures else f"FAIL ({len(failures)} problem{'s' if len(failures) != 1 else ''})"
    if not opts.roundtrip and not failures:
        verdict = "DIRECT CHECK ONLY (round trip skipped)"
    if identity.get("demo"):
        verdict += " - untrained demo model"
    result["verdict"] = verdict
    result["passed"] = not failures
    abs_diff = comparison.abs_diff if comparison is not None else None
    paths = write_reports(run_dir, result, abs_diff, FINDINGS)
    result["reports"] = {k: str(v) for k, v in paths.items()}
    return result, run_dir, paths
