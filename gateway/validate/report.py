"""The commissioning report: text, HTML (with an inline SVG plot) and JSON,
all rendered from one result dictionary (built by :mod:`gateway.validate.cli`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("precision", "recall", "specificity", "f1")


def fmt(value: float | None, digits: int = 3) -> str:
    """A metric for a table; undefined values show as '-'."""
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_small(value: float | None) -> str:
    """A probability difference: fixed below 1e-3 would hide the order of magnitude."""
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.2e}"


def direct_rows(direct: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the direct-check table (findings, then micro and macro)."""
    header = [
        "finding",
        "thr",
        "TP",
        "FP",
        "FN",
        "TN",
        "prec",
        "recall",
        "spec",
        "F1",
        "paper prec",
        "paper recall",
        "paper spec",
        "paper F1",
        "model.hdf5 F1",
        "dF1 vs paper",
    ]
    rows = []
    for f, m in direct["findings"].items():
        paper = m.get("paper_table2") or {}
        d_f1 = None if m["f1"] is None or "f1" not in paper else m["f1"] - paper["f1"]
        rows.append(
            [
                f,
                f"{direct['thresholds'][f]:g}",
                str(m["tp"]),
                str(m["fp"]),
                str(m["fn"]),
                str(m["tn"]),
                *(fmt(m[k]) for k in METRICS),
                *(fmt(paper.get(k)) for k in METRICS),
                fmt(m.get("published_model_f1")),
                "-" if d_f1 is None else f"{d_f1:+.3f}",
            ]
        )
    mi = direct["micro"]
    rows.append(
        [
            "micro",
            "",
            str(mi["tp"]),
            str(mi["fp"]),
            str(mi["fn"]),
            str(mi["tn"]),
            *(fmt(mi[k]) for k in METRICS),
            "",
            "",
            "",
            "",
            "",
            "",
        ]
    )
    ma = direct["macro"]
    rows.append(["macro", "", "", "", "", "", *(fmt(ma[k]) for k in METRICS), "", "", "", "", "", ""])
    return header, rows


def roundtrip_rows(rt: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["finding", "max |diff|", "p99 |diff|", "mean |diff|", "flips", "flips beyond margin"]
    rows = [
        [
            f,
            fmt_small(d["max_abs"]),
            fmt_small(d["p99_abs"]),
            fmt_small(d["mean_abs"]),
            str(d["flips"]),
            str(d["flips_beyond_margin"]),
        ]
        for f, d in rt["findings"].items()
    ]
    return header, rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[object]) -> str:
        return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def text_report(result: dict[str, Any]) -> str:
    """The human-readable report as plain text."""
    out = [
        f"ECG gateway commissioning report  {result['generated_at']}  (gateway {result['gateway_version']})",
        f"VERDICT: {result['verdict']}",
        "",
    ]
    model = result["model"]
    out.append("Model: " + ("UNTRAINED DEMO MODEL - metrics are meaningless" if model.get("demo") else ""))
    for f in model["files"]:
        out.append(f"  {f['path']}  sha256 {f['sha256']}" + ("  [demo]" if f.get("demo") else ""))
    if len(model["files"]) > 1:
        out.append(f"  ensemble sha256 {model['model_sha256']} (mean of {len(model['files'])} files)")
    ds = result["dataset"]
    out += [
        "",
        f"Test set: {ds['tracings']} ({ds['exams_used']} of {ds['exams_in_file']} exams)",
        f"  sha256 {ds['tracings_sha256']}",
        f"  gold standard {ds['gold_standard']} sha256 {ds['gold_standard_sha256']}",
        f"  leads read as: {', '.join(ds['lead_order'])} ([normalise] limb_lead_order)",
    ]
    check = ds.get("limb_lead_check")
    if check:
        out.append(
            f"  limb-lead check: columns 0-5 look like {', '.join(check['looks_like'])} -> "
            + ("agrees" if check["agrees"] else "DISAGREES with the configured order")
        )
    out += [
        "",
        "Direct check (model on the tracings as stored, thresholds applied):",
        _table(*direct_rows(result["direct"])),
    ]
    rt = result.get("roundtrip")
    if rt:
        out += [
            "",
            f"DICOM round trip via {rt['target']} ({', '.join(rt['variants'])}; "
            f"16-bit samples at {rt['resolution_uv']:g} uV; quantisation step {rt['resolution_uv'] / 1000:g} mV):",
            "  instances: " + ", ".join(f"{k} {v}" for k, v in sorted(rt["status_counts"].items())),
            f"  compared: {rt['compared']}; findings with a flipped decision: {rt['findings_flipped']}",
        ]
        for label, v in rt.get("per_variant", {}).items():
            out.append(
                f"  {label}: {v['compared']} compared, max |prob diff| {fmt_small(v['max_abs_prob_diff'])}, "
                f"max |input diff| {fmt_small(v['max_abs_input_diff_mv'])} mV"
            )
        if rt["compared"]:
            out.append(_table(*roundtrip_rows(rt)))
        for flip in rt["flips"][:20]:
            out.append(
                f"  flip: tracing {flip['index']} {flip['finding']}: direct {flip['direct']:.4f}, "
                f"gateway {flip['gateway']:.4f}, threshold {flip['threshold']:g}"
                + ("  BEYOND MARGIN" if flip["beyond_margin"] else "")
            )
        for r in rt["not_processed"][:20]:
            out.append(
                f"  tracing {r['index']} ({r['variant']}, {r['duration_s']} s, {r['sop_instance_uid']}): "
                f"{r['status']}: {r['error'] or ''}"
            )
        if len(rt["not_processed"]) > 20:
            out.append(f"  ... and {len(rt['not_processed']) - 20} more (see report.json)")
        out.append(
            f"  pass criteria: no flip where the direct probability is more than {rt['flip_margin']:g} "
            f"from the threshold"
            + (f"; max |diff| <= {rt['max_abs_difference']:g}" if rt["max_abs_difference"] else "")
        )
    if result["failures"]:
        out += ["", "FAILURES:"] + [f"  - {f}" for f in result["failures"]]
    if result["notes"]:
        out += ["", "Notes:"] + [f"  - {n}" for n in result["notes"]]
    return "\n".join(out) + "\n"


def svg_differences(
    abs_diff: np.ndarray, findings: Sequence[str], *, width: int = 640, row_h: int = 34, floor: float = 1e-8
) -> str:
    """A strip plot of |gateway - direct| per finding on a log scale (floor..1);
    zeros are drawn at the floor.  Deterministic jitter keeps it reproducible."""
    left, right, top = 70, 20, 24
    plot_w = width - left - right
    height = top + row_h * len(findings) + 30
    lo, hi = math.log10(floor), 0.0

    def x_of(v: float) -> float:
        return left + plot_w * (min(max(math.log10(max(v, floor)), lo), hi) - lo) / (hi - lo)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img" '
        f'aria-label="absolute probability differences per finding">'
    ]
    for e in range(int(lo), int(hi) + 1):
        x = x_of(10.0**e)
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 24}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 10}" text-anchor="middle">1e{e}</text>')
    rng = np.random.default_rng(0)
    for j, f in enumerate(findings):
        y0 = top + row_h * j + row_h / 2
        parts.append(f'<text x="{left - 8}" y="{y0 + 4:.1f}" text-anchor="end">{html.escape(f)}</text>')
        values = abs_diff[:, j] if abs_diff.size else np.array([])
        jitter = rng.uniform(-row_h * 0.3, row_h * 0.3, size=(values.shape[0],))
        for v, dy in zip(values, jitter, strict=True):
            parts.append(
                f'<circle cx="{x_of(float(v)):.1f}" cy="{y0 + dy:.1f}" r="2" fill="#1f77b4" fill-opacity="0.45"/>'
            )
        if values.size:
            xm = x_of(float(values.max()))
            parts.append(
                f'<line x1="{xm:.1f}" y1="{y0 - row_h * 0.4:.1f}" x2="{xm:.1f}" y2="{y0 + row_h * 0.4:.1f}" '
                f'stroke="#d62728" stroke-width="2"><title>max {values.max():.3g}</title></line>'
            )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{top - 10}" text-anchor="middle">'
        f"|gateway - direct| probability (log scale; red = max)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(result: dict[str, Any], abs_diff: np.ndarray | None, findings: Sequence[str]) -> str:
    """The report as one self-contained HTML page."""
    e = html.escape
    verdict_colour = "#2ca02c" if result["verdict"].startswith("PASS") else "#d62728"
    model = result["model"]
    ds = result["dataset"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ECG gateway commissioning report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f4f4f4}"
        "td:first-child{text-align:left}.demo{color:#d62728;font-weight:bold}</style></head><body>",
        f"<h1>ECG gateway commissioning report</h1><p>{e(result['generated_at'])} &middot; gateway "
        f"{e(result['gateway_version'])}</p>",
        f"<p style='font-size:1.3em;color:{verdict_colour}'><b>{e(result['verdict'])}</b></p>",
        "<h2>Model</h2>",
    ]
    if model.get("demo"):
        parts.append("<p class='demo'>UNTRAINED DEMO MODEL: the metrics below are meaningless.</p>")
    parts.append(
        "<ul>"
        + "".join(f"<li><code>{e(f['path'])}</code> sha256 <code>{e(f['sha256'])}</code></li>" for f in model["files"])
        + "</ul>"
    )
    parts.append(
        f"<h2>Test set</h2><p><code>{e(ds['tracings'])}</code> ({ds['exams_used']} of {ds['exams_in_file']} "
        f"exams), sha256 <code>{e(ds['tracings_sha256'])}</code>. Leads read as "
        f"{e(', '.join(ds['lead_order']))} (<code>[normalise] limb_lead_order</code>).</p>"
    )
    check = ds.get("limb_lead_check")
    if check:
        parts.append(
            f"<p>Limb-lead check: columns 0-5 look like {e(', '.join(check['looks_like']))}: "
            + ("agrees." if check["agrees"] else "<b>disagrees with the configured order</b>.")
            + "</p>"
        )
    parts += [
        "<h2>Direct check</h2><p>The model on the tracings as stored, at the configured thresholds, "
        "against the gold standard, beside the paper's Table 2 and the F1 of the published model.hdf5.</p>",
        _html_table(*direct_rows(result["direct"])),
    ]
    rt = result.get("roundtrip")
    if rt:
        parts.append(
            f"<h2>DICOM round trip</h2><p>Via {e(rt['target'])}; variants {e(', '.join(rt['variants']))}; "
            f"16-bit samples at {rt['resolution_uv']:g} uV. Instances: "
            + e(", ".join(f"{k} {v}" for k, v in sorted(rt["status_counts"].items())))
            + f". Compared: {rt['compared']}; findings with a flipped decision: {rt['findings_flipped']}.</p>"
        )
        if rt.get("per_variant"):
            parts.append(
                _html_table(
                    ["variant", "compared", "max |prob diff|", "max |input diff| mV"],
                    [
                        [
                            k,
                            str(v["compared"]),
                            fmt_small(v["max_abs_prob_diff"]),
                            fmt_small(v["max_abs_input_diff_mv"]),
                        ]
                        for k, v in rt["per_variant"].items()
                    ],
                )
            )
        if rt["compared"]:
            parts.append(_html_table(*roundtrip_rows(rt)))
        if abs_diff is not None and abs_diff.size:
            parts.append(svg_differences(abs_diff, findings))
        if rt["flips"]:
            parts.append(
                _html_table(
                    ["tracing", "finding", "direct", "gateway", "threshold", "beyond margin"],
                    [
                        [
                            str(f["index"]),
                            f["finding"],
                            f"{f['direct']:.4f}",
                            f"{f['gateway']:.4f}",
                            f"{f['threshold']:g}",
                            "yes" if f["beyond_margin"] else "no",
                        ]
                        for f in rt["flips"]
                    ],
                )
            )
        if rt["not_processed"]:
            parts.append(
                _html_table(
                    ["tracing", "variant", "duration s", "SOP Instance UID", "status", "reason"],
                    [
                        [
                            str(r["index"]),
                            r["variant"],
                            str(r["duration_s"]),
                            r["sop_instance_uid"],
                            r["status"],
                            r["error"] or "",
                        ]
                        for r in rt["not_processed"]
                    ],
                )
            )
    if result["failures"]:
        parts.append("<h2>Failures</h2><ul>" + "".join(f"<li>{e(f)}</li>" for f in result["failures"]) + "</ul>")
    if result["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in result["notes"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(
    run_dir: Path, result: dict[str, Any], abs_diff: np.ndarray | None, findings: Sequence[str]
) -> dict[str, Path]:
    """Write report.txt, report.html and report.json into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"text": run_dir / "report.txt", "html": run_dir / "report.html", "json": run_dir / "report.json"}
    paths["text"].write_text(text_report(result), encoding="utf-8")
    paths["html"].write_text(html_report(result, abs_diff, findings), encoding="utf-8")
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return paths
