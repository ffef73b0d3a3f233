"""Red team: STOW-RS multipart edge cases over the real app (TestClient; SQLite and
PostgreSQL): the boundary string inside an instance's bytes, a nested multipart
part, a part without headers, a part of another type, an instance given as a
bare data set, a preamble, LF-only delimiters.  Each answer says which part
failed and why; nothing is stored from a refused part; the good instance is
stored byte for byte."""

from __future__ import annotations

import io
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from gateway.admin.app import create_app
from gateway.config import Config
from gateway.receive.spool import CANNOT_UNDERSTAND
from gateway.store.models import RECEIVED, EcgInstance
from receive_helpers import ecg_bytes
from test_stow import BOUNDARY, STOW_TYPE, TOKEN, multipart

HEADERS = {"Content-Type": STOW_TYPE, "Authorization": f"Bearer {TOKEN}"}


def _client(db_url, session_factory, tmp_path) -> TestClient:  # type: ignore[no-untyped-def]
    cfg = Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "dicom": {"min_free_disk_mb": 0},
            "admin": {"token": TOKEN},
            "ingest": {"stow_enabled": True},
        }
    )
    return TestClient(create_app(cfg, session_factory))


def _failures(r) -> list[int]:  # type: ignore[no-untyped-def]
    return [item["00081197"]["Value"][0] for item in r.json().get("00081198", {}).get("Value", [])]


def test_multipart_edge_cases(db_url, session_factory, sample_path, tmp_path):
    client = _client(db_url, session_factory, tmp_path)
    # the boundary, its closing form and a near-miss inside the instance's own bytes
    tricky = ecg_bytes(sample_path, changes={"PatientComments": f"--{BOUNDARY}--\r\n--{BOUNDARY}x"})
    r = client.post("/dicomweb/studies", content=multipart(tricky), headers=HEADERS)
    assert r.status_code == 200, r.text
    with session_factory() as s:
        [row] = s.scalars(select(EcgInstance)).all()
        assert row.status == RECEIVED and (tmp_path / "spool" / row.spool_path).read_bytes() == tricky

    good = ecg_bytes(sample_path)
    nested = (
        (
            f'\r\n--{BOUNDARY}\r\nContent-Type: multipart/related; type="application/dicom"; boundary=inner'
            "\r\n\r\n--inner\r\nContent-Type: application/dicom\r\n\r\n"
        ).encode()
        + good
        + b"\r\n--inner--"
    )
    refused = {
        "nested multipart": nested + f"\r\n--{BOUNDARY}--".encode(),
        "no part headers": f"\r\n--{BOUNDARY}\r\n\r\n".encode() + good + f"\r\n--{BOUNDARY}--".encode(),
        "text/plain": multipart(good, part_type="text/plain"),
    }
    for name, body in refused.items():
        r = client.post("/dicomweb/studies", content=body, headers=HEADERS)
        assert r.status_code == 409 and _failures(r) == [CANNOT_UNDERSTAND], (name, r.text)
    # a bare data set (no PS3.10 header) is refused with a row saying why
    r = client.post("/dicomweb/studies", content=multipart(good[132:]), headers=HEADERS)
    assert r.status_code == 409 and len(_failures(r)) == 1
    for body, detail in [
        (b"preamble" + multipart(good), "malformed multipart body"),
        (multipart(good).replace(b"\r\n--", b"\n--"), "ends before its closing delimiter"),
    ]:
        r = client.post("/dicomweb/studies", content=body, headers=HEADERS)
        assert r.status_code == 400 and detail in r.json()["detail"]
    with session_factory() as s:
        statuses = [row.status for row in s.scalars(select(EcgInstance).order_by(EcgInstance.id))]
        assert statuses == [RECEIVED, "rejected"]
        assert "not a DICOM file" in (
            s.scalars(select(EcgInstance).order_by(EcgInstance.id.desc())).first().error or ""
        )
    assert list((tmp_path / "spool" / ".incoming").iterdir()) == []


def test_every_failed_item_names_its_uids_even_when_none_is_known(db_url, session_factory, sample_path, tmp_path):
    """PS3.18 Table 10.5.3-3: each Failed SOP Sequence item has Referenced SOP Class UID,
    Referenced SOP Instance UID and Failure Reason.  A part that names no UID (XML sent as
    application/dicom, an empty part, garbage) had only the reason; it now has both UIDs
    with an empty value, and a part of another type named by its own header keeps its
    UIDs.  Read back with pydicom's DICOM JSON reader."""
    from pydicom import Dataset, dcmread

    from receive_helpers import ecg_bytes as make

    client = _client(db_url, session_factory, tmp_path)
    good = make(sample_path)
    other_type = make(sample_path)
    aecg = (Path("/work/shared/data/aecg") / "hl7_aecg_example.xml").read_bytes()
    body = multipart(good, aecg, b"", b"\x00" * 300)[: -len(f"\r\n--{BOUNDARY}--")]
    body += f"\r\n--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\n".encode() + other_type
    body += f"\r\n--{BOUNDARY}--".encode()
    r = client.post("/dicomweb/studies", content=body, headers=HEADERS)
    assert r.status_code == 202 and r.headers["content-type"] == "application/dicom+json", r.text
    response = Dataset.from_json(r.json())
    failed = response.FailedSOPSequence
    assert len(failed) == 4 and len(response.ReferencedSOPSequence) == 1
    for item in failed[:3]:
        assert "ReferencedSOPClassUID" in item and "ReferencedSOPInstanceUID" in item
        assert item.ReferencedSOPInstanceUID in ("", None) and item.FailureReason == CANNOT_UNDERSTAND
    assert failed[3].ReferencedSOPInstanceUID == dcmread(io.BytesIO(other_type)).SOPInstanceUID
    assert failed[3].FailureReason == CANNOT_UNDERSTAND


def test_part_headers_are_not_kept_whole(tmp_path):
    """Each part may carry 16 header lines of 8 KB: all were kept until the answer, so
    1,000 parts held 128 MB besides the body (the parts' bytes go to a file).  Now only
    Content-Type is kept, cut to 256 characters; the parts are still read right."""
    import asyncio

    from starlette.requests import Request

    from gateway.admin.stow import read_parts

    junk = "".join(f"X-Junk-{n}: {'j' * 8000}\r\n" for n in range(15))
    part = f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n{junk}\r\n".encode() + b"DICM"
    body = part * 100 + f"\r\n--{BOUNDARY}--".encode()
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]

    async def receive() -> dict:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def run():  # type: ignore[no-untyped-def]
        request = Request({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)
        return await read_parts(
            request,
            BOUNDARY.encode(),
            tmp_path,
            max_request_bytes=len(body),
            max_part_bytes=1024,
            max_parts=1000,
        )

    parts = asyncio.run(run())
    try:
        assert len(parts.items) == 100 and all(parts.read(p) == b"DICM" for p in parts.items)
        kept = sum(len(k) + len(v) for p in parts.items for k, v in p.headers.items())
        assert kept < 100 * 300, kept  # was 100 x 15 x 8 KB = 12 MB
        assert {p.headers["content-type"] for p in parts.items} == {"application/dicom"}
    finally:
        parts.close()
