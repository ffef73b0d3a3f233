"""What is rebuilt from a stored ECG: its original's bytes (checked against
their sha256), the exact array the model saw, the PDF report.

The model input is not stored: it is rebuilt from the spooled original by
the worker's own read-and-normalise path (:func:`model_input`), so the
worker, the admin exports, the web view, PACS and ``validate`` all run what
the model saw.  Below the stages that use it (process, deliver, admin,
validate); it uses receive (the DICOM read), normalise, report and store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.dicomio.limits import DEFAULT_MAX_DATASET_BYTES
from gateway.quoting import printable
from gateway.store.models import EcgInstance
from gateway.store.spool import Spool

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset

    from gateway.normalise import NormalisedEcg, NormaliseParams

#: Model input lead order when the normalisation record does not name it.
DEFAULT_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


class RebuildError(Exception):
    """Why a stored ECG's original, model input or report cannot be had, in one line (no PHI)."""


def read_dataset(raw: bytes, max_bytes: int = DEFAULT_MAX_DATASET_BYTES, *, annotations: bool = False) -> Dataset:
    """The worker's read of spooled DICOM bytes (:func:`gateway.dicomio.reader.read`:
    the waveform, and when ``annotations`` the annotation items the cart's
    report reads: :func:`gateway.report.measurements.extract` gives what it
    gives on ``dcmread``'s data set).
    Raises ``NormaliseError`` as :func:`model_input` does."""
    from gateway.dicomio.limits import DatasetTooLarge
    from gateway.dicomio.reader import WAVEFORM, read
    from gateway.normalise import NormaliseError
    from gateway.report.measurements import VALUE_KEYWORDS

    annotation = "WaveformAnnotationSequence"
    try:
        # skips the other sequences pydicom parses eagerly, and the fiducial
        # points (~85% of a cart's annotation items; measured, a third of the read)
        if annotations:
            return read(raw, max_bytes, sequences=(*WAVEFORM, annotation), items_with={annotation: VALUE_KEYWORDS})
        return read(raw, max_bytes, sequences=WAVEFORM)
    except DatasetTooLarge as exc:  # a deflate bomb: refused at the limit, never inflated whole
        raise NormaliseError(str(exc)) from None
    except Exception as exc:  # the SCP checked the header; the body may still be corrupt
        raise NormaliseError(f"DICOM data set cannot be parsed: {printable(exc)}") from exc


def normalise_document(raw: bytes, source_format: str, params: NormaliseParams) -> NormalisedEcg:
    """A spooled Philips Sierra XML or HL7 aECG original -> ``NormalisedEcg``
    (decoded by :mod:`gateway.formats`, normalised by the DICOM path's rules).
    Raises ``NormaliseError`` when it cannot be decoded or analysed."""
    from gateway.formats import FormatError, decode
    from gateway.normalise import NormaliseError, normalise_record

    try:
        record = decode(raw, source_format)
    except FormatError as exc:
        raise NormaliseError(str(exc), {"source_format": source_format}) from None
    return normalise_record(record, params)


def model_input(raw: bytes, params: NormaliseParams, max_bytes: int = DEFAULT_MAX_DATASET_BYTES) -> NormalisedEcg:
    """Spooled original bytes -> ``NormalisedEcg``: the one read-and-normalise path,
    shared by the worker and by everything that rebuilds a stored result's
    input (export, web view), so a rebuild runs exactly what the model saw.
    DICOM, Philips Sierra XML and HL7 aECG, told apart by content.

    Raises ``NormaliseError`` when the data set cannot be read or analysed, or
    is (or inflates to) more than ``max_bytes`` (``[dicom] max_dataset_mb``).
    """
    from gateway.formats import XML_FORMATS, sniff
    from gateway.normalise import normalise_dataset

    source_format = sniff(raw)
    if source_format in XML_FORMATS:
        assert source_format is not None
        return normalise_document(raw, source_format, params)
    return normalise_dataset(read_dataset(raw, max_bytes), params)


def stored_original(ecg: EcgInstance, spool_dir: str | Path) -> tuple[Path, bytes]:
    """The spooled original's path and bytes, verified against the row's sha256."""
    path = Spool(Path(spool_dir)).resolve(ecg.spool_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RebuildError(f"ECG {ecg.id}: stored file unreadable: {exc.strerror}: {path}") from None
    if hashlib.sha256(data).hexdigest() != ecg.sha256:
        raise RebuildError(f"ECG {ecg.id}: stored file {path} does not match its sha256 (changed on disk)")
    return path, data


def model_input_array(
    ecg: EcgInstance,
    spool_dir: str | Path,
    max_bytes: int = DEFAULT_MAX_DATASET_BYTES,
) -> np.ndarray:
    """The exact float32 (4096, 12) array the model saw for ``ecg``.

    Rebuilt from the spooled original with the parameters recorded in the
    ECG's report; it must hash to the prediction's ``input_sha256``.  When it
    does not, the error names the normaliser version that made the input and
    the one running now.
    """
    from gateway.normalise import NormaliseError, NormaliseParams, input_sha256, normaliser_version

    p = ecg.prediction
    if p is None or p.input_sha256 is None:
        why = f": {ecg.error}" if ecg.error else ""
        raise RebuildError(f"ECG {ecg.id} has no model input (status {ecg.status}{why})")
    _, raw = stored_original(ecg, spool_dir)
    try:
        params = NormaliseParams(**(ecg.report or {}).get("params", {}))
        signal = model_input(raw, params, max_bytes).signal
    except (NormaliseError, TypeError, ValueError) as exc:
        raise RebuildError(f"ECG {ecg.id}: the model input cannot be rebuilt from the stored file: {exc}") from None
    if input_sha256(signal) != p.input_sha256:
        then = p.normaliser_version or f"unknown (processed by gateway {p.gateway_version})"
        raise RebuildError(
            f"ECG {ecg.id}: the model input rebuilt from the stored file does not match the one the model saw "
            f"(sha256 {input_sha256(signal)[:12]}... != {p.input_sha256[:12]}...): normaliser {then} made it, "
            f"normaliser {normaliser_version()} runs now"
        )
    return signal


def lead_names(normalisation: dict[str, Any] | None) -> list[str]:
    """The model input's column order as recorded by normalisation, else the
    documented default (I, II, III, aVR, aVL, aVF, V1-V6)."""
    n = normalisation or {}
    for where in (n, n.get("params") or {}, n.get("report") or {}):
        for key in ("output_leads", "lead_order", "leads", "model_leads"):
            value = where.get(key) if isinstance(where, dict) else None
            if isinstance(value, list) and len(value) == 12 and all(isinstance(v, str) for v in value):
                return list(value)
    return list(DEFAULT_LEADS)


def report_pdf(ecg: EcgInstance, spool_dir: str | Path, page: str = "A4", *, confirmation: Any = None) -> bytes:
    """The one-page 12-lead PDF report (:mod:`gateway.report.pdf`): the tracing
    is the model input rebuilt from the stored original (see
    :func:`model_input_array`), the values those of the database rows;
    ``confirmation``: the over-read (``confirmations`` row) it reports, if any."""
    from gateway.report.pdf import ReportError, build_pdf, input_scale, report_data

    signal = model_input_array(ecg, spool_dir)
    fs, gain = input_scale(ecg.report)
    try:
        # the gateway version that made the result, so this is the PDF its ORU carried ([hl7] embed_pdf)
        return build_pdf(report_data(ecg, signal, lead_names(ecg.report), fs, gain, confirmation=confirmation), page)
    except ReportError as exc:
        raise RebuildError(f"ECG {ecg.id}: no report: {exc}") from None
