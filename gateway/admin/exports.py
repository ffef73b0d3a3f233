"""The two PHI exports (model input, original DICOM), shared by CLI and API.

They only read; the caller writes the audit row and commits.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from sqlalchemy.orm import Session

from gateway.admin.queries import find_ecg


class ExportError(Exception):
    """Why an export is impossible, in one line (no PHI)."""


def input_npy(session: Session, id_or_uid: str) -> tuple[int, bytes]:
    """``(ecg id, .npy bytes)`` of the exact array the model saw.

    Checks that the stored bytes load as a float32 (4096, 12) array.
    """
    import numpy as np

    ecg = find_ecg(session, id_or_uid)
    if ecg is None:
        raise ExportError(f"no ECG with id or SOP Instance UID {id_or_uid!r}")
    p = ecg.prediction
    if p is None or p.input_npy is None:
        why = f": {ecg.error}" if ecg.error else ""
        raise ExportError(f"ECG {ecg.id} has no model input (status {ecg.status}{why})")
    try:
        array = np.load(io.BytesIO(p.input_npy), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ExportError(f"ECG {ecg.id}: stored model input is not a .npy array: {exc}") from None
    if array.dtype != np.float32 or array.shape != (4096, 12):
        raise ExportError(f"ECG {ecg.id}: stored model input is {array.dtype} {array.shape}, not float32 (4096, 12)")
    return ecg.id, bytes(p.input_npy)


def spool_file(spool_dir: str | Path, spool_path: str) -> Path:
    """Rows store the spool path relative to ``spool_dir`` (absolute paths are kept)."""
    p = Path(spool_path)
    return p if p.is_absolute() else Path(spool_dir) / p


def original_dicom(session: Session, id_or_uid: str, spool_dir: str | Path) -> tuple[int, bytes]:
    """``(ecg id, file bytes)`` of the spooled original, verified against its sha256."""
    ecg = find_ecg(session, id_or_uid)
    if ecg is None:
        raise ExportError(f"no ECG with id or SOP Instance UID {id_or_uid!r}")
    path = spool_file(spool_dir, ecg.spool_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExportError(f"ECG {ecg.id}: stored file unreadable: {exc.strerror}: {path}") from None
    if hashlib.sha256(data).hexdigest() != ecg.sha256:
        raise ExportError(f"ECG {ecg.id}: stored file {path} does not match its sha256 (changed on disk)")
    return ecg.id, data
