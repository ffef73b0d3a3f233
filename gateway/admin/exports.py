"""The PHI exports (model input, original DICOM, the PDF report), shared by CLI, API and web view.

Both read the spooled original; the model input is rebuilt from it and
checked against the hash stored with the result.  They only read; the caller
writes the audit row and commits.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from gateway.admin.queries import find_ecg
from gateway.receive.limits import DEFAULT_MAX_DATASET_BYTES
from gateway.store.models import EcgInstance
from gateway.store.spool import Spool

if TYPE_CHECKING:
    import numpy as np


class ExportError(Exception):
    """Why an export is impossible, in one line (no PHI)."""


def model_input_array(ecg: EcgInstance, spool_dir: str | Path, max_bytes: int = DEFAULT_MAX_DATASET_BYTES,
                      ) -> np.ndarray:
    """The exact float32 (4096, 12) array the model saw for ``ecg``.

    The array is not stored: it is rebuilt from the spooled original (checked
    against the file's sha256) by the worker's own read-and-normalise path,
    with the parameters recorded in the ECG's report, and must hash to the
    prediction's ``input_sha256``.  When it does not, the error names the
    normaliser version that made the input and the one running now.
    """
    from gateway.normalise import NormaliseError, NormaliseParams, input_sha256, normaliser_version
    from gateway.process.worker import model_input

    p = ecg.prediction
    if p is None or p.input_sha256 is None:
        why = f": {ecg.error}" if ecg.error else ""
        raise ExportError(f"ECG {ecg.id} has no model input (status {ecg.status}{why})")
    _, raw = _spooled_bytes(ecg, spool_dir)
    try:
        params = NormaliseParams(**(ecg.report or {}).get("params", {}))
        signal = model_input(raw, params, max_bytes).signal
    except (NormaliseError, TypeError, ValueError) as exc:
        raise ExportError(f"ECG {ecg.id}: the model input cannot be rebuilt from the stored file: {exc}") from None
    if input_sha256(signal) != p.input_sha256:
        then = p.normaliser_version or f"unknown (processed by gateway {p.gateway_version})"
        raise ExportError(
            f"ECG {ecg.id}: the model input rebuilt from the stored file does not match the one the model saw "
            f"(sha256 {input_sha256(signal)[:12]}... != {p.input_sha256[:12]}...): normaliser {then} made it, "
            f"normaliser {normaliser_version()} runs now")
    return signal


def input_npy(session: Session, id_or_uid: str, spool_dir: str | Path,
              max_bytes: int = DEFAULT_MAX_DATASET_BYTES) -> tuple[int, bytes]:
    """``(ecg id, .npy bytes)`` of the exact array the model saw (see :func:`model_input_array`)."""
    import numpy as np

    ecg = _find(session, id_or_uid)
    buf = io.BytesIO()
    np.save(buf, model_input_array(ecg, spool_dir, max_bytes), allow_pickle=False)
    return ecg.id, buf.getvalue()


def _find(session: Session, id_or_uid: str) -> EcgInstance:
    ecg = find_ecg(session, id_or_uid)
    if ecg is None:
        raise ExportError(f"no ECG with id or SOP Instance UID {id_or_uid!r}")
    return ecg


def _spooled_bytes(ecg: EcgInstance, spool_dir: str | Path) -> tuple[Path, bytes]:
    path = Spool(Path(spool_dir)).resolve(ecg.spool_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExportError(f"ECG {ecg.id}: stored file unreadable: {exc.strerror}: {path}") from None
    if hashlib.sha256(data).hexdigest() != ecg.sha256:
        raise ExportError(f"ECG {ecg.id}: stored file {path} does not match its sha256 (changed on disk)")
    return path, data


def original_dicom(session: Session, id_or_uid: str, spool_dir: str | Path) -> tuple[int, bytes]:
    """``(ecg id, file bytes)`` of the spooled original, verified against its sha256."""
    ecg = _find(session, id_or_uid)
    return ecg.id, _spooled_bytes(ecg, spool_dir)[1]


def report_pdf(session: Session, id_or_uid: str, spool_dir: str | Path, page: str = "A4") -> tuple[int, bytes]:
    """``(ecg id, PDF bytes)`` of the one-page 12-lead report (:mod:`gateway.report.pdf`):
    the tracing is the model input rebuilt from the stored original (see
    :func:`model_input_array`), the values those of the database rows."""
    from gateway.admin.queries import lead_names
    from gateway.report.pdf import ReportError, build_pdf, input_scale, report_data

    ecg = _find(session, id_or_uid)
    signal = model_input_array(ecg, spool_dir)
    fs, gain = input_scale(ecg.report)
    try:
        # the gateway version that made the result, so this is the PDF its ORU carried ([hl7] embed_pdf)
        data = report_data(ecg, signal, lead_names(ecg.report), fs, gain)
        return ecg.id, build_pdf(data, page)
    except ReportError as exc:
        raise ExportError(f"ECG {ecg.id}: no report: {exc}") from None

