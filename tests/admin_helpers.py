"""Known rows for the admin tests, built from a real normalisation of the sample ECG."""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from conftest import DB_KINDS, migrated_database
from gateway.config import PAPER_THRESHOLDS
from gateway.store.models import AuditLog, EcgInstance, Hl7Message, Prediction

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
MODEL_SHA = "ab" * 32
XSS_NAME = "<script>alert(1)</script>^[/]EVIL\x1b[2J"  # HTML, rich markup, a terminal escape


@functools.lru_cache(maxsize=2)
def _normalised(sample_path: Path):  # type: ignore[no-untyped-def]
    from pydicom import dcmread

    from gateway.normalise import normalise_dataset

    return normalise_dataset(dcmread(sample_path))


def model_input(sample_path: Path) -> tuple[np.ndarray, dict, list[str]]:
    """(float32 (4096, 12) array, normalisation report, quality flags) of the sample."""
    out = _normalised(sample_path)
    return out.signal.copy(), copy.deepcopy(out.report), list(out.quality_flags)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _ecg(
    n: int,
    spool: Path,
    *,
    status: str,
    patient_id: str,
    name: str,
    accession: str | None,
    error: str | None = None,
    sha256: str | None = None,
    size: int = 0,
) -> EcgInstance:
    return EcgInstance(
        sop_instance_uid=f"1.2.826.0.1.3680043.10.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.1",
        study_instance_uid=f"1.2.826.0.1.3680043.10.2.{n}",
        patient_id=patient_id,
        patient_name=name,
        accession_number=accession,
        spool_path=str(spool),
        sha256=sha256 or "0" * 64,
        size_bytes=size,
        status=status,
        error=error,
        received_at=T0 + timedelta(days=n - 1),
        calling_ae="CART1",
        peer_address="127.0.0.1",
        manufacturer="Mortara",
    )


def _prediction(
    ecg: EcgInstance, probs: dict, signal: np.ndarray, report: dict, flags: list[str], demo: bool = False
) -> Prediction:
    from gateway.normalise import input_sha256, normaliser_version

    findings = [c for c, p in probs.items() if p > PAPER_THRESHOLDS[c]]
    ecg.report = report  # the worker stores the report on the ECG, once
    return Prediction(
        ecg=ecg,
        probabilities=probs,
        findings=findings,
        thresholds=dict(PAPER_THRESHOLDS),
        model_files=[{"path": "models/model.hdf5", "sha256": MODEL_SHA, "demo": demo}],
        model_sha256=MODEL_SHA,
        demo_model=demo,
        quality_flags=flags,
        input_sha256=input_sha256(signal),
        normaliser_version=normaliser_version(),
        gateway_version="test",
        timings={"normalise_ms": 5.0},
    )


def _probs(**high: float) -> dict[str, float]:
    base = {"1dAVb": 0.01, "RBBB": 0.01, "LBBB": 0.01, "SB": 0.02, "AF": 0.03, "ST": 0.04}
    base.update(high)
    return base


def _msg(ecg: EcgInstance, n: int, status: str, ack: str | None = None, resend_of: int | None = None) -> Hl7Message:
    return Hl7Message(
        ecg=ecg,
        control_id=f"CTRL{n}",
        order_key=ecg.patient_id or "none",
        status=status,
        ack=ack,
        payload=f"MSH|^~\\&|ECGGW|ECGGW|EHR|HOSPITAL|20260101||ORU^R01^ORU_R01|CTRL{n}|P|2.5.1\rPID|||{ecg.patient_id}",
        attempts=1 if status != "pending" else 0,
        resend_of=resend_of,
    )


def cart_reading(sample_path: Path) -> tuple[dict, list[str]]:
    """The sample's measurements and statements as the worker stores them."""
    from pydicom import dcmread

    from gateway.report.measurements import extract

    report = extract(dcmread(sample_path))
    return report.measurements, report.statements


def seed(session_factory, sample_path: Path, spool_dir: Path) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Six ECGs with known filters' answers; returns their ids by name.

    ===  ==========  =======  =========  =========  ==============  ===========
    n    status      patient  accession  findings   HL7             demo
    ===  ==========  =======  =========  =========  ==============  ===========
    1    processed   P1       A1         AF         delivered       no
    2    processed   P2 (XSS) A2         RBBB LBBB  pending (2nd)   yes (spool file absolute)
    3    rejected    P1       A3         -          not_sent        -
    4    failed      P3       -          -          not_sent        -
    5    processing  P3       A5         -          not_sent        -
    6    processed   P4       A6         none       failed          no  (spool file missing)
    ===  ==========  =======  =========  =========  ==============  ===========
    """
    spool_dir.mkdir(parents=True, exist_ok=True)
    stored = spool_dir / "2026/01/01/sample.dcm"
    stored.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample_path, stored)
    data = stored.read_bytes()
    signal, report, flags = model_input(sample_path)
    with session_factory() as s:
        e1 = _ecg(
            1,
            stored.relative_to(spool_dir),
            status="processed",
            patient_id="P1",
            name="DOE^JANE",
            accession="A1",
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        )
        _prediction(e1, _probs(AF=0.91), signal, report, flags)
        # the sample's own header values and cart reading (what the worker stores)
        e1.patient_birth_date, e1.patient_sex, e1.acquisition_datetime = "19710123", "F", "20130125105919"
        e1.measurements, e1.cart_statements = cart_reading(sample_path)
        e1_msg = _msg(
            e1, 1, "delivered", ack="MSH|^~\\&|EHR|HOSPITAL|ECGGW|ECGGW|20260101||ACK|A1|P|2.5.1\rMSA|AA|CTRL1"
        )
        copy2 = spool_dir / "2026/01/02/sample.dcm"  # the page draws its trace from the spooled original
        copy2.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_path, copy2)
        e2 = _ecg(
            2,
            copy2,
            status="processed",
            patient_id="P2",
            name=XSS_NAME,
            accession="A2",
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        )
        _prediction(e2, _probs(RBBB=0.8, LBBB=0.6), signal, report, ["V1: flat line"], demo=True)
        _msg(e2, 2, "superseded")
        e3 = _ecg(
            3,
            spool_dir / "x3.dcm",
            status="rejected",
            patient_id="P1",
            name="DOE^JANE",
            accession="A3",
            error="recording too short: 4.0 s < 8.0 s",
        )
        e3.report = {
            "source": {"sampling_frequency_hz": 500.0, "duration_s": 4.0, "channels": 12},
            "leads_found": ["I", "II"],
            "units": ["uV"],
        }
        e4 = _ecg(
            4,
            spool_dir / "x4.dcm",
            status="failed",
            patient_id="P3",
            name="ROE^RICHARD",
            accession=None,
            error="RuntimeError: boom",
        )
        e5 = _ecg(5, spool_dir / "x5.dcm", status="processing", patient_id="P3", name="ROE^RICHARD", accession="A5")
        e6 = _ecg(6, spool_dir / "x6.dcm", status="processed", patient_id="P4", name="POE^EDGAR", accession="A6")
        _prediction(e6, _probs(), signal, report, [])
        _msg(e6, 6, "failed")
        s.add_all([e1, e2, e3, e4, e5, e6])
        s.flush()
        s.add(_msg(e2, 22, "pending", resend_of=e2.messages[0].id))
        s.commit()
        return {
            "e1": e1.id,
            "e2": e2.id,
            "e3": e3.id,
            "e4": e4.id,
            "e5": e5.id,
            "e6": e6.id,
            "m1": e1_msg.id,
            "m2": e2.messages[0].id,
        }


@dataclass
class Seeded:
    """A migrated, seeded database shared by the read-only tests of one module."""

    url: str
    session_factory: object
    ids: dict[str, int]
    spool_dir: Path


def build_readonly_db(request, kind: str, tmp: Path, sample_path: Path):  # type: ignore[no-untyped-def]
    """Yield a migrated, seeded :class:`Seeded` database of ``kind``; cleaned up afterwards."""
    from gateway.store.db import make_engine, make_sessionmaker

    urls = migrated_database(request, kind, tmp)
    url = next(urls)
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    yield Seeded(url, factory, seed(factory, sample_path, tmp / "spool"), tmp / "spool")
    engine.dispose()
    for _ in urls:  # drops the PostgreSQL database
        pass


@pytest.fixture(scope="module", params=DB_KINDS)
def readonly_db(request, tmp_path_factory, sample_path):  # type: ignore[no-untyped-def]
    """Seeded once per module and database kind; tests using it must not write."""
    yield from build_readonly_db(request, request.param, tmp_path_factory.mktemp("admin-ro"), sample_path)


def audit_rows(session_factory) -> list[AuditLog]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    with session_factory() as s:
        return list(s.scalars(select(AuditLog).order_by(AuditLog.id)))


_LOGIN_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


def login_csrf(client) -> str:  # type: ignore[no-untyped-def]
    """Open the login form (which sets the double-submit cookie) and return its CSRF token."""
    page = client.get("/login")
    match = _LOGIN_CSRF.search(page.text)
    assert match, page.text
    return match.group(1)


def web_login(
    client,
    token: str | None = None,
    next_: str = "/ecgs",
    *,
    username: str = "",  # type: ignore[no-untyped-def]
    password: str | None = None,
    **kwargs,
):
    """Log in through the form as a browser does: GET /login, then POST it with its
    CSRF token; the bootstrap ``token`` when no ``username`` is given."""
    from gateway.admin.auth import LOGIN_CSRF_COOKIE

    csrf = login_csrf(client)
    # a Secure cookie (cookie_secure = "always") is not sent back over the test's plain http
    client.cookies.delete(LOGIN_CSRF_COOKIE)
    client.cookies.set(LOGIN_CSRF_COOKIE, csrf)
    data = {
        "next": next_,
        "csrf_token": csrf,
        "username": username,
        "password": password if password is not None else (token or ""),
    }
    return client.post("/login", data=data, follow_redirects=False, **kwargs)


def session_csrf(client) -> str:  # type: ignore[no-untyped-def]
    """The CSRF token of the client's session (what the pages put in their forms)."""
    from gateway.admin.auth import SESSION_COOKIE, csrf_for_new_session

    return csrf_for_new_session(client.cookies[SESSION_COOKIE])
