"""Red team: hostile HL7 aECG values at the door and in the decoder.  Thousands of
lead sequences are refused before their digits are read (were decoded, ~3 s and
~280 MB for 1,500 copies of lead I, then kept as duplicates), in bounded memory
(peak RSS measured in a subprocess); absurd sampling increments and scales are
refused with short reasons (were 300-digit numbers); UTF-16 without a BOM is
refused at the door with a reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.formats import FormatError, decode
from gateway.formats.aecg import MAX_LEADS
from gateway.normalise import NormaliseError, NormaliseParams
from gateway.rebuild import normalise_document
from gateway.receive.door import IncomingInstance, incoming_from_bytes

ROOT = Path(__file__).resolve().parent.parent
AECG_PATH = Path("/work/shared/data/aecg/hl7_aecg_example.xml")
AECG = AECG_PATH.read_bytes()
INCREMENT = b'<increment value="0.002" unit="s"/>'


def with_copies_of_lead_i(raw: bytes, copies: int) -> bytes:
    """The rhythm series' lead I sequence repeated ``copies`` times in place."""
    at = raw.find(b'MDC_ECG_LEAD_I"')
    start, end = raw.rfind(b"<component>", 0, at), raw.find(b"</component>", at) + len(b"</component>")
    return raw[:start] + raw[start:end] * copies + raw[end:]


def test_too_many_lead_sequences_are_refused_with_the_count() -> None:
    ok = with_copies_of_lead_i(AECG, MAX_LEADS - 11)  # 64 sequences: accepted, the copies reported
    result = normalise_document(ok, "aecg", NormaliseParams())
    assert len(result.report["leads_duplicate"]) == MAX_LEADS - 12
    raw = with_copies_of_lead_i(AECG, 1500)
    reason = f"HL7 aECG: 1511 lead sequences in the RHYTHM series, more than the {MAX_LEADS} accepted"
    with pytest.raises(FormatError) as exc:
        decode(raw, "aecg")
    assert str(exc.value) == reason
    with pytest.raises(NormaliseError) as err:
        normalise_document(raw, "aecg", NormaliseParams())
    assert str(err.value) == reason


_MEASURE = """
import json, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_redteam_formats import with_copies_of_lead_i
from gateway.normalise import NormaliseError, NormaliseParams
from gateway.rebuild import normalise_document
from gateway.receive.door import incoming_from_bytes
raw = with_copies_of_lead_i(Path(sys.argv[1]).read_bytes(), 2000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
door = incoming_from_bytes(raw, "test")
try:
    normalise_document(raw, "aecg", NormaliseParams())
    reason = None
except NormaliseError as exc:
    reason = str(exc)
print(json.dumps({"bytes": len(raw), "door": door.problem, "reason": reason,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": before / 1024}))
"""


@pytest.mark.slow  # a subprocess decoding a 50 MB document
def test_thousands_of_leads_are_refused_in_bounded_memory(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(AECG_PATH), str(ROOT / "tests")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert 45e6 < seen["bytes"] < 64 * 2**20  # under the default [dicom] max_dataset_mb
    assert seen["door"] is None  # the door reads the header values; the worker's decode refuses it
    assert seen["reason"] == f"HL7 aECG: 2011 lead sequences in the RHYTHM series, more than the {MAX_LEADS} accepted"
    # the parsed tree of a 50 MB document, nothing per digit (was ~3x more for 1,500 copies decoded)
    assert seen["peak_mb"] - seen["before_mb"] < 250, seen


@pytest.mark.parametrize(
    "increment,reason",
    [
        (b'<increment value="1e-300" unit="s"/>', "sampling rate 1e+300 Hz is outside 100-2000 Hz"),
        (b'<increment value="1e-7" unit="s"/>', "sampling rate 10000000 Hz is outside 100-2000 Hz"),
        (b'<increment value="1e6" unit="s"/>', "sampling rate 0.000001 Hz is outside 100-2000 Hz"),
        (b'<increment value="-0.002" unit="s"/>', "HL7 aECG: the time increment is not positive"),
        (b'<increment value="NaN" unit="s"/>', "HL7 aECG: TIME_ABSOLUTE increment has no numeric value"),
        (b'<increment value="-inf" unit="s"/>', "HL7 aECG: TIME_ABSOLUTE increment has no numeric value"),
    ],
)
def test_absurd_increments_are_refused_with_a_short_reason(increment: bytes, reason: str) -> None:
    with pytest.raises(NormaliseError) as exc:
        normalise_document(AECG.replace(INCREMENT, increment, 1), "aecg", NormaliseParams())
    assert str(exc.value) == reason


def test_an_absurd_scale_is_refused_with_a_short_reason() -> None:
    raw = AECG.replace(b'<scale value="2.5" unit="uV"/>', b'<scale value="1e300" unit="uV"/>', 1)
    with pytest.raises(NormaliseError) as exc:
        normalise_document(raw, "aecg", NormaliseParams())
    assert str(exc.value).startswith(
        "normalised signal is not finite (float32 overflow) in I: I: excessive amplitude ("
    )
    assert str(exc.value).endswith("e+299 mV > 10 mV)") and len(str(exc.value)) < 120


def test_utf16_without_a_bom_is_refused_at_the_door_with_a_reason() -> None:
    with_bom = incoming_from_bytes(AECG.decode("utf-8").encode("utf-16"), "test")
    assert isinstance(with_bom, IncomingInstance) and with_bom.problem is None
    for encoding in ("utf-16-le", "utf-16-be"):
        bare = incoming_from_bytes(AECG.decode("utf-8").encode(encoding), "test")
        assert isinstance(bare, IncomingInstance) and bare.source_format == "aecg"
        assert bare.problem is not None and bare.problem.startswith("HL7 aECG: not well-formed XML: ")


@pytest.mark.parametrize(("fmt", "limit"), [("aecg", 400_000), ("philips", 50_000)])
def test_a_flood_of_attributes_is_refused_before_parsing(fmt: str, limit: int) -> None:
    """The element count bounded the tree, attributes were not: a start tag of 10 MB
    holds 900,000 of them at ~250 bytes each in lxml (26 MB of such tags: 670 MB of
    memory, 2 s).  Counted as '=' before parsing (UTF-16 too), refused with the count."""
    flood = " ".join(f"a{i:x}=''" for i in range(limit + 1))
    if fmt == "aecg":
        raw = f'<AnnotatedECG xmlns="urn:hl7-org:v3"><id {flood}/></AnnotatedECG>'.encode()
    else:
        raw = f'<restingecgdata xmlns="http://www3.medical.philips.com"><x {flood}/></restingecgdata>'.encode("utf-16")
    name = "HL7 aECG" if fmt == "aecg" else "Philips XML"
    reason = f"more than the {limit} attributes accepted in one ECG document"
    door = incoming_from_bytes(raw, "test")
    assert isinstance(door, IncomingInstance) and door.source_format == fmt
    assert door.problem is not None and door.problem.startswith(f"{name}: ") and door.problem.endswith(reason)
    with pytest.raises(FormatError, match=reason):
        decode(raw, fmt)


def test_philips_leads_of_different_lengths_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """sierraecg decodes each lead's XLI chunk on its own: a crafted chunk gives one lead
    fewer samples.  The record was cut to the shortest lead without a word (as aECG
    refuses); now refused with the lengths."""
    from types import SimpleNamespace

    import sierraecg

    raw = (Path("/work/shared/data/philips") / "ad4d3d80-d165_1-04_orig.xml").read_bytes()
    real = sierraecg.read_file

    def one_lead_short(f):  # type: ignore[no-untyped-def]
        ecg = real(f)
        first = ecg.leads[0]
        ecg.leads[0] = SimpleNamespace(label=first.label, samples=first.samples[:4000])
        return ecg

    monkeypatch.setattr(sierraecg, "read_file", one_lead_short)
    with pytest.raises(FormatError) as exc:
        decode(raw, "philips")
    assert str(exc.value) == "Philips XML: the decoded leads differ in length (4000 to 5500 samples)"
    monkeypatch.setattr(sierraecg, "read_file", real)
    assert {len(lead.counts) for lead in decode(raw, "philips").leads} == {5300}  # 5500 less the end-of-record gap
