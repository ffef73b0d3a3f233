"""The PHI exports (model input, original DICOM, the PDF report), shared by CLI, API and web view.

An ECG is named by database id or SOP Instance UID; what is exported is
rebuilt from its spooled original by :mod:`gateway.rebuild`.  They only read;
the caller writes the audit row and commits.
"""

from __future__ import annotations

import io
from pathlib import Path

from sqlalchemy.orm import Session

from gateway.admin.queries import find_ecg
from gateway.dicomio.limits import DEFAULT_MAX_DATASET_BYTES
from gateway.rebuild import RebuildError as ExportError
from gateway.rebuild import model_input_array, stored_original
from gateway.rebuild import report_pdf as _report_pdf
from gateway.store.models import EcgInstance

__all__ = ["ExportError", "input_npy", "model_input_array", "original_dicom", "report_pdf"]


def input_npy(
    session: Session, id_or_uid: str, spool_dir: str | Path, max_bytes: int = DEFAULT_MAX_DATASET_BYTES
) -> tuple[int, bytes]:
    """``(ecg id, .npy bytes)`` of the exact array the model saw
    (:func:`gateway.rebuild.model_input_array`)."""
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


def original_dicom(session: Session, id_or_uid: str, spool_dir: str | Path) -> tuple[int, bytes]:
    """``(ecg id, file bytes)`` of the spooled original, verified against its sha256."""
    ecg = _find(session, id_or_uid)
    return ecg.id, stored_original(ecg, spool_dir)[1]


def report_pdf(session: Session, id_or_uid: str, spool_dir: str | Path, page: str = "A4") -> tuple[int, bytes]:
    """``(ecg id, PDF bytes)`` of the one-page 12-lead report (:func:`gateway.rebuild.report_pdf`),
    with the newest physician confirmation when there is one."""
    from gateway.admin.overread import latest_confirmations

    ecg = _find(session, id_or_uid)
    # once confirmed, the report is the physician's ("confirmed by X at T")
    return ecg.id, _report_pdf(ecg, spool_dir, page, confirmation=latest_confirmations(session, [ecg.id]).get(ecg.id))
