"""Helpers for the deliver tests: ECG rows, the npm receiver, the sender thread."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Hl7Config
from gateway.store.models import EcgInstance, Prediction

PEERS = Path(__file__).resolve().parent / "peers"
RECEIVER_JS = PEERS / "hl7_receiver.js"
#: The npm receivers: package -> script (same command line and log format).
RECEIVERS = {"simple-hl7": RECEIVER_JS, "node-hl7-server": PEERS / "hl7_server_receiver.js"}

PROBS = {"1dAVb": 0.61234567, "RBBB": 0.01, "LBBB": 0.00012, "SB": 0.3, "AF": 0.95, "ST": 0.1}
FINDINGS_ABOVE = ["1dAVb", "SB", "AF"]


def hl7_config(port: int, **overrides: Any) -> Hl7Config:
    """Fast timings for tests (no wall-clock assertions depend on them)."""
    values: dict[str, Any] = dict(
        host="127.0.0.1",
        port=port,
        connect_timeout=1.0,
        ack_timeout=1.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        max_attempts=3,
    )
    values.update(overrides)
    return Hl7Config(**values)


def make_ecg(session, *, prediction: bool = True, **fields: Any) -> EcgInstance:  # type: ignore[no-untyped-def]
    """An ECG row (and its Prediction unless ``prediction=False``); flushed, not committed."""
    sop = fields.pop("sop_instance_uid", f"2.25.{uuid.uuid4().int}")
    values: dict[str, Any] = dict(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.1",
        study_instance_uid=f"2.25.{uuid.uuid4().int}",
        patient_id="PAT1",
        issuer_of_patient_id="HOSP",
        patient_name="Doe^John",
        patient_birth_date="19600101",
        patient_sex="M",
        accession_number="ACC1",
        placer_order_number="PLACER1",
        filler_order_number="FILLER1",
        requested_procedure_id="RP1",
        acquisition_datetime="20240102030405",
        spool_path="/nonexistent.dcm",
        sha256="0" * 64,
        size_bytes=1,
        status="processed",
    )
    values.update(fields)
    ecg = EcgInstance(**values)
    session.add(ecg)
    if prediction:
        session.add(
            Prediction(
                ecg=ecg,
                probabilities=dict(PROBS),
                findings=list(FINDINGS_ABOVE),
                thresholds={},
                model_files=[],
                model_sha256="ab" * 32,
                demo_model=False,
                quality_flags=[],
                gateway_version="test",
            )
        )
    session.flush()
    return ecg


def require_receiver(package: str = "simple-hl7") -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (PEERS / "node_modules" / package).is_dir():
        pytest.skip(f"npm peer {package} not installed: run `npm ci` in tests/peers (./dev test does)")


class Receiver:
    """An npm receiver in a child process: simple-hl7 (tests/peers/hl7_receiver.js,
    every mode) or node-hl7-server (tests/peers/hl7_server_receiver.js: AA/AE/AR)."""

    def __init__(
        self,
        port: int,
        log: Path,
        modes: str = "AA",
        matches: dict[str, str] | None = None,
        tls: tuple[Path, Path] | None = None,
        package: str = "simple-hl7",
    ) -> None:
        require_receiver(package)
        self.port, self.log = port, log
        args = ["node", str(RECEIVERS[package]), str(port), str(log), modes]
        for text, mode in (matches or {}).items():
            args += ["--match", f"{text}={mode}"]
        if tls:
            args += ["--tls", str(tls[0]), str(tls[1])]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("listening"):
            self.stop()
            raise RuntimeError(
                f"receiver did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
            )

    def messages(self) -> list[dict[str, Any]]:
        """Every message the receiver handed to its application, in order
        (``connection``: the number of the TCP connection it came on)."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@contextmanager
def receiver(
    port: int,
    log: Path,
    modes: str = "AA",
    matches: dict[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
    package: str = "simple-hl7",
) -> Iterator[Receiver]:
    r = Receiver(port, log, modes, matches, tls, package)
    try:
        yield r
    finally:
        r.stop()


@contextmanager
def sender(session_factory, cfg: Hl7Config) -> Iterator[threading.Event]:  # type: ignore[no-untyped-def]
    """run_sender in a thread; yields its wake event; stops and joins it on exit."""
    from gateway.deliver.sender import run_sender

    stop, wake = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_sender(session_factory, cfg, stop, wake)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=target, name="hl7-sender-test", daemon=True)
    t.start()
    try:
        yield wake
    finally:
        stop.set()
        wake.set()  # ends the idle wait at once
        t.join(15)
        assert not t.is_alive(), "sender thread did not stop"
        assert not errors, errors


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def self_signed_cert(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def joined_texts(msg, code: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The ST/TX observations of OBX-3 ``code`` in order, unescaped; the TX
    pieces of one OBX-4 group ("k.1", "k.2", ... in that order) joined."""
    out: list[str] = []
    group, count = "", 0
    for o in msg.segments("OBX"):
        if str(o[3][0][0]) != code or str(o[2]) not in ("ST", "TX"):
            continue
        text = msg.unescape(str(o[5]))
        if str(o[2]) == "ST":
            assert str(o[4]) == ""
            out.append(text)
            group = ""
            continue
        k, i = str(o[4]).split(".")
        if k == group:
            count += 1
            out[-1] += text
        else:
            group, count = k, 1
            out.append(text)
        assert int(i) == count
    return out
