"""DICOMweb STOW-RS on the admin listener, with dicomweb-client (the real
client) against uvicorn serving the admin app, and raw HTTP for the requests
a client library would not send (bad types, malformed bodies, no token)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from admin_helpers import audit_rows, session_csrf, web_login
from conftest import free_port
from gateway.admin.app import create_app, make_server
from gateway.admin.stow import STOW_CALLING_AE, accepts_dicom_json, check_request_type
from gateway.config import Config
from gateway.receive.spool import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    DATA_SET_TOO_LARGE,
    STUDY_UID_MISMATCH,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
)
from gateway.store.models import RECEIVED, REJECTED, EcgInstance
from receive_helpers import ecg_bytes, spool_files

TOKEN = "stow-token-0123456789"
BOUNDARY = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


@dataclass
class Served:
    base: str
    spool: Path
    woken: list[int]

    def client(self, token: str | None = TOKEN) -> DICOMwebClient:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        client = DICOMwebClient(url=f"{self.base}/dicomweb", headers=headers)
        client.set_http_retry_params(retry=False)
        return client


@contextmanager
def serving(db_url: str, spool: Path, **sections: dict[str, Any]) -> Iterator[Served]:
    port = free_port()
    settings: dict[str, Any] = {
        "storage": {"database_url": db_url, "spool_dir": str(spool)},
        "dicom": {"min_free_disk_mb": 0},
        "admin": {"host": "127.0.0.1", "port": port, "token": TOKEN},
    }
    for name, values in sections.items():
        settings.setdefault(name, {}).update(values)
    cfg = Config.model_validate(settings)
    from gateway.store.db import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    woken: list[int] = []
    server = make_server(create_app(cfg, make_sessionmaker(engine), on_stored=woken.append), cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", spool, woken)
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[Served]:
    with serving(db_url, tmp_path / "spool") as s:
        yield s


def dataset(sample_path: Path, **kwargs: Any) -> Dataset:
    """The sample with a fresh SOP Instance UID (and file meta: dcmwrite then writes a PS3.10 file)."""
    return dcmread(io.BytesIO(ecg_bytes(sample_path, **kwargs)))


def uids(seq: Any) -> list[str]:
    return [str(item.ReferencedSOPInstanceUID) for item in seq]


def multipart(*parts: bytes, part_type: str = "application/dicom", close: bool = True) -> bytes:
    body = b""
    for part in parts:
        body += f"\r\n--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part
    return body + (f"\r\n--{BOUNDARY}--".encode() if close else b"")


def rows(session_factory) -> list[EcgInstance]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return list(s.scalars(select(EcgInstance).order_by(EcgInstance.id)))


def test_mixed_batch_one_refused(served: Served, session_factory, sample_path: Path) -> None:
    """Four instances (over dicomweb-client's 1 MB chunk size: a chunked body), one without
    a waveform: 202, three referenced, one failed with 0xA900, and each row says so."""
    good = [dataset(sample_path) for _ in range(3)]
    bad = dataset(sample_path, drop_waveform=True)
    batch = [good[0], bad, good[1], good[2]]
    response = served.client().store_instances(datasets=batch)
    assert uids(response.ReferencedSOPSequence) == [str(ds.SOPInstanceUID) for ds in good]
    assert {str(i.ReferencedSOPClassUID) for i in response.ReferencedSOPSequence} == {str(bad.SOPClassUID)}
    [failed] = response.FailedSOPSequence
    assert str(failed.ReferencedSOPInstanceUID) == str(bad.SOPInstanceUID)
    assert failed.FailureReason == DATA_SET_DOES_NOT_MATCH_SOP_CLASS == 0xA900
    stored = rows(session_factory)
    by_uid = {r.sop_instance_uid: r for r in stored}
    assert [by_uid[str(ds.SOPInstanceUID)].status for ds in good] == [RECEIVED] * 3
    refused = by_uid[str(bad.SOPInstanceUID)]
    assert refused.status == REJECTED and refused.error == "no WaveformSequence"
    assert {r.calling_ae for r in stored} == {STOW_CALLING_AE} and {r.peer_address for r in stored} == {"127.0.0.1"}
    assert len(spool_files(served.spool)) == 3
    assert sorted(served.woken) == sorted(by_uid[str(ds.SOPInstanceUID)].id for ds in good)
    # the spooled bytes are the PS3.10 files the client sent, byte for byte
    for ds in good:
        sent = io.BytesIO()
        ds.save_as(sent)
        assert (served.spool / by_uid[str(ds.SOPInstanceUID)].spool_path).read_bytes() == sent.getvalue()


def test_all_stored_is_200_and_a_resend_is_a_duplicate(served: Served, session_factory, sample_path: Path) -> None:
    batch = [dataset(sample_path) for _ in range(2)]
    study = str(batch[0].StudyInstanceUID)
    raw = [io.BytesIO() for _ in batch]
    for ds, out in zip(batch, raw, strict=True):
        ds.save_as(out)
    for _ in range(2):  # the second time: the same instances again, stored before
        r = httpx.post(
            f"{served.base}/dicomweb/studies/{study}",
            content=multipart(*(b.getvalue() for b in raw)),
            headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/dicom+json"
        body = r.json()
        assert "00081198" not in body
        assert [i["00081155"]["Value"][0] for i in body["00081199"]["Value"]] == [str(d.SOPInstanceUID) for d in batch]
    assert [r.status for r in rows(session_factory)] == [RECEIVED, RECEIVED]
    assert len(served.woken) == 2  # duplicates wake nobody


def test_study_in_the_path_must_match(served: Served, session_factory, sample_path: Path) -> None:
    ours, other = dataset(sample_path), dataset(sample_path, changes={"StudyInstanceUID": generate_uid()})
    response = served.client().store_instances(datasets=[ours, other], study_instance_uid=str(ours.StudyInstanceUID))
    assert uids(response.ReferencedSOPSequence) == [str(ours.SOPInstanceUID)]
    [failed] = response.FailedSOPSequence
    assert (str(failed.ReferencedSOPInstanceUID), failed.FailureReason) == (
        str(other.SOPInstanceUID),
        STUDY_UID_MISMATCH,
    )
    refused = next(r for r in rows(session_factory) if r.sop_instance_uid == str(other.SOPInstanceUID))
    assert refused.status == REJECTED and "Study Instance UID" in refused.error


def test_none_stored_is_409_with_reasons(served: Served, session_factory, sample_path: Path) -> None:
    """Implicit VR (not for web services, PS3.18 8.7.3) and a bare data set (no PS3.10 file):
    409, which dicomweb-client raises; the body names both failures."""
    implicit = dataset(sample_path, transfer_syntax=ImplicitVRLittleEndian)
    bare = dataset(sample_path)
    del bare.file_meta
    bare.preamble = None
    with pytest.raises(requests.HTTPError) as raised:
        served.client().store_instances(datasets=[implicit, bare])
    response = raised.value.response
    assert response.status_code == 409
    failures = {i["00081155"]["Value"][0]: i["00081197"]["Value"][0] for i in response.json()["00081198"]["Value"]}
    assert failures == {
        str(implicit.SOPInstanceUID): TRANSFER_SYNTAX_NOT_SUPPORTED,
        str(bare.SOPInstanceUID): CANNOT_UNDERSTAND,
    }
    assert "00081199" not in response.json()
    errors = sorted(r.error for r in rows(session_factory))
    assert errors[0].startswith("not a DICOM file") and "DICM" in errors[0]
    assert "transfer syntax 1.2.840.10008.1.2 " in errors[1]
    assert spool_files(served.spool) == []


@pytest.mark.one_db
def test_token_is_required(served: Served, session_factory, sample_path: Path) -> None:
    for token in (None, "wrong-token"):
        with pytest.raises(requests.HTTPError) as raised:
            served.client(token).store_instances(datasets=[dataset(sample_path)])
        assert raised.value.response.status_code == 401
        assert raised.value.response.headers["www-authenticate"] == "Bearer"
    # the token in the query is no credential; a web session cookie neither
    r = httpx.post(f"{served.base}/dicomweb/studies?token={TOKEN}", content=b"x", headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 401
    with httpx.Client(base_url=served.base) as browser:
        web_login(browser, TOKEN)
        r = browser.post(
            "/dicomweb/studies",
            content=multipart(ecg_bytes(sample_path)),
            headers={"Content-Type": STOW_TYPE, "X-CSRF-Token": session_csrf(browser)},
        )
        assert r.status_code == 401 and "bearer token" in r.json()["detail"]
    assert rows(session_factory) == []
    # the admin listener's headers are on these answers too
    assert r.headers["content-security-policy"].startswith("default-src 'self'")


@pytest.mark.one_db
def test_no_credential_configured_is_403(db_url: str, sample_path: Path, tmp_path: Path) -> None:
    with serving(db_url, tmp_path / "spool", admin={"token": ""}) as untokened:
        with pytest.raises(requests.HTTPError) as raised:
            untokened.client("anything").store_instances(datasets=[dataset(sample_path)])
        assert raised.value.response.status_code == 403
        assert "set [admin] token" in raised.value.response.json()["detail"]


@pytest.mark.one_db
def test_roles_that_may_send(served: Served, session_factory, sample_path: Path) -> None:
    """A viewer's API token is refused (403); a reader's stores, and the audit row names the sender."""
    from gateway.admin.users import add_user, issue_token

    tokens = {}
    with session_factory() as db:
        for role in ("viewer", "reader"):
            add_user(db, f"cart-{role}", role, None, actor="test")
            tokens[role] = issue_token(db, f"cart-{role}", actor="test")
        db.commit()
    with pytest.raises(requests.HTTPError) as raised:
        served.client(tokens["viewer"]).store_instances(datasets=[dataset(sample_path)])
    assert raised.value.response.status_code == 403
    assert raised.value.response.json()["detail"] == "cart-viewer (viewer) may not send: needs the reader role"
    assert rows(session_factory) == []
    ds = dataset(sample_path)
    answer = served.client(tokens["reader"]).store_instances(datasets=[ds])
    assert uids(answer.ReferencedSOPSequence) == [str(ds.SOPInstanceUID)]
    [row] = rows(session_factory)
    [entry] = [a for a in audit_rows(session_factory) if a.action == "dicomweb_store"]
    assert (entry.actor, entry.address, entry.detail["ecg_ids"], entry.detail["via"]) == (
        "cart-reader",
        "127.0.0.1",
        [row.id],
        "api",
    )


@pytest.mark.one_db
@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ("multipart/form-data; boundary=x", 415),
        ("", 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
    ],
)
def test_wrong_content_type(served: Served, session_factory, sample_path: Path, content_type: str, status: int) -> None:
    r = httpx.post(
        f"{served.base}/dicomweb/studies",
        content=multipart(ecg_bytes(sample_path)),
        headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == status, r.text
    assert rows(session_factory) == []


@pytest.mark.one_db
@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", "empty request body"),
        (b"no multipart here at all", "malformed multipart body"),
        ("no closing delimiter", "ends before its closing delimiter"),
        (f"--{BOUNDARY}--".encode(), "no instance in the request"),
        ("header without colon", "malformed multipart body"),
    ],
)
def test_malformed_multipart_stores_nothing(
    served: Served, session_factory, sample_path: Path, body: Any, detail: str
) -> None:
    good = ecg_bytes(sample_path)
    if body == "no closing delimiter":
        body = multipart(good, good, close=False)
    elif body == "header without colon":
        no_colon = f"\r\n--{BOUNDARY}\r\nContent-Type application/dicom\r\n\r\n".encode()
        body = multipart(good, close=False) + no_colon + good + f"\r\n--{BOUNDARY}--".encode()
    r = httpx.post(
        f"{served.base}/dicomweb/studies",
        content=body,
        headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert detail in r.json()["detail"]
    assert rows(session_factory) == [] and spool_files(served.spool) == []
    assert list((served.spool / ".incoming").iterdir()) == []  # the parts' temporary files are gone


@pytest.mark.one_db
def test_part_of_another_type_fails_alone(served: Served, session_factory, sample_path: Path) -> None:
    good = ecg_bytes(sample_path)
    body = multipart(good, close=False) + multipart(ecg_bytes(sample_path), part_type="application/octet-stream")
    r = httpx.post(
        f"{served.base}/dicomweb/studies",
        content=body,
        headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    [failed] = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [CANNOT_UNDERSTAND]
    assert [row.status for row in rows(session_factory)] == [RECEIVED]


@pytest.mark.one_db
def test_oversize_instance_and_request(db_url: str, session_factory, sample_path: Path, tmp_path: Path) -> None:
    """An instance over [dicom] max_dataset_mb fails alone with 0xA701 (nothing kept); a body
    over [ingest] stow_max_request_mb is 413, whether its length is announced or it comes chunked;
    so are more parts than stow_max_instances."""
    small = ecg_bytes(sample_path)
    big = ecg_bytes(sample_path, changes={"PatientComments": "x" * (1024 * 1024)})
    with serving(
        db_url,
        tmp_path / "spool",
        dicom={"max_dataset_mb": 1},
        ingest={"stow_max_request_mb": 2, "stow_max_instances": 3},
    ) as s:
        headers = {"Content-Type": STOW_TYPE, "Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(f"{s.base}/dicomweb/studies", content=multipart(big, small), headers=headers, timeout=30)
        assert r.status_code == 202, r.text
        [failed] = r.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [DATA_SET_TOO_LARGE]
        assert failed["00081155"]["Value"] == [dcmread(io.BytesIO(big)).SOPInstanceUID]  # named from the part's head
        [row] = rows(session_factory)  # the big one: no row, no file
        assert row.status == RECEIVED and (s.spool / row.spool_path).read_bytes() == small  # after it, intact

        huge = multipart(big, big, small)  # over 2 MB
        r = httpx.post(f"{s.base}/dicomweb/studies", content=huge, headers=headers, timeout=30)
        assert r.status_code == 413 and "stow_max_request_mb" in r.json()["detail"]

        def chunked() -> Iterator[bytes]:
            for start in range(0, len(huge), 65536):
                yield huge[start : start + 65536]

        r = httpx.post(f"{s.base}/dicomweb/studies", content=chunked(), headers=headers, timeout=30)
        assert r.status_code == 413 and "stow_max_request_mb" in r.json()["detail"]

        r = httpx.post(
            f"{s.base}/dicomweb/studies", content=multipart(small, small, small, small), headers=headers, timeout=30
        )
        assert r.status_code == 413 and "stow_max_instances" in r.json()["detail"]
        assert len(rows(session_factory)) == 1
        assert list((s.spool / ".incoming").iterdir()) == []


@pytest.mark.one_db
def test_a_body_that_stalls_is_cut_off(
    db_url: str, session_factory, sample_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a body, then nothing: closed after [admin] request_timeout_s, nothing stored or left behind."""
    import socket

    body = multipart(ecg_bytes(sample_path), ecg_bytes(sample_path))
    with serving(db_url, tmp_path / "spool", admin={"request_timeout_s": 1}) as s:
        port = int(s.base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = (
                f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: {STOW_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            sock.sendall(head + body[: len(body) // 2])
            assert sock.recv(65536) == b""  # closed by the gateway, no answer
        deadline = time.monotonic() + 10
        while "nothing stored" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "the connection closed before the body was complete; nothing stored" in caplog.text
        assert rows(session_factory) == [] and list((s.spool / ".incoming").iterdir()) == []


@pytest.mark.one_db
def test_invalid_study_in_the_path(served: Served, sample_path: Path) -> None:
    r = httpx.post(
        f"{served.base}/dicomweb/studies/1.2.x",
        content=multipart(ecg_bytes(sample_path)),
        headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 400 and "not a valid UID" in r.json()["detail"]


@pytest.mark.one_db
def test_accept_without_dicom_json_is_406(served: Served, session_factory, sample_path: Path) -> None:
    r = httpx.post(
        f"{served.base}/dicomweb/studies",
        content=multipart(ecg_bytes(sample_path)),
        headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {TOKEN}", "Accept": "application/dicom+xml"},
        timeout=30,
    )
    assert r.status_code == 406 and rows(session_factory) == []


def test_accepts_dicom_json() -> None:
    assert accepts_dicom_json(None) and accepts_dicom_json("*/*") and accepts_dicom_json("application/dicom+json")
    assert accepts_dicom_json("application/dicom+xml, application/json;q=0.5")
    assert not accepts_dicom_json("application/dicom+xml") and not accepts_dicom_json("application/json;q=0")


def test_check_request_type() -> None:
    assert check_request_type('Multipart/Related; TYPE="Application/DICOM"; boundary=abc') == b"abc"
    assert (
        check_request_type(f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"') == BOUNDARY.encode()
    )
