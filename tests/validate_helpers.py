"""A small test set of the published layout, built from real DICOM ECG variants.

The tracings come from pydicom's real Mortara 12-lead recording: the
original object and re-encoded variants (500 Hz, MDC codes, coarser
resolution) are normalised by the gateway's own normaliser, then cut to
different lengths, offsets and amplitudes and zero-padded centred to 4096
samples, like the published ecg_tracings.hdf5.  The gold standard is made up.
"""

from __future__ import annotations

import csv
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np

from gateway import FINDINGS


def _base_signals() -> list[np.ndarray]:
    """The real recording normalised from three DICOM variants, padding removed."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from scipy.signal import resample_poly

    from gateway.normalise import NormaliseParams, normalise_dataset
    from gateway.normalise.encode import make_ecg_dataset
    from gateway.validate.dataset import strip_padding

    original = dcmread(get_testdata_file("waveform_ecg.dcm"))
    first = normalise_dataset(original, NormaliseParams()).signal
    content, _, _ = strip_padding(first)
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    r = Fraction(500, 400)
    at500 = resample_poly(content.astype(np.float64), r.numerator, r.denominator, axis=0)
    variants = [
        original,
        make_ecg_dataset(at500, 500, leads, resolution_uv=2.5, code_scheme="MDC"),
        make_ecg_dataset(content, 400, leads, resolution_uv=4.88, code_scheme="SCPECG"),
    ]
    return [strip_padding(normalise_dataset(ds, NormaliseParams()).signal)[0] for ds in variants]


def make_tracings(n: int = 24, seed: int = 0, short: int = 0) -> np.ndarray:
    """(n, 4096, 12) float32 mV, centred zero padding; the last ``short``
    tracings are 7 s long (shorter than the gateway's default minimum)."""
    rng = np.random.default_rng(seed)
    bases = _base_signals()
    out = np.zeros((n, 4096, 12), np.float32)
    for i in range(n):
        base = bases[i % len(bases)]
        length = 2800 if i >= n - short else int(rng.integers(3400, base.shape[0] + 1))
        start = int(rng.integers(0, base.shape[0] - length + 1))
        x = base[start : start + length] * rng.uniform(0.6, 1.6)
        # the first/last sample must not be zero in all leads, or padding detection would eat it
        x[0, 0] = x[0, 0] or 0.01
        x[-1, 0] = x[-1, 0] or 0.01
        before = (4096 - length) // 2
        out[i, before : before + length] = x
    return out


def make_gold(n: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, len(FINDINGS))) < 0.3).astype(np.int8)


def write_test_set(folder: Path, tracings: np.ndarray, gold: np.ndarray) -> Path:
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "ecg_tracings.hdf5", "w") as f:
        f.create_dataset("tracings", data=tracings)
    with open(folder / "gold_standard.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FINDINGS)
        w.writerows(gold.tolist())
    return folder


def write_data_zip(path: Path, source: Path, prefix: str = "data/") -> str:
    """A data.zip like the published one (files under ``prefix``); returns its md5."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("ecg_tracings.hdf5", "gold_standard.csv"):
            zf.write(source / name, prefix + name)
    return hashlib.md5(path.read_bytes()).hexdigest()


@contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on a free loopback port; yields the base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, *args):  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
