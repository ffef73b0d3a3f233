"""The one-page 12-lead ECG report as PDF (pure: :class:`ReportData` in, PDF bytes out).

Landscape A4 or US Letter.  Standard print layout, as the web view's SVG
(:mod:`gateway.admin.ecg_svg`): 25 mm/s, 10 mm/mV, three rows of four 2.5 s
panels (I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6) and a 10 s lead II rhythm
strip, a 1 mV calibration pulse at the start of each row.  The grid is drawn
in millimetres of the page (1 mm minor, 5 mm major lines), so a print at
100 % ("actual size", not "fit to page") measures true: 1 s = 25 mm.

Above the tracing: the patient (name, ID, birth date and age, sex), the
recording (time, device, accession), the cart's measurements and statements,
and the AI findings with each probability against its threshold.  Below: the
status line ("AI result, not confirmed by a physician", or "Confirmed by X
at T" once a reader has, with the physician's findings under the AI's), the model identity
(sha256, gateway version).  A result from the untrained demo model carries
a diagonal watermark.

Built with reportlab's canvas (no other dependency than Pillow, which it
already needs); text in the standard Helvetica fonts (Latin-1: other
characters are written as ``?``), so the file embeds no font.
"""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from reportlab import rl_config

from gateway.findings import BY_CODE, FINDINGS
from gateway.report.measurements import KINDS, display_value
from gateway.report.people import birth_and_age, dicom_datetime_text, person_name, sex_text
from gateway.timeutil import as_utc

# Compressed streams stay binary (ASCII85 would make the file a quarter bigger and take ~0.1 s per report).
rl_config.useA85 = 0

MM_PER_S = 25.0
MM_PER_MV = 10.0
PANEL_S = 2.5
STRIP_S = 10.0
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
ROW_MM = 30.0  # 3 mV per row
CAL_MM = 10.0  # left of the tracings: the calibration pulse
GRID_W_MM = CAL_MM + STRIP_S * MM_PER_S  # 260 mm
GRID_H_MM = ROW_MM * (len(LAYOUT) + 1)  # 120 mm
HEADER_MM = 42.0  # patient, cart and AI columns above the grid
#: Page sizes (width, height) in mm, landscape.
PAGES: dict[str, tuple[float, float]] = {"A4": (297.0, 210.0), "letter": (279.4, 215.9)}
#: Shown until a physician over-reads the result (then :func:`confirmed_line`).
UNCONFIRMED = "AI result, not confirmed by a physician"
WATERMARK = "UNTRAINED DEMO MODEL - NOT FOR CLINICAL USE"

# colours (r, g, b in 0..1): light and dark grid lines, their difference is what a reader sees
MINOR_RGB = (0.96, 0.76, 0.76)
MAJOR_RGB = (0.88, 0.45, 0.45)
MINOR_LINE_MM = 0.1
MAJOR_LINE_MM = 0.25
TRACE_LINE_MM = 0.25


class ReportError(ValueError):
    """The report cannot be drawn (names the problem, never PHI)."""


@dataclass(frozen=True)
class ReaderConfirmation:
    """A physician's over-read as the page shows it (``confirmations`` row)."""

    #: "Anna Rossi (D123)": the reader's name and identifier.
    by: str
    #: "2026-01-02 03:04 UTC".
    at: str
    findings: Sequence[str] = ()
    statements: Sequence[str] = ()
    comment: str = ""
    #: The reader changed the AI's findings.
    corrected: bool = False
    version: int = 1


def reader_confirmation(row: Any) -> ReaderConfirmation:
    """A :class:`ReaderConfirmation` from a ``confirmations`` row (or any object with its attributes)."""
    at = as_utc(row.created_at)  # SQLite hands back naive UTC
    who = row.full_name or row.username
    return ReaderConfirmation(
        by=f"{who} ({row.hl7_id})" if row.hl7_id else who,
        at=at.strftime("%Y-%m-%d %H:%M UTC") if at else "",
        findings=tuple(row.findings or ()),
        statements=tuple(row.statements or ()),
        comment=row.comment or "",
        corrected=row.outcome == "corrected",
        version=row.version,
    )


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows; plain values (no database, no files)."""

    ecg_id: int | None
    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None  # DICOM DA
    patient_sex: str | None = None
    acquisition_datetime: str | None = None  # DICOM DT
    accession_number: str | None = None
    manufacturer: str | None = None
    device_model: str | None = None
    device_serial: str | None = None
    sop_instance_uid: str | None = None
    measurements: Mapping[str, Mapping[str, Any]] | None = None
    cart_statements: Sequence[str] = ()
    probabilities: Mapping[str, float] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    findings: Sequence[str] = ()
    quality_flags: Sequence[str] = ()
    model_sha256: str = ""
    gateway_version: str = ""
    demo_model: bool = False
    #: The model input: samples x leads, in mV times ``gain``, at ``fs`` Hz.
    signal: Any = None
    leads: Sequence[str] = ()
    fs: float = 400.0
    gain: float = 1.0
    #: When the AI result was made (shown in the footer): the prediction's time,
    #: so every build of one result gives the same bytes (export, ORU, PACS).
    result_time: str = ""
    #: The physician's over-read; None: the AI result alone, marked not confirmed.
    confirmation: ReaderConfirmation | None = None


def report_data(
    ecg: Any,
    signal: Any,
    leads: Sequence[str],
    fs: float,
    gain: float,
    *,
    prediction: Any = None,
    gateway_version: str | None = None,
    confirmation: Any = None,
) -> ReportData:
    """A :class:`ReportData` from an ECG row and its prediction (``prediction``,
    default ``ecg.prediction``; any objects with those attributes) and its model
    input; ``confirmation``: the ``confirmations`` row the page reports, if any."""
    p = prediction if prediction is not None else ecg.prediction
    if p is None:
        raise ReportError(f"ECG {ecg.id} has no AI result (status {ecg.status})")
    created = as_utc(getattr(p, "created_at", None))  # SQLite hands back naive UTC
    return ReportData(
        ecg_id=ecg.id,
        patient_name=ecg.patient_name,
        patient_id=ecg.patient_id,
        patient_birth_date=ecg.patient_birth_date,
        patient_sex=ecg.patient_sex,
        acquisition_datetime=ecg.acquisition_datetime,
        accession_number=ecg.accession_number,
        manufacturer=ecg.manufacturer,
        device_model=ecg.device_model,
        device_serial=ecg.device_serial,
        sop_instance_uid=ecg.sop_instance_uid,
        measurements=ecg.measurements,
        cart_statements=tuple(ecg.cart_statements or ()),
        probabilities=dict(p.probabilities or {}),
        thresholds=dict(p.thresholds or {}),
        findings=tuple(p.findings or ()),
        quality_flags=tuple(str(f) for f in p.quality_flags or ()),
        model_sha256=p.model_sha256,
        gateway_version=gateway_version or p.gateway_version,
        demo_model=bool(p.demo_model),
        signal=signal,
        leads=tuple(leads),
        fs=fs,
        gain=gain,
        result_time=created.strftime("%Y-%m-%d %H:%M UTC") if created else "",
        confirmation=reader_confirmation(confirmation) if confirmation is not None else None,
    )


def input_scale(normalisation: Mapping[str, Any] | None) -> tuple[float, float]:
    """(sampling rate in Hz, gain) of a model input, from its normalisation
    report (older records may lack them: 400 Hz, gain 1)."""
    n = normalisation or {}
    gain = n.get("gain", 1.0)
    fs = (n.get("resample") or {}).get("to_hz", 400.0)

    def ok(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0

    return (float(fs) if ok(fs) else 400.0), (float(gain) if ok(gain) else 1.0)


def latin1(text: Any) -> str:
    """Text the standard PDF fonts can show: accents folded where Latin-1 lacks
    the letter, control and other characters as ``?``."""
    out = []
    for ch in str(text):
        if ch.isprintable() and ord(ch) < 256:
            out.append(ch)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        out.append(base if base and all(c.isprintable() and ord(c) < 256 for c in base) else "?")
    return "".join(out)


def _recording_span(signal: np.ndarray) -> tuple[int, int]:
    """First and one-past-last sample that is not the model input's zero padding."""
    nonzero = np.flatnonzero(np.any(signal != 0, axis=1))
    if nonzero.size == 0:
        return 0, signal.shape[0]
    return int(nonzero[0]), int(nonzero[-1]) + 1


def build_pdf(data: ReportData, page: str = "A4") -> bytes:
    """The one-page report as PDF bytes (``page``: ``"A4"`` or ``"letter"``,
    both landscape).  Raises :class:`ReportError` when the signal cannot be
    drawn in the 12-lead layout."""
    from reportlab.lib.units import mm
    from reportlab.pdfgen import canvas

    if page not in PAGES:
        raise ReportError(f"page: {page!r}; use {', '.join(PAGES)}")
    signal = np.asarray(data.signal if data.signal is not None else np.zeros((0, 0)))
    column = {name: i for i, name in enumerate(data.leads)}
    if signal.ndim != 2 or signal.shape[1] != len(data.leads) or signal.shape[0] == 0:
        raise ReportError(f"expected a (samples, {len(data.leads)}) signal, got shape {signal.shape}")
    missing = [name for row in LAYOUT for name in row if name not in column]
    if missing:
        raise ReportError(f"leads missing for the 3x4 layout: {', '.join(missing)}")
    if not (data.fs > 0 and data.gain > 0):
        raise ReportError("sampling rate and gain must be positive")

    width, height = PAGES[page]
    buf = io.BytesIO()
    # invariant: no creation time or random id in the file, so the same data give the same bytes
    c = canvas.Canvas(buf, pagesize=(width * mm, height * mm), invariant=1, pageCompression=1)
    c.setTitle("12-lead ECG report" + (f" (gateway ECG {data.ecg_id})" if data.ecg_id is not None else ""))
    c.setAuthor("ECG gateway")
    c.setSubject("12-lead ECG, cart measurements and AI findings")
    c.setCreator(f"ECG gateway {data.gateway_version}".strip())
    c.scale(mm, mm)  # from here on, every coordinate is in millimetres from the bottom left

    left = (width - GRID_W_MM) / 2
    top = height - 8.0
    grid_top = top - HEADER_MM
    grid_bottom = grid_top - GRID_H_MM
    _header(c, data, left, top, grid_top + 2.0)
    _grid(c, left, grid_bottom, GRID_W_MM, GRID_H_MM)
    _tracings(c, data, signal, column, left, grid_top)
    _footer(c, data, left, grid_bottom - 14.0, page)
    if data.demo_model:
        _watermark(c, width, height)
    c.showPage()
    c.save()
    return buf.getvalue()


def _text(
    c: Any,
    x: float,
    y: float,
    text: Any,
    size: float = 2.9,
    bold: bool = False,
    colour: tuple[float, float, float] = (0, 0, 0),
    anchor: str = "left",
) -> None:
    """One line of text at (x, y) mm; ``size`` is the cap height scale in mm (font size)."""
    c.setFillColorRGB(*colour)
    c.setFont("Helvetica-Bold" if bold else "Helvetica", size)
    value = latin1(text)
    if anchor == "right":
        c.drawRightString(x, y, value)
    else:
        c.drawString(x, y, value)


def _fit(c: Any, text: str, size: float, max_w: float, bold: bool = False) -> str:
    """``text`` cut (with ...) to ``max_w`` mm at ``size``."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    font = "Helvetica-Bold" if bold else "Helvetica"
    text = latin1(text)
    if stringWidth(text, font, size) <= max_w:
        return text
    while text and stringWidth(text + "...", font, size) > max_w:
        text = text[:-1]
    return text + "..."


def _header(c: Any, d: ReportData, left: float, top: float, bottom: float) -> None:
    line = 3.9
    # column 1: patient and recording
    x, y = left, top - 4.0
    name = person_name(d.patient_name) or "(no name)"
    _text(c, x, y, _fit(c, name, 4.2, 84, bold=True), 4.2, bold=True)
    y -= line + 1.0
    facts = [
        ("ID", d.patient_id or "-"),
        ("Born", birth_and_age(d.patient_birth_date, d.acquisition_datetime) or "-"),
        ("Sex", sex_text(d.patient_sex) or "-"),
        ("Recorded", dicom_datetime_text(d.acquisition_datetime) or "-"),
        ("Device", " ".join(v for v in (d.manufacturer, d.device_model) if v) or "-"),
        ("Accession", d.accession_number or "-"),
    ]
    for label, value in facts:
        _text(c, x, y, label, 2.9, bold=True)
        _text(c, x + 17, y, _fit(c, value, 2.9, 67), 2.9)
        y -= line

    # column 2: the cart's measurements and statements
    x, y = left + 90, top - 4.0
    _text(c, x, y, "Cart measurements", 3.3, bold=True)
    y -= line + 0.6
    measurements = dict(d.measurements or {})
    shown = [(k.key, measurements[k.key]) for k in KINDS if k.key in measurements]
    shown += [(key, m) for key, m in measurements.items() if not any(key == k.key for k in KINDS)]
    if d.measurements is None:
        _text(c, x, y, "not read for this ECG", 2.9, colour=(0.4, 0.4, 0.4))
        y -= line
    elif not shown:
        _text(c, x, y, "none sent by the cart", 2.9, colour=(0.4, 0.4, 0.4))
        y -= line
    half = (len(shown) + 1) // 2 if len(shown) > 5 else len(shown)
    for i, (key, m) in enumerate(shown[:12]):
        col_x = x + (42 if i >= half else 0)
        row_y = y - (i - (half if i >= half else 0)) * line
        label = str(m.get("name") or key)
        value = display_value(m) + (" *" if m.get("source") == "derived" else "")
        _text(c, col_x, row_y, _fit(c, label, 2.9, 22), 2.9)
        _text(c, col_x + 39, row_y, value, 2.9, bold=True, anchor="right")
    y -= max(half, 1 if shown else 0) * line
    if any(m.get("source") == "derived" for _, m in shown):
        _text(c, x, y, "* derived by the gateway from the RR interval", 2.4, colour=(0.35, 0.35, 0.35))
        y -= line - 0.6
    if d.cart_statements:
        _text(c, x, y, "Cart statements:", 2.9, bold=True)
        y -= line
        for statement in list(d.cart_statements)[: max(1, int((y - bottom) / line) + 1)]:
            _text(c, x + 2, y, _fit(c, statement, 2.9, 80), 2.9)
            y -= line

    # column 3: the AI findings, probability against threshold
    x, y = left + 178, top - 4.0
    _text(c, x, y, "AI findings (probability / threshold)", 3.3, bold=True)
    y -= line + 0.6
    for code in FINDINGS:
        finding = BY_CODE[code]
        p = d.probabilities.get(code)
        thr = d.thresholds.get(code)
        above = code in set(d.findings)
        colour = (0.7, 0.25, 0.0) if above else (0, 0, 0)
        _text(c, x, y, f"{code}", 2.9, bold=above, colour=colour)
        _text(c, x + 10, y, _fit(c, finding.name, 2.6, 40), 2.6, colour=colour)
        _text(c, x + 62, y, "-" if p is None else f"{p:.3f}", 2.9, bold=above, anchor="right", colour=colour)
        _text(c, x + 74, y, "-" if thr is None else f"{thr:.3f}", 2.9, anchor="right", colour=(0.3, 0.3, 0.3))
        # a bar: the probability, with the threshold as a black tick
        bar_x, bar_w = x + 75.5, 6.5
        c.setFillColorRGB(0.92, 0.92, 0.92)
        c.rect(bar_x, y - 0.3, bar_w, 2.4, stroke=0, fill=1)
        c.setFillColorRGB(*((0.95, 0.55, 0.2) if above else (0.4, 0.6, 0.8)))
        c.rect(bar_x, y - 0.3, bar_w * min(max(p or 0.0, 0.0), 1.0), 2.4, stroke=0, fill=1)
        if thr is not None:
            c.setFillColorRGB(0, 0, 0)
            c.rect(bar_x + bar_w * min(max(thr, 0.0), 1.0) - 0.15, y - 0.6, 0.3, 3.0, stroke=0, fill=1)
        y -= line
    reported = [f"{code} ({BY_CODE[code].name})" for code in FINDINGS if code in set(d.findings)]
    if d.confirmation is None:
        _text(
            c,
            x,
            y,
            _fit(c, "Reported: " + (", ".join(reported) if reported else "none above threshold"), 2.9, 82, bold=True),
            2.9,
            bold=True,
        )
        y -= line
    else:
        # the physician's findings are the report's; the AI's stay above, as the AI's
        confirmed = [f"{code} ({BY_CODE[code].name})" for code in FINDINGS if code in set(d.confirmation.findings)]
        _text(
            c,
            x,
            y,
            _fit(c, "Physician: " + (", ".join(confirmed) if confirmed else "none of the six"), 2.9, 82, bold=True),
            2.9,
            bold=True,
            colour=(0.0, 0.35, 0.1),
        )
        y -= line
        notes = list(d.confirmation.statements) + (
            [f"Comment: {d.confirmation.comment}"] if d.confirmation.comment else []
        )
        if notes:
            _text(c, x, y, _fit(c, "; ".join(notes), 2.6, 82), 2.6)
            y -= line
    if d.quality_flags:
        _text(c, x, y, _fit(c, "Signal quality: " + "; ".join(d.quality_flags), 2.6, 82), 2.6, colour=(0.55, 0.3, 0))


def _grid(c: Any, x0: float, y0: float, w: float, h: float) -> None:
    """1 mm minor and 5 mm major lines over w x h mm, from (x0, y0)."""
    c.setFillColorRGB(1, 1, 1)
    c.rect(x0, y0, w, h, stroke=0, fill=1)
    for step, rgb, width, skip in ((1.0, MINOR_RGB, MINOR_LINE_MM, 5), (5.0, MAJOR_RGB, MAJOR_LINE_MM, 0)):
        c.setStrokeColorRGB(*rgb)
        c.setLineWidth(width)
        path = c.beginPath()
        for i in range(int(round(w / step)) + 1):
            if skip and i % skip == 0:
                continue  # a major line goes there
            x = x0 + i * step
            path.moveTo(x, y0)
            path.lineTo(x, y0 + h)
        for j in range(int(round(h / step)) + 1):
            if skip and j % skip == 0:
                continue
            y = y0 + j * step
            path.moveTo(x0, y)
            path.lineTo(x0 + w, y)
        c.drawPath(path, stroke=1, fill=0)


def _polyline(c: Any, xs: np.ndarray, ys: np.ndarray) -> None:
    if xs.size < 2:
        return
    path = c.beginPath()
    path.moveTo(float(xs[0]), float(ys[0]))
    for x, y in zip(xs[1:].tolist(), ys[1:].tolist(), strict=True):
        path.lineTo(x, y)
    c.drawPath(path, stroke=1, fill=0)


def _calibration(c: Any, x0: float, baseline: float) -> None:
    # 1 mV for 0.2 s: 10 mm tall, 5 mm wide
    path = c.beginPath()
    path.moveTo(x0, baseline)
    path.lineTo(x0 + 2, baseline)
    path.lineTo(x0 + 2, baseline + MM_PER_MV)
    path.lineTo(x0 + 2 + 0.2 * MM_PER_S, baseline + MM_PER_MV)
    path.lineTo(x0 + 2 + 0.2 * MM_PER_S, baseline)
    path.lineTo(x0 + CAL_MM - 1, baseline)
    c.drawPath(path, stroke=1, fill=0)


def _tracings(c: Any, d: ReportData, signal: np.ndarray, column: dict[str, int], left: float, grid_top: float) -> None:
    start, stop = _recording_span(signal)
    panel_n = int(round(PANEL_S * d.fs))
    panel_mm = PANEL_S * MM_PER_S
    c.setStrokeColorRGB(0, 0, 0)
    c.setLineJoin(1)
    c.setLineWidth(TRACE_LINE_MM)

    def trace(values: np.ndarray, x0: float, baseline: float) -> None:
        xs = x0 + np.arange(values.size) * (MM_PER_S / d.fs)
        # clipped to the row band, as paper ECGs clip a giant QRS
        ys = baseline + np.clip(
            np.nan_to_num(values.astype(np.float64) / d.gain) * MM_PER_MV, -ROW_MM / 2 - 4, ROW_MM / 2 + 4
        )
        _polyline(c, xs, ys)

    rows = len(LAYOUT) + 1
    for r in range(rows):
        baseline = grid_top - ROW_MM * r - ROW_MM / 2
        c.setStrokeColorRGB(0, 0, 0)
        c.setLineWidth(TRACE_LINE_MM)
        _calibration(c, left, baseline)
        if r < len(LAYOUT):
            for k, lead in enumerate(LAYOUT[r]):
                a = min(start + k * panel_n, stop)
                x0 = left + CAL_MM + k * panel_mm
                trace(signal[a : min(a + panel_n, stop), column[lead]], x0, baseline)
                _text(c, x0 + 1, baseline + ROW_MM / 2 - 4.5, lead, 3.2, bold=True)
                if k:  # the lead-change tick of printed ECGs
                    c.setLineWidth(0.3)
                    c.line(x0, baseline - 3, x0, baseline + 3)
                    c.setLineWidth(TRACE_LINE_MM)
        else:
            strip = signal[start : min(start + int(round(STRIP_S * d.fs)), stop), column[RHYTHM_LEAD]]
            trace(strip, left + CAL_MM, baseline)
            _text(c, left + CAL_MM + 1, baseline + ROW_MM / 2 - 4.5, f"{RHYTHM_LEAD} (rhythm)", 3.2, bold=True)


def _footer(c: Any, d: ReportData, left: float, bottom: float, page: str) -> None:
    right = left + GRID_W_MM
    if d.confirmation is None:
        _text(c, left, bottom + 8.5, UNCONFIRMED + ".", 3.4, bold=True, colour=(0.75, 0.1, 0.1))
    else:
        _text(
            c,
            left,
            bottom + 8.5,
            _fit(c, confirmed_line(d.confirmation), 3.4, 170, bold=True),
            3.4,
            bold=True,
            colour=(0.0, 0.35, 0.1),
        )
    _text(
        c,
        right,
        bottom + 8.5,
        "25 mm/s   10 mm/mV   print at 100 % (actual size): 1 small square = 1 mm",
        2.7,
        anchor="right",
    )
    _text(
        c,
        left,
        bottom + 4.3,
        f"AI model sha256 {d.model_sha256}" + (" (UNTRAINED DEMO MODEL)" if d.demo_model else ""),
        2.5,
        colour=(0.25, 0.25, 0.25),
    )
    _text(c, right, bottom + 4.3, f"ECG gateway {d.gateway_version}", 2.5, anchor="right", colour=(0.25, 0.25, 0.25))
    note = (
        "Decision support (Ribeiro et al., Nat Commun 2020; 1dAVb, RBBB, LBBB, SB, AF, ST only): "
        "a result without findings is not a normal ECG."
    )
    _text(c, left, bottom + 0.5, note, 2.4, colour=(0.35, 0.35, 0.35))
    tail = f"SOP Instance UID {d.sop_instance_uid or '-'}" + (
        f"   AI result of {d.result_time}" if d.result_time else ""
    )
    _text(c, right, bottom + 0.5, _fit(c, tail, 2.4, 120), 2.4, anchor="right", colour=(0.35, 0.35, 0.35))


def confirmed_line(confirmation: ReaderConfirmation) -> str:
    """The footer's status line of a confirmed report: "Confirmed by X at T" (or
    "Corrected by", with the version of an edited over-read)."""
    verb = "Corrected" if confirmation.corrected else "Confirmed"
    version = f" (version {confirmation.version})" if confirmation.version > 1 else ""
    return f"{verb} by {confirmation.by} at {confirmation.at}{version}."


def _watermark(c: Any, width: float, height: float) -> None:
    c.saveState()
    c.setFillColorRGB(0.85, 0.0, 0.0, alpha=0.22)
    c.translate(width / 2, height / 2)
    c.rotate(30)
    c.setFont("Helvetica-Bold", 9)
    c.drawCentredString(0, -3, WATERMARK)
    c.restoreState()
