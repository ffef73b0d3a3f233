"""The published test set (Zenodo record 3765780): fetch, read, check.

Layout: ``ecg_tracings.hdf5`` with dataset ``tracings`` (n, 4096, 12) float32
in mV at 400 Hz, each recording zero-padded centred to 4096 samples; and
``gold_standard.csv`` with one 0/1 column per finding and one row per tracing.
The file's limb leads are interpreted in the configured
``[normalise] limb_lead_order`` (V1-V6 follow); :func:`check_limb_leads` tells
whether the signals agree with that order.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.findings import FINDINGS
from gateway.infer.fetch import FetchError, extract_member, fetch_archive

log = logging.getLogger("gateway.validate")

TRACINGS_FILE = "ecg_tracings.hdf5"
TRACINGS_DATASET = "tracings"
GOLD_FILE = "gold_standard.csv"
ARCHIVE_NAME = "data.zip"
#: Archive members extracted by :func:`fetch_test_set` (matched by file name).
MEMBERS = (TRACINGS_FILE, GOLD_FILE, "attributes.csv")
SAMPLES = 4096
LEADS = 12
FS = 400
PRECORDIAL = ("V1", "V2", "V3", "V4", "V5", "V6")


class DatasetError(Exception):
    """The test set is missing or not of the published layout; the message says what."""


@dataclass(frozen=True)
class TestSet:
    """Tracings and gold standard, row i of one belonging to row i of the other."""

    __test__ = False  # not a pytest class

    tracings: np.ndarray  # (n, 4096, 12) float32, mV
    gold: np.ndarray  # (n, findings) int8, 0/1
    findings: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.tracings.shape[0])


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_gold_standard(path: str | os.PathLike[str], findings: Sequence[str] = FINDINGS) -> np.ndarray:
    """The 0/1 matrix (rows, findings) of ``gold_standard.csv``; raises
    :class:`DatasetError` naming the column or row that is wrong."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in findings if c not in header]
            if missing:
                raise DatasetError(f"{p}: no column {', '.join(missing)} (header: {', '.join(header) or 'empty'})")
            rows = []
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                values = []
                for c in findings:
                    if row[c] not in ("0", "1", "0.0", "1.0"):
                        raise DatasetError(f"{p} line {line}: {c} is {row[c]!r}, expected 0 or 1")
                    values.append(int(float(row[c])))
                rows.append(values)
    except FileNotFoundError:
        raise DatasetError(f"{p}: not found") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{p}: not a text CSV file ({exc})") from None
    if not rows:
        raise DatasetError(f"{p}: no rows")
    return np.array(rows, dtype=np.int8)


def read_tracings(path: str | os.PathLike[str], limit: int | None = None) -> np.ndarray:
    """``tracings`` of the HDF5 file as float32 (n, 4096, 12); the first
    ``limit`` rows only when given."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: not found")
    try:
        with h5py.File(p, "r") as f:
            if TRACINGS_DATASET not in f:
                raise DatasetError(f"{p}: no dataset {TRACINGS_DATASET!r} (has: {', '.join(f.keys()) or 'nothing'})")
            dset = f[TRACINGS_DATASET]
            if dset.ndim != 3 or dset.shape[1:] != (SAMPLES, LEADS):
                raise DatasetError(f"{p}: {TRACINGS_DATASET} has shape {dset.shape}, expected (n, {SAMPLES}, {LEADS})")
            data = dset[: limit if limit else dset.shape[0]]
    except OSError as exc:
        raise DatasetError(f"{p}: not a readable HDF5 file ({exc})") from None
    data = np.asarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        bad = int(np.flatnonzero(~np.isfinite(data).all(axis=(1, 2)))[0])
        raise DatasetError(f"{p}: tracing {bad} contains NaN or infinite values")
    return data


def load_test_set(
    data_dir: str | os.PathLike[str], *, limit: int | None = None, findings: Sequence[str] = FINDINGS
) -> TestSet:
    """Read ``ecg_tracings.hdf5`` and ``gold_standard.csv`` from ``data_dir``.

    Raises :class:`DatasetError` when a file is missing, has the wrong shape,
    or the two disagree on the number of exams.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise DatasetError(f"{d}: no such directory (use --fetch to download the test set)")
    tracings_path, gold_path = d / TRACINGS_FILE, d / GOLD_FILE
    for p in (tracings_path, gold_path):
        if not p.is_file():
            raise DatasetError(f"{p}: not found (the folder must hold {TRACINGS_FILE} and {GOLD_FILE})")
    gold = read_gold_standard(gold_path, findings)
    import h5py

    try:
        with h5py.File(tracings_path, "r") as f:
            total = f[TRACINGS_DATASET].shape[0] if TRACINGS_DATASET in f else None
    except OSError as exc:
        raise DatasetError(f"{tracings_path}: not a readable HDF5 file ({exc})") from None
    if total is not None and total != gold.shape[0]:
        raise DatasetError(f"{tracings_path} holds {total} tracings but {gold_path} has {gold.shape[0]} rows")
    tracings = read_tracings(tracings_path, limit)
    gold = gold[: tracings.shape[0]]
    source = {
        "data_dir": str(d),
        "tracings": str(tracings_path),
        "tracings_sha256": file_sha256(tracings_path),
        "gold_standard": str(gold_path),
        "gold_standard_sha256": file_sha256(gold_path),
        "exams_in_file": int(total or tracings.shape[0]),
        "exams_used": int(tracings.shape[0]),
    }
    return TestSet(tracings=tracings, gold=gold, findings=tuple(findings), source=source)


def lead_names(limb_lead_order: Sequence[str]) -> list[str]:
    """Column names of a model input: the limb leads in the given order, then V1-V6."""
    return [*limb_lead_order, *PRECORDIAL]


def strip_padding(tracing: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Remove the leading and trailing rows that are zero in all leads.

    Returns (signal, zeros removed before, zeros removed after).  An all-zero
    tracing raises :class:`ValueError`: there is nothing to send.
    """
    nonzero = np.flatnonzero(np.any(tracing != 0, axis=1))
    if nonzero.size == 0:
        raise ValueError("the tracing is zero in every lead")
    first, last = int(nonzero[0]), int(nonzero[-1])
    return tracing[first : last + 1], first, tracing.shape[0] - 1 - last


#: What each derived limb lead equals in terms of I and II (Einthoven, Goldberger).
_DERIVED = {"III": (-1.0, 1.0), "aVR": (-0.5, -0.5), "aVL": (1.0, -0.5), "aVF": (-0.5, 1.0)}


def check_limb_leads(tracings: np.ndarray, limb_lead_order: Sequence[str]) -> dict[str, Any]:
    """Which limb lead each of the columns 0-5 looks like, from the relations
    III = II - I, aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2.

    Columns 0 and 1 are taken as I and II as configured; for each other limb
    column the best-fitting lead is the one whose formula leaves the smallest
    residual (relative RMS).  Returns {"configured": [...], "looks_like":
    [...], "agrees": bool, "relative_residual": {column name: residual}}.
    """
    order = list(limb_lead_order)
    x = np.asarray(tracings, dtype=np.float64)
    i_col, ii_col = order.index("I"), order.index("II")
    lead_i, lead_ii = x[..., i_col], x[..., ii_col]
    looks = list(order)
    residuals: dict[str, float] = {}
    for col, name in enumerate(order):
        if name in ("I", "II"):
            continue
        signal = x[..., col]
        scale = float(np.sqrt(np.mean(signal**2))) or 1.0
        best, best_res = name, np.inf
        for lead, (a, b) in _DERIVED.items():
            res = float(np.sqrt(np.mean((signal - (a * lead_i + b * lead_ii)) ** 2))) / scale
            if res < best_res:
                best, best_res = lead, res
        looks[col] = best
        residuals[name] = round(best_res, 4)
    return {"configured": order, "looks_like": looks, "agrees": looks == order, "relative_residual": residuals}


def _extract_members(archive: Path, dest: Path) -> list[Path]:
    """Extract the members named in :data:`MEMBERS` (at any depth) to ``dest``."""
    out = []
    try:
        with zipfile.ZipFile(archive) as zf:
            by_name = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}
            missing = [m for m in (TRACINGS_FILE, GOLD_FILE) if m not in by_name]
            if missing:
                raise DatasetError(f"{archive}: not the published test set archive: no {', '.join(missing)}")
            for name in MEMBERS:
                if name not in by_name:
                    continue
                out.append(extract_member(zf, by_name[name], dest / name))
    except zipfile.BadZipFile as exc:
        archive.unlink(missing_ok=True)
        raise DatasetError(f"{archive}: not a zip archive ({exc}); deleted it") from None
    return out


@dataclass(frozen=True)
class FetchResult:
    files: list[Path]
    md5: str
    sha256: str
    #: The md5 was checked against a configured value.
    verified: bool


def fetch_test_set(
    url: str,
    md5: str,
    data_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    console: Any = None,
    attempts: int = 5,
    timeout: float = 60.0,
    retry_delay_s: float = 1.0,
) -> FetchResult:
    """Download ``data.zip`` into ``data_dir`` (resuming, with a progress bar),
    check its md5 when ``md5`` is given, extract the test set next to it.

    The download itself is :func:`gateway.infer.fetch.download`.  With an
    empty ``md5`` nothing is verified: the caller must say so loudly.  On a
    mismatch the archive is deleted and :class:`DatasetError` raised.
    """
    dest = Path(data_dir)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / ARCHIVE_NAME
    expected = md5.strip().lower()
    try:
        got = fetch_archive(
            url,
            archive,
            expected,
            settings="validate.url and validate.md5",
            progress=progress,
            console=console,
            attempts=attempts,
            timeout=timeout,
            retry_delay_s=retry_delay_s,
            again="ecg-gateway validate --fetch",
        )
    except FetchError as exc:
        raise DatasetError(str(exc)) from None
    files = _extract_members(archive, dest)
    return FetchResult(files=files, md5=got, sha256=file_sha256(archive), verified=bool(expected))
