"""Issue 18 §5, hostile Philips XML and aECG files: XML bombs, external
entities (file and network), a 1 GB file, a text node over libxml2's limit,
wrong namespaces, missing leads, text in digit lists, garbage and
compression-bomb XLI data.  Each is refused with a clear reason and a row
saying why, with bounded memory, and the log names the UID / db id, never
the patient."""

from __future__ import annotations

import base64
import logging
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from gateway.cli import app
from gateway.formats import FormatError, decode, philips, read_values
from gateway.normalise import NormaliseError, NormaliseParams
from gateway.process.worker import Worker
from gateway.rebuild import normalise_document
from gateway.receive.door import Refusal, incoming_from_bytes
from gateway.receive.spool import CANNOT_UNDERSTAND, SUCCESS, StoreContext, store_instance
from gateway.store.models import REJECTED, EcgInstance, Hl7Message
from gateway.store.spool import Spool
from test_process import make_config

DATA = Path(__file__).parent / "fixtures" / "inputs"
AECG = (DATA / "aecg" / "hl7_aecg_example.xml").read_bytes()
PHILIPS_103 = (DATA / "philips" / "129DYPRG.XML").read_bytes()
PHILIPS_104 = (DATA / "philips" / "ad4d3d80-d165_1-04_orig.xml").read_bytes()
ROOT = Path(__file__).resolve().parents[1]
DOCTYPE = "a DOCTYPE (DTD) is not accepted in an ECG document"

LAUGHS = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(2, 10))
BILLION_LAUGHS = (
    f'<?xml version="1.0"?><!DOCTYPE AnnotatedECG [<!ENTITY lol1 "lol">{LAUGHS}]>'
    '<AnnotatedECG xmlns="urn:hl7-org:v3"><title>&lol9;</title></AnnotatedECG>'
).encode()


def with_doctype(doc: bytes, subset: str, reference: str) -> bytes:
    """The aECG sample with a DOCTYPE before its root and ``reference`` in the subject's name."""
    start = doc.index(b"<AnnotatedECG")
    body = doc[start:].replace(b"<name>Clark</name>", f"<name>{reference}</name>".encode())
    return doc[:start] + f"<!DOCTYPE AnnotatedECG [{subset}]>\n".encode() + body


def store(raw: bytes, ctx: StoreContext):  # type: ignore[no-untyped-def]
    incoming = incoming_from_bytes(raw, "ingest")
    assert not isinstance(incoming, Refusal)
    return store_instance(incoming, ctx)


@pytest.fixture
def ctx(session_factory, tmp_path: Path) -> StoreContext:  # type: ignore[no-untyped-def]
    return StoreContext(session_factory, Spool(tmp_path / "spool"))


@pytest.fixture
def listener():  # type: ignore[no-untyped-def]
    """A TCP port that records whether anything connected (an XXE fetch would)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    sock.settimeout(0.2)
    yield sock
    sock.close()


def nothing_connected(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except TimeoutError:
        return True
    return False


def test_xml_bombs_and_external_entities_are_refused_with_a_row(
    ctx: StoreContext, session_factory, listener, caplog
) -> None:
    port = listener.getsockname()[1]
    hostile = {
        "billion laughs": BILLION_LAUGHS,
        "XXE file": with_doctype(AECG, '<!ENTITY xxe SYSTEM "file:///etc/passwd">', "&xxe;"),
        "XXE network": with_doctype(AECG, f'<!ENTITY xxe SYSTEM "http://127.0.0.1:{port}/x">', "&xxe;"),
        "quadratic": with_doctype(AECG, f'<!ENTITY a "{"x" * 20000}">', "&a;" * 1000),
        "Philips UTF-16": (
            PHILIPS_104.decode("utf-16")
            .replace(
                "<restingecgdata",
                '<!DOCTYPE restingecgdata [<!ENTITY x SYSTEM "file:///etc/passwd">]><restingecgdata',
                1,
            )
            .encode("utf-16")
        ),
    }
    caplog.set_level(logging.INFO)
    for name, raw in hostile.items():
        outcome = store(raw, ctx)
        assert outcome.status == CANNOT_UNDERSTAND, name
        assert DOCTYPE in (outcome.reason or ""), (name, outcome.reason)
    with session_factory() as s:
        rows = s.scalars(select(EcgInstance)).all()
    assert len(rows) == len(hostile)
    assert {row.status for row in rows} == {REJECTED}
    assert all(DOCTYPE in (row.error or "") for row in rows)
    assert all(row.spool_path.startswith("rejected/") for row in rows)
    assert nothing_connected(listener)
    assert "root:" not in caplog.text
    assert len(re.findall(r"rejected SOP Instance UID .* ecg id \d+\) from -@ingest", caplog.text)) == len(hostile)


def test_the_parser_itself_neither_expands_nor_fetches(listener) -> None:
    """Behind the DOCTYPE refusal: the lxml parser alone (as configured) loads
    no file, fetches nothing and stops the entity bomb."""
    from lxml import etree

    from gateway.formats.xmlsafe import _parser

    port = listener.getsockname()[1]
    for raw in (
        with_doctype(AECG, '<!ENTITY xxe SYSTEM "file:///etc/passwd">', "&xxe;"),
        with_doctype(AECG, f'<!ENTITY xxe SYSTEM "http://127.0.0.1:{port}/x">', "&xxe;"),
    ):
        root = etree.fromstring(raw, _parser())
        assert b"root:" not in etree.tostring(root)
    with pytest.raises(etree.XMLSyntaxError, match="amplification"):
        etree.fromstring(BILLION_LAUGHS, _parser())
    assert nothing_connected(listener)


def test_a_1_gb_xml_is_refused_unread(session_factory, db_url: str, tmp_path: Path) -> None:
    """A sparse 1 GB file (no disk used): ``ingest`` refuses it by its size
    before reading a byte, and keeps nothing."""
    big = tmp_path / "in" / "huge.xml"
    big.parent.mkdir()
    with open(big, "wb") as f:
        f.write(b'<?xml version="1.0"?><AnnotatedECG xmlns="urn:hl7-org:v3"><text>')
        f.truncate(1 << 30)
    env = {
        "ECG_GATEWAY_STORAGE__DATABASE_URL": db_url,
        "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(tmp_path / "spool"),
        "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "0",
    }
    result = CliRunner().invoke(
        app, ["--config", str(ROOT / "config" / "gateway.toml"), "ingest", str(big.parent)], env=env
    )
    assert result.exit_code == 1, result.output
    assert f"refused {big}: 0xA701 data set of {1 << 30} bytes is larger than" in result.output
    assert "1 files: 0 accepted, 0 duplicate, 1 refused" in result.output
    with session_factory() as s:
        assert s.scalars(select(EcgInstance)).all() == []
    # the door holds every caller to the same limit
    assert isinstance(incoming_from_bytes(AECG, "watch", max_bytes=len(AECG) - 1), Refusal)


def test_a_text_node_over_the_parsers_limit_is_refused(ctx: StoreContext) -> None:
    """11 MB of digits in one node (within max_dataset_mb): libxml2 without
    huge_tree stops at 10,000,000 bytes."""
    raw = AECG.replace(b"<digits>", b"<digits>" + b"1 " * 5_500_000, 1)
    outcome = store(raw, ctx)
    assert outcome.status == CANNOT_UNDERSTAND
    assert outcome.reason.startswith("HL7 aECG: not well-formed XML:")


@pytest.mark.parametrize(
    "raw,reason",
    [
        (
            AECG.replace(b'xmlns="urn:hl7-org:v3"', b'xmlns="urn:hl7-org:v2"', 1),
            "HL7 aECG: AnnotatedECG is in the namespace 'urn:hl7-org:v2', not urn:hl7-org:v3",
        ),
        (
            PHILIPS_103.replace(b'xmlns="http://www3.medical.philips.com"', b'xmlns="http://example.com"', 1),
            "Philips XML: restingecgdata is in the namespace 'http://example.com', not http://www3.medical.philips.com",
        ),
        (
            AECG.replace(b'code="RHYTHM"', b'code="OTHER"'),
            "HL7 aECG: no series coded RHYTHM (representative beats alone are not analysed)",
        ),
        (
            AECG.replace(b'extension="subject1"', b""),
            "HL7 aECG: no subject ID (trialSubject/id/@extension): the result could not be filed",
        ),
        (
            PHILIPS_103.replace(b"<patientid>1112010721168bdc</patientid>", b"<patientid/>"),
            "Philips XML: no patient ID (patient/generalpatientdata/patientid, MRN or uniquepatientid): "
            "the result could not be filed",
        ),
        (
            PHILIPS_103.replace(b"<documentversion>1.03</documentversion>", b"<documentversion>2.0</documentversion>"),
            "Philips XML: document type 'SierraECG' version '2.0' is not supported",
        ),
        (AECG[:200_000], "HL7 aECG: not well-formed XML:"),
    ],
)
def test_unreadable_documents_are_refused_at_the_door(
    ctx: StoreContext, session_factory, raw: bytes, reason: str
) -> None:
    outcome = store(raw, ctx)
    assert outcome.status == CANNOT_UNDERSTAND
    assert (outcome.reason or "").startswith(reason), outcome.reason
    with session_factory() as s:
        row = s.scalars(select(EcgInstance)).one()
    assert (row.status, row.error) == (REJECTED, outcome.reason)


def drop_sequence(doc: bytes, code: str) -> bytes:
    """The aECG without the rhythm sequence ``code`` (the first one: the rhythm set comes first)."""
    start = doc.index(f'<code code="{code}"'.encode())
    start = doc.rindex(b"<component>", 0, start)
    end = doc.index(b"</component>", start) + len(b"</component>")
    return doc[:start] + doc[end:]


def test_missing_and_derived_leads_follow_the_dicom_rules() -> None:
    no_v3 = drop_sequence(AECG, "MDC_ECG_LEAD_V3")
    read_values(no_v3, "aecg")  # the door takes it: the normaliser's rule refuses it
    with pytest.raises(NormaliseError, match="^missing lead V3$"):
        normalise_document(no_v3, "aecg", NormaliseParams())
    limbs = AECG
    for lead in ("III", "AVR", "AVL", "AVF"):
        limbs = drop_sequence(limbs, f"MDC_ECG_LEAD_{lead}")
    result = normalise_document(limbs, "aecg", NormaliseParams())
    assert result.report["leads_derived"] == ["III", "aVR", "aVL", "aVF"]
    full = normalise_document(AECG, "aecg", NormaliseParams()).signal
    # the file's own limb leads are I/II combinations to within 1.25 uV (docs/inputs.md)
    assert np.abs(result.signal - full).max() < 2e-3
    # aVR given as -aVR (AVRneg) is negated back
    neg = AECG.replace(b'code="MDC_ECG_LEAD_AVR"', b'code="MDC_ECG_LEAD_AVRneg"', 1)
    digits = re.compile(rb'(code="MDC_ECG_LEAD_AVRneg".*?<digits>)(.*?)(</digits>)', re.S)
    neg = digits.sub(
        lambda m: m.group(1) + b" ".join(str(-int(t)).encode() for t in m.group(2).split()) + m.group(3), neg, count=1
    )
    inverted = normalise_document(neg, "aecg", NormaliseParams())
    assert inverted.report["leads_inverted"] == ["aVR"]
    assert np.abs(inverted.signal - full).max() < 1e-9


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (
            lambda d: d.replace(b"<digits> -2 -2 -2", b"<digits> -2 two -2", 1),
            "HL7 aECG: MDC_ECG_LEAD_I digits are not all integers (value 2 is not)",
        ),
        (
            lambda d: d.replace(b'<scale value="2.5" unit="uV"/>', b'<scale value="2.5" unit="furlong"/>', 1),
            "HL7 aECG: MDC_ECG_LEAD_I scale unit 'furlong' is not a voltage unit (uV, mV, V)",
        ),
        (
            lambda d: d.replace(b'<increment value="0.002" unit="s"/>', b'<increment value="0" unit="s"/>', 1),
            "HL7 aECG: the time increment is not positive",
        ),
        (
            lambda d: drop_sequence(d, "TIME_ABSOLUTE"),
            "HL7 aECG: the RHYTHM series has no TIME_ABSOLUTE or TIME_RELATIVE sequence",
        ),
    ],
)
def test_bad_aecg_values_are_a_clear_rejection(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    raw = mutate(AECG)
    with pytest.raises(FormatError, match="^" + re.escape(reason) + "$"):
        decode(raw, "aecg")
    with pytest.raises(NormaliseError, match="^" + re.escape(reason) + "$"):
        normalise_document(raw, "aecg", NormaliseParams())


def test_aecg_time_in_ms_and_explicit_times() -> None:
    ms = AECG.replace(b'<increment value="0.002" unit="s"/>', b'<increment value="2" unit="ms"/>', 1)
    assert decode(ms, "aecg").rate_text == "500"
    times = " ".join(str(2 * k) for k in range(5000)).encode()
    explicit = re.sub(
        rb'<value xsi:type="GLIST_TS">.*?</value>',
        b'<value xsi:type="SLIST_PQ"><origin value="0" '
        b'unit="ms"/><scale value="1" unit="ms"/><digits>' + times + b"</digits></value>",
        AECG,
        count=1,
        flags=re.S,
    )
    assert decode(explicit, "aecg").rate_text == "500"
    uneven = explicit.replace(b"<digits>0 2 4 ", b"<digits>0 3 4 ", 1)
    with pytest.raises(FormatError, match="not evenly spaced"):
        decode(uneven, "aecg")


def _waveform(doc: str, payload: str) -> str:
    return re.sub(
        r"(<parsedwaveforms[^>]*>).*?(</parsedwaveforms>)",
        lambda m: m.group(1) + payload + m.group(2),
        doc,
        count=1,
        flags=re.S,
    )


def _lzw_bomb(codes: int) -> bytes:
    """An XLI chunk whose LZW stream grows its strings to the dictionary's
    limit, then repeats the longest: ~760 bytes out per 10 bits in."""
    seq = [0] + list(range(256, 1023)) + [1022] * codes
    bits = "".join(f"{c:010b}" for c in seq)
    bits += "0" * (-len(bits) % 8)
    data = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return len(data).to_bytes(4, "little") + b"\0\0" + b"\0\0" + data


def test_garbage_and_bomb_xli_are_refused(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    doc = PHILIPS_103.decode()
    garbage = _waveform(doc, base64.b64encode(bytes(range(256)) * 20).decode()).encode()
    with pytest.raises(FormatError, match="^Philips XML: sierraecg cannot decode it: "):
        decode(garbage, "philips")
    not_base64 = _waveform(doc, "@@@ not base64 @@@").encode()
    with pytest.raises(FormatError, match="^Philips XML: sierraecg cannot decode it: "):
        decode(not_base64, "philips")
    monkeypatch.setattr(philips, "MAX_DECODED_BYTES", 200_000)  # the bound, small enough for a quick test
    bomb = _waveform(doc, base64.b64encode(_lzw_bomb(2000)).decode()).encode()
    assert len(bomb) < 60_000
    with pytest.raises(FormatError, match="^Philips XML: the XLI-compressed waveforms inflate past 200000 bytes$"):
        decode(bomb, "philips")
    assert philips._budget.left is None  # the budget is the decode's own, never left behind


@pytest.mark.slow  # the worker with the model, a Philips decode and a PDF: ~8 s on a loaded machine
@pytest.mark.one_db("sqlite")
def test_worker_rejects_with_a_row_an_oru_and_no_phi_in_the_log(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, caplog
) -> None:
    cfg = make_config(db_url, tmp_path, demo_model)
    ctx = StoreContext(session_factory, Spool.from_config(cfg.storage))
    caplog.set_level(logging.INFO)
    bad = store(AECG.replace(b"<digits> -2 -2 -2", b"<digits> -2 two -2", 1), ctx)
    good = store(PHILIPS_104, ctx)
    assert bad.status == good.status == SUCCESS
    worker = Worker(cfg, session_factory, demo_ensemble)
    while worker.run_once():
        pass
    with session_factory() as s:
        rejected, processed = s.get(EcgInstance, bad.ecg_id), s.get(EcgInstance, good.ecg_id)
        assert (rejected.status, rejected.error) == (
            REJECTED,
            "HL7 aECG: MDC_ECG_LEAD_I digits are not all integers (value 2 is not)",
        )
        assert rejected.report["source_format"] == "aecg"
        assert processed.status == "processed", processed.error
        assert processed.report["source_format"] == "philips"
        assert s.scalars(select(Hl7Message.ecg_id)).all() != []
    assert f"ECG id={bad.ecg_id} sop={rejected.sop_instance_uid} rejected: HL7 aECG: MDC_ECG_LEAD_I" in caplog.text
    # what is rebuilt from the stored original (export, web view, PDF) is what the model saw
    from gateway.rebuild import model_input_array, report_pdf

    with session_factory() as s:
        row = s.get(EcgInstance, good.ecg_id)
        assert model_input_array(row, cfg.storage.spool_dir).shape == (4096, 12)
        assert report_pdf(row, cfg.storage.spool_dir).startswith(b"%PDF")
    for phi in ("Clark", "subject1", "19530508", "9999", "19760101"):
        assert phi not in caplog.text


def test_a_long_digit_list_is_read_with_bounded_memory() -> None:
    """1.2 million values in one lead (4.8 MB of text, under libxml2's 10 MB
    node limit): read without a Python object per value, then refused."""
    import tracemalloc

    raw = AECG.replace(b"<digits>", b"<digits>" + b"-12 " * 1_200_000, 1)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="lead sequences differ in length"):
            decode(raw, "aecg")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 1024 * 1024  # the text (~5 MB as str) and its int64 array (~10 MB)


@pytest.mark.parametrize(
    "raw,reason",
    [
        (
            AECG.replace(b"<code ", b"<a/>" * 250_000 + b"<code ", 1),
            "HL7 aECG: 252370 markup characters ('<'), more than the 200000 elements accepted in one ECG document",
        ),
        (
            PHILIPS_103.replace(b"<documentinfo>", b"<a/>" * 60_000 + b"<documentinfo>", 1),
            "Philips XML: 61366 markup characters ('<'), more than the 50000 elements accepted in one ECG document",
        ),
    ],
)
def test_too_many_elements_are_refused_before_parsing(ctx: StoreContext, raw: bytes, reason: str) -> None:
    """Tiny elements by the million fit the size limit but not memory (lxml
    ~120 bytes, minidom ~1 KB per element): counted before any parsing."""
    outcome = store(raw, ctx)
    assert (outcome.status, outcome.reason) == (CANNOT_UNDERSTAND, reason)
