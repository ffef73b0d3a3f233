"""The DICOM round trip: test-set tracings -> cart-like DICOM ECGs -> C-STORE
to a real gateway -> the probabilities it stored.

Each tracing has its centred zero padding removed, is resampled to the
variant's rate (400 Hz as stored, or 500 Hz with the polyphase filter a cart
rate would need), quantised to 16-bit samples at ``resolution_uv`` and coded
with SCPECG or MDC lead codes (:func:`gateway.normalise.encode.make_ecg_dataset`).
The gateway is either started for the run (``serve --components scp,worker``
with its own database and spool under the run folder) or one already running.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from gateway.admin.exports import ExportError, model_input_array
from gateway.findings import FINDINGS
from gateway.normalise.encode import TWELVE_LEAD_ECG, make_ecg_dataset
from gateway.serve import STARTED_LINE
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import EcgInstance
from gateway.validate.dataset import FS, strip_padding

log = logging.getLogger("gateway.validate")

#: Test ECGs carry this patient id and name so that they are recognisable
#: wherever they end up (they are not patients).
PATIENT_ID = "ECGGW-VALIDATION"
PATIENT_NAME = "VALIDATION^TESTSET"
FINAL_STATUSES = ("processed", "rejected", "failed")
CODE_SCHEMES = ("SCPECG", "MDC")
ROOT = Path(__file__).resolve().parents[2]


class RoundTripError(Exception):
    """The round trip could not run (gateway did not start, association refused...)."""


@dataclass(frozen=True)
class Variant:
    """How a cart would have written a tracing."""

    fs: int
    code_scheme: str

    def __post_init__(self) -> None:
        if self.code_scheme not in CODE_SCHEMES:
            raise ValueError(f"code scheme must be one of {', '.join(CODE_SCHEMES)}, not {self.code_scheme!r}")
        if not 100 <= self.fs <= 2000:
            raise ValueError(f"rate {self.fs} Hz is outside 100-2000 Hz")

    @property
    def label(self) -> str:
        return f"{self.fs} Hz {self.code_scheme}"


def parse_variants(rates: str, code_schemes: str) -> list[Variant]:
    """Every combination of comma-separated ``rates`` and ``code_schemes``
    (e.g. "400,500" x "SCPECG,MDC"); raises ValueError naming the bad item."""
    out = []
    try:
        fs_list = [int(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"rates must be whole numbers of Hz, got {rates!r}") from None
    schemes = [s.strip().upper() for s in code_schemes.split(",") if s.strip()]
    for fs in fs_list:
        for scheme in schemes:
            out.append(Variant(fs, scheme))
    if not out:
        raise ValueError("no variant: give at least one rate and one code scheme")
    return out


def cart_signal(tracing: np.ndarray, fs: int) -> tuple[np.ndarray, int, int]:
    """The signal a cart at ``fs`` Hz would have recorded: padding removed,
    resampled from 400 Hz.  Returns (signal mV (samples, 12), pad before, pad after)."""
    signal, before, after = strip_padding(tracing)
    if fs != FS:
        from scipy.signal import resample_poly

        ratio = Fraction(fs, FS)
        signal = resample_poly(signal.astype(np.float64), ratio.numerator, ratio.denominator, axis=0)
    return signal, before, after


@dataclass
class InstanceResult:
    """What happened to one tracing on its way through the gateway."""

    index: int
    variant: str
    sop_instance_uid: str
    samples: int
    duration_s: float
    pad_before: int
    pad_after: int
    #: Samples that did not fit the 16-bit range and were clipped by the encoder.
    clipped_samples: int
    store_status: int | None = None
    #: processed / rejected / failed / not stored / not final
    status: str = "not stored"
    error: str | None = None
    probabilities: list[float] | None = None
    #: max |gateway model input - tracing x gain| in mV (processed only).
    input_max_abs_diff_mv: float | None = None


@dataclass
class RoundTripRun:
    results: list[InstanceResult]
    target: str
    resolution_uv: float
    variants: list[str]
    gateway_log: str | None = None

    def as_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "target": self.target,
            "resolution_uv": self.resolution_uv,
            "variants": self.variants,
            "gateway_log": self.gateway_log,
            "status_counts": counts,
            "not_processed": [asdict(r) for r in self.results if r.status != "processed"],
        }


def encode_tracing(
    tracing: np.ndarray,
    index: int,
    variant: Variant,
    leads: Sequence[str],
    resolution_uv: float,
) -> tuple[Any, InstanceResult]:
    """One tracing as a cart-like 12-lead ECG DICOM data set, and its result record."""
    signal, before, after = cart_signal(tracing, variant.fs)
    counts = np.round(signal * 1000.0 / resolution_uv)
    clipped = int(np.sum((counts > 32767) | (counts < -32768)))
    ds = make_ecg_dataset(
        signal,
        variant.fs,
        leads,
        resolution_uv=resolution_uv,
        code_scheme=variant.code_scheme,
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        accession_number=f"VAL{index:06d}",
        Manufacturer="ecg-gateway validate",
        StudyDescription="commissioning test set",
    )
    result = InstanceResult(
        index=index,
        variant=variant.label,
        sop_instance_uid=str(ds.SOPInstanceUID),
        samples=int(signal.shape[0]),
        duration_s=round(signal.shape[0] / variant.fs, 4),
        pad_before=before,
        pad_after=after,
        clipped_samples=clipped,
    )
    return ds, result


def send_tracings(
    tracings: np.ndarray,
    indices: Sequence[int],
    variants: Sequence[Variant],
    leads: Sequence[str],
    resolution_uv: float,
    host: str,
    port: int,
    called_aet: str,
    *,
    calling_aet: str = "ECGVALIDATE",
    progress: Callable[[int], None] | None = None,
    timeout: float = 60.0,
) -> list[InstanceResult]:
    """Encode tracing ``indices[k]`` with variant ``k % len(variants)`` and
    C-STORE each over ONE association; returns the result records with the
    C-STORE status filled in.  Raises :class:`RoundTripError` when the
    association is refused or lost."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(TWELVE_LEAD_ECG, ExplicitVRLittleEndian)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise RoundTripError(f"association with {host}:{port} (called AE {called_aet}) was not established")
    results = []
    try:
        for k, index in enumerate(indices):
            ds, result = encode_tracing(tracings[index], index, variants[k % len(variants)], leads, resolution_uv)
            if not assoc.is_established:
                raise RoundTripError(f"association lost after {k} of {len(indices)} C-STOREs")
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            result.store_status = int(code) if code is not None else None
            if code != 0x0000:
                result.status = "not stored"
                result.error = "no C-STORE response" if code is None else f"C-STORE status 0x{int(code):04X}"
                log.warning("tracing %d (%s): %s", index, result.sop_instance_uid, result.error)
            else:
                result.status = "not final"
            results.append(result)
            if progress:
                progress(k + 1)
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def collect_results(
    database_url: str,
    results: Sequence[InstanceResult],
    tracings: np.ndarray,
    gain: float,
    *,
    timeout: float = 600.0,
    poll_s: float = 0.5,
    findings: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    spool_dir: str | Path | None = None,
) -> None:
    """Poll the gateway's database until every stored instance is final (or
    ``timeout`` passes) and fill in status, error, probabilities and the
    model-input difference of each result, in place.  The model input is
    rebuilt from the gateway's spool (``spool_dir``; without it, or when the
    rebuild fails, the difference stays None)."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    codes = list(findings or FINDINGS)
    waiting = {r.sop_instance_uid: r for r in results if r.status == "not final"}
    engine = make_engine(database_url)
    session_factory = make_sessionmaker(engine)
    deadline = time.monotonic() + timeout
    try:
        while waiting:
            uids = list(waiting)
            with session_factory() as session:
                for start in range(0, len(uids), 400):
                    chunk = uids[start : start + 400]
                    rows = session.scalars(
                        select(EcgInstance)
                        .options(selectinload(EcgInstance.prediction))
                        .where(EcgInstance.sop_instance_uid.in_(chunk))
                        .where(EcgInstance.status.in_(FINAL_STATUSES))
                        .order_by(EcgInstance.version.desc())
                    ).all()
                    for ecg in rows:
                        r = waiting.pop(ecg.sop_instance_uid, None)
                        if r is None:
                            continue
                        r.status, r.error = ecg.status, ecg.error
                        p = ecg.prediction
                        if ecg.status == "processed" and p is not None:
                            r.probabilities = [float(p.probabilities[c]) for c in codes]
                            if spool_dir is not None and p.input_sha256 is not None:
                                try:
                                    seen = model_input_array(ecg, spool_dir)
                                except ExportError as exc:
                                    log.warning("%s", exc)
                                    continue
                                expected = tracings[r.index].astype(np.float64) * gain
                                r.input_max_abs_diff_mv = float(np.max(np.abs(seen - expected)))
            if progress:
                progress(len(results) - len(waiting))
            if not waiting:
                break
            if time.monotonic() > deadline:
                log.warning("%d instances not final after %.0f s", len(waiting), timeout)
                break
            time.sleep(poll_s)
    finally:
        engine.dispose()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class StartedGateway:
    host: str
    port: int
    ae_title: str
    database_url: str
    log_path: Path
    process: subprocess.Popen[bytes]
    start_timeout: float = 300.0
    spool_dir: Path | None = None
    #: Where this process's lines start in ``log_path`` (the file is appended to).
    log_offset: int = 0


def gateway_environment(
    run_dir: Path, database_url: str, model_files: Sequence[str], port: int, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a gateway started for the run: the installation's
    configuration, with its own database, spool and port, listening on
    loopback only, and the door open to the validator."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "ECG_GATEWAY_STORAGE__DATABASE_URL": database_url,
            "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(run_dir / "spool"),
            "ECG_GATEWAY_MODEL__FILES": json.dumps([str(Path(f).resolve()) for f in model_files]),
            "ECG_GATEWAY_DICOM__HOST": "127.0.0.1",
            "ECG_GATEWAY_DICOM__PORT": str(port),
            "ECG_GATEWAY_DICOM__TLS_PORT": "0",
            "ECG_GATEWAY_DICOM__ALLOWED_CALLING_AETS": "[]",
            "ECG_GATEWAY_DICOM__ALLOWED_HOSTS": "[]",
            "ECG_GATEWAY_HL7__ENABLED": "false",
        }
    )
    return env


@contextmanager
def started_gateway(
    run_dir: Path,
    database_url: str,
    model_files: Sequence[str],
    ae_title: str,
    *,
    config_path: str | None = None,
    port: int | None = None,
    start_timeout: float = 300.0,
) -> Iterator[StartedGateway]:
    """Run ``ecg-gateway serve --components scp,worker`` for the duration of
    the block; its output goes to ``run_dir/gateway.log``.  The process is
    started at once and NOT waited for (its model loads meanwhile): call
    :func:`wait_listening` before sending."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = run_dir / "gateway.log"
    cmd = [sys.executable, "-m", "gateway"]
    if config_path:
        cmd += ["--config", str(Path(config_path).resolve())]
    cmd += ["serve", "--components", "scp,worker"]
    env = gateway_environment(run_dir, database_url, model_files, port)
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=os.getcwd(), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    log.info("gateway for the run started (pid %d, port %d, log %s)", proc.pid, port, log_path)
    try:
        yield StartedGateway(
            "127.0.0.1",
            port,
            ae_title,
            database_url,
            log_path,
            proc,
            start_timeout,
            spool_dir=run_dir / "spool",
            log_offset=log_offset,
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _logged_started(gw: StartedGateway) -> bool:
    try:
        with open(gw.log_path, "rb") as f:
            f.seek(gw.log_offset)
            return STARTED_LINE.encode() in f.read()
    except OSError:
        return False


def wait_listening(gw: StartedGateway) -> None:
    """Block until the started gateway accepts connections and has logged
    that it started (it binds its port before loading the model); raises
    :class:`RoundTripError` (with the log's tail) when it exits or times out."""
    deadline = time.monotonic() + gw.start_timeout
    while not (_port_open(gw.host, gw.port) and _logged_started(gw)):
        if gw.process.poll() is not None:
            raise RoundTripError(
                f"the gateway exited with code {gw.process.returncode} before listening; "
                f"last lines of {gw.log_path}:\n{_tail(gw.log_path)}"
            )
        if time.monotonic() > deadline:
            raise RoundTripError(
                f"the gateway did not listen on port {gw.port} within {gw.start_timeout:.0f} s; see {gw.log_path}"
            )
        time.sleep(0.2)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def parse_target(text: str, default_aet: str) -> tuple[str, int, str]:
    """``HOST:PORT[:AET]`` -> (host, port, called AE title)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit() or not 1 <= int(parts[1]) <= 65535:
        raise ValueError(f"--target must be HOST:PORT[:AET], got {text!r}")
    aet = parts[2] if len(parts) == 3 and parts[2] else default_aet
    return parts[0], int(parts[1]), aet
