"""The door for Philips Sierra XML and HL7 aECG files: recognised by content,
stored byte for byte under a stable instance UID, duplicates detected, bad
files refused with a row saying why (gateway.formats, gateway.receive.door)."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.formats import sniff
from gateway.receive.door import Refusal, incoming_from_bytes
from gateway.receive.spool import CANNOT_UNDERSTAND, SUCCESS, StoreContext, store_instance
from gateway.store.models import RECEIVED, REJECTED, EcgInstance
from gateway.store.spool import Spool
from receive_helpers import ecg_bytes

DATA = Path(__file__).parent / "fixtures" / "inputs"  # copies of the real files in ../shared/data (README there)
PHILIPS_103 = DATA / "philips" / "129DYPRG.XML"
PHILIPS_104 = DATA / "philips" / "ad4d3d80-d165_1-04_orig.xml"
AECG = DATA / "aecg" / "hl7_aecg_example.xml"


def test_sniff_by_content(sample_path: Path) -> None:
    assert sniff(PHILIPS_103.read_bytes()) == "philips"
    assert sniff(PHILIPS_104.read_bytes()) == "philips"  # UTF-16 LE with a BOM
    assert sniff(AECG.read_bytes()) == "aecg"  # comments before the root, no declaration
    assert sniff(ecg_bytes(sample_path)) == "dicom"
    assert sniff(b"<html><body/></html>") is None
    assert sniff(b"plain text") is None
    assert sniff(b"") is None
    # UTF-16 without a BOM, big-endian, and a UTF-8 BOM
    text = PHILIPS_104.read_bytes().decode("utf-16")
    assert sniff(text.encode("utf-16-be")) == "philips"
    assert sniff(codecs.BOM_UTF8 + AECG.read_bytes()) == "aecg"
    # a DOCTYPE names the root (the reader refuses it later, with its reason)
    assert sniff(b'<?xml version="1.0"?><!DOCTYPE AnnotatedECG [<!ENTITY a "b">]><AnnotatedECG/>') == "aecg"


@pytest.fixture
def ctx(session_factory, tmp_path: Path) -> StoreContext:  # type: ignore[no-untyped-def]
    return StoreContext(session_factory, Spool(tmp_path / "spool"))


@pytest.mark.parametrize("path,fmt", [(PHILIPS_103, "philips"), (PHILIPS_104, "philips"), (AECG, "aecg")])
def test_sample_stored_byte_for_byte_then_duplicate(ctx: StoreContext, session_factory, path: Path, fmt: str) -> None:
    raw = path.read_bytes()
    incoming = incoming_from_bytes(raw, "watch")
    assert not isinstance(incoming, Refusal)
    assert incoming.source_format == fmt and incoming.uid_valid and incoming.problem is None
    first = store_instance(incoming, ctx)
    assert (first.status, first.duplicate) == (SUCCESS, False)
    again = store_instance(incoming_from_bytes(raw, "ingest"), ctx)  # type: ignore[arg-type]
    assert (again.status, again.duplicate, again.ecg_id) == (SUCCESS, True, first.ecg_id)
    with session_factory() as s:
        rows = s.scalars(select(EcgInstance)).all()
    assert len(rows) == 1
    row = rows[0]
    assert (row.status, row.source_format, row.peer_address, row.sop_class_uid) == (RECEIVED, fmt, "watch", "")
    assert row.sop_instance_uid.startswith("2.25.") and row.spool_path.endswith(".xml")
    assert ctx.spool.resolve(row.spool_path).read_bytes() == raw  # the original, for export
    assert row.patient_id


def test_sample_columns(ctx: StoreContext, session_factory) -> None:
    for path in (PHILIPS_104, AECG):
        store_instance(incoming_from_bytes(path.read_bytes(), "ingest"), ctx)  # type: ignore[arg-type]
    with session_factory() as s:
        rows = {r.source_format: r for r in s.scalars(select(EcgInstance))}
    p, a = rows["philips"], rows["aecg"]
    assert (p.patient_id, p.patient_name, p.patient_birth_date, p.patient_sex) == ("9999", None, "19760101", "F")
    assert (p.acquisition_datetime, p.device_model, p.device_serial) == (
        "20081223194446",
        "PageWriter Touch",
        "EKG16296",
    )
    assert p.placer_order_number is None and p.accession_number is None  # "---" placeholders
    # documentname ad4d3d80-d165-11dd-4823-0161c6aa0029 as a 2.25 UID
    assert p.sop_instance_uid == "2.25.230357497561892805240087388300079923241"
    assert (a.patient_id, a.issuer_of_patient_id, a.patient_name, a.patient_birth_date, a.patient_sex) == (
        "subject1",
        "2.16.840.1.113883.3.400",
        "Clark",
        "19530508",
        "M",
    )
    assert (a.acquisition_datetime, a.manufacturer, a.device_model) == (
        "20021122091000",
        "Mortara Instrument, Inc.",
        "ELI250",
    )


def test_unreadable_document_refused_with_row(ctx: StoreContext, session_factory) -> None:
    raw = AECG.read_bytes().replace(b'xmlns="urn:hl7-org:v3"', b'xmlns="urn:example:wrong"')
    incoming = incoming_from_bytes(raw, "ingest")
    assert not isinstance(incoming, Refusal) and incoming.problem
    outcome = store_instance(incoming, ctx)
    assert outcome.status == CANNOT_UNDERSTAND
    assert outcome.reason == ("HL7 aECG: AnnotatedECG is in the namespace 'urn:example:wrong', not urn:hl7-org:v3")
    with session_factory() as s:
        row = s.scalars(select(EcgInstance)).one()
    assert (row.status, row.error, row.source_format) == (REJECTED, outcome.reason, "aecg")
    assert row.spool_path.startswith("rejected/") and row.spool_path.endswith(".xml")


def test_too_large_refused_at_the_door() -> None:
    raw = AECG.read_bytes()
    refusal = incoming_from_bytes(raw, "ingest", max_bytes=1000)
    assert isinstance(refusal, Refusal) and refusal.status == 0xA701
    assert f"{len(raw)} bytes" in refusal.reason


def test_the_original_is_exported_as_received(db_url: str, session_factory, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from gateway.admin.app import create_app
    from gateway.config import Config

    token = "t0ken-for-formats"
    cfg = Config.model_validate(
        {"storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")}, "admin": {"token": token}}
    )
    raw = AECG.read_bytes()
    outcome = store_instance(
        incoming_from_bytes(raw, "ingest"),  # type: ignore[arg-type]
        StoreContext(session_factory, Spool(Path(cfg.storage.spool_dir))),
    )
    client = TestClient(create_app(cfg, session_factory))
    r = client.get(f"/api/ecgs/{outcome.ecg_id}/original.dcm", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.content == raw
    assert r.headers["content-type"].startswith("application/xml")
    assert r.headers["content-disposition"] == f'attachment; filename="ecg-{outcome.ecg_id}.xml"'


def test_philips_1_04_01_and_1_04_02_documents() -> None:
    from gateway.formats import decode, read_values

    raw = PHILIPS_104.read_bytes().decode("utf-16")
    for version in ("1.04.01", "1.04.02"):
        doc = raw.replace(
            "<documentversion>1.04</documentversion>", f"<documentversion>{version}</documentversion>"
        ).encode("utf-16")
        assert read_values(doc, "philips").details["document"] == f"PhilipsECG {version}"
    assert decode(doc, "philips").n_samples == 5300  # sierraecg takes 1.04.02 too (one decode: ~1 s)
