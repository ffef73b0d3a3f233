"""gateway.dicomio.reader.read, the one DICOM reader: its fast path gives
exactly what pydicom.dcmread gives (values, and normalise's outcome), for the
sample, every variant, all three transfer syntaxes, and truncated, corrupt or
garbled bytes; hypothesis drives the differential property (same values, or
both refuse with dcmread's message)."""

from __future__ import annotations

import io
import json
import random
import warnings
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

import ecg_variants as v
from gateway.dicomio.reader import WAVEFORM, DicomError, file_meta_uids, read
from gateway.dicomio.values import value
from gateway.normalise import NormaliseError, NormaliseParams, normalise_dataset
from gateway.report.measurements import VALUE_KEYWORDS, extract

SYNTAXES = {
    "implicit": ImplicitVRLittleEndian,
    "explicit": ExplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
}


def _set(path: str, value: Any):
    """A builder setting one attribute of the rhythm group (dotted path below it)."""

    def build(ds: Dataset) -> Dataset:
        out = v.new_uids(ds)
        target = v.rhythm(out)
        *parents, name = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        setattr(target, name, value)
        return out

    return build


#: Every builder of tests/ecg_variants.py, plus rejections normalise names.
VARIANTS = {
    "sample": lambda ds: ds,
    "new-uids": v.new_uids,
    "rate-500": lambda ds: v.with_rate(ds, 500),
    "rate-250": lambda ds: v.with_rate(ds, 250),
    "eight-lead": v.eight_lead,
    "keep-channels-no-ii": lambda ds: v.keep_channels(ds, ["I", "V1", "V2", "V3", "V4", "V5", "V6"]),
    "drop-v3": lambda ds: v.drop_lead(ds, "V3"),
    "shuffled": v.shuffled,
    "mv-baseline": v.millivolts_with_baseline,
    "unit-mv": lambda ds: v.with_unit(ds, "mV", "0.00125"),
    "unit-mmhg": lambda ds: v.with_unit(ds, "mmHg", "1"),
    "mdc-codes": v.mdc_codes,
    "general-32bit": v.general_32bit,
    "twenty-seconds": lambda ds: v.with_duration(ds, 20),
    "five-seconds": lambda ds: v.with_duration(ds, 5),
    "median-beat-only": v.median_beat_only,
    "rate-99": _set("SamplingFrequency", "99"),
    "unsigned": _set("WaveformSampleInterpretation", "US"),
    "sensitivity-0": _set("ChannelDefinitionSequence.6.ChannelSensitivity", "0"),
    "no-waveform": lambda ds: _without_waveform(ds),
}


def _without_waveform(ds: Dataset) -> Dataset:
    out = v.new_uids(ds)
    del out.WaveformSequence
    return out


def encode(ds: Dataset, syntax: str) -> bytes:
    out = v.new_uids(ds)
    out.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def outcome(ds: Dataset, params: NormaliseParams = NormaliseParams()) -> tuple:
    """What normalise makes of ``ds``: signal, report and flags, or the reason."""
    try:
        result = normalise_dataset(ds, params)
    except NormaliseError as exc:
        return "rejected", str(exc), json.dumps(exc.report, sort_keys=True, default=str)
    except Exception as exc:  # noqa: BLE001 - compared, not hidden: both reads must fail alike
        return "error", type(exc).__name__, str(exc)
    return "ok", result.signal, json.dumps(result.report, sort_keys=True, default=str), result.quality_flags


def assert_same(fast: tuple, slow: tuple) -> None:
    assert fast[0] == slow[0], (fast[:2], slow[:2])
    if fast[0] == "ok":
        assert fast[1].dtype == slow[1].dtype
        np.testing.assert_array_equal(fast[1], slow[1])
        assert fast[2:] == slow[2:]
    else:
        assert fast == slow


def dcmread_outcome(raw: bytes) -> tuple:
    """Today's worker: dcmread, and its failure as the parse error."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw))
    except Exception as exc:  # noqa: BLE001
        return "unreadable", str(exc) or type(exc).__name__
    return outcome(ds)


def fast_outcome(raw: bytes) -> tuple:
    try:
        ds = read(raw)
    except DicomError as exc:
        return "unreadable", str(exc)
    return outcome(ds)


@pytest.fixture(scope="module")
def sample() -> Dataset:
    return v.load_sample()


@pytest.mark.parametrize("syntax", list(SYNTAXES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_normalises_exactly_as_after_dcmread(sample, variant, syntax):
    raw = encode(VARIANTS[variant](sample), SYNTAXES[syntax])
    fast = read(raw)
    # the fast path itself ran (the fallback, dcmread, keeps the annotations)
    assert "WaveformAnnotationSequence" not in fast and "AcquisitionContextSequence" not in fast
    assert fast.file_meta.TransferSyntaxUID == SYNTAXES[syntax]
    assert_same(outcome(fast), outcome(pydicom.dcmread(io.BytesIO(raw))))


def test_the_real_file_as_the_cart_wrote_it(sample_path):
    raw = sample_path.read_bytes()
    fast = read(raw)
    assert "WaveformAnnotationSequence" not in fast
    slow = pydicom.dcmread(io.BytesIO(raw))
    assert fast.SOPInstanceUID == slow.SOPInstanceUID and fast.SOPClassUID == slow.SOPClassUID
    assert fast.PatientName == slow.PatientName  # non-sequence top-level elements are all there
    assert fast.WaveformSequence == slow.WaveformSequence  # every group, channel and nested code
    result = outcome(fast)
    assert result[0] == "ok" and result[1].shape == (4096, 12)
    assert_same(result, outcome(slow))
    params = NormaliseParams(gain=2.0, limb_lead_order=("aVR", "I", "II", "III", "aVL", "aVF"))
    assert_same(outcome(fast, params), outcome(slow, params))


def test_items_are_built_as_dcmread_builds_them(sample_path):
    """The fast path builds sequence items without ``Dataset.__init__``
    (gateway.dicomio.reader._item_quickly); each must carry dcmread's
    attributes (encodings, undefined length, fresh containers), and with the
    pinned pydicom that quick way must be the one in use."""
    from gateway.dicomio import reader

    assert reader._BLANK_ITEM is not None  # a pydicom upgrade changed Dataset: see _blank_item_state
    raw = sample_path.read_bytes()
    fast, slow = read(raw), pydicom.dcmread(io.BytesIO(raw))

    def items(ds: Dataset) -> list[Dataset]:
        out = []
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value:
                    out += [item, *items(item)]
        return out

    fast_items = items(fast)
    slow_items = items(Dataset({slow.data_element("WaveformSequence").tag: slow.data_element("WaveformSequence")}))
    assert len(fast_items) == len(slow_items) > 50
    skip = {"_dict", "file_tell", "seq_item_tell"}  # the elements, compared below; offsets the fast path never set
    for f, s in zip(fast_items, slow_items, strict=True):
        assert {k: x for k, x in vars(f).items() if k not in skip} == {
            k: x for k, x in vars(s).items() if k not in skip
        }
        assert f == s
    own = [id(x) for item in fast_items for k, x in vars(item).items() if k in reader._BLANK_ITEM and type(x) is dict]
    assert len(own) == 3 * len(fast_items) == len(set(own))  # no two items share a dict of their own


def test_character_sets_reach_the_waveform_items(sample):
    ds = v.new_uids(sample)
    ds.SpecificCharacterSet = "ISO_IR 192"
    v.rhythm(ds).MultiplexGroupLabel = "RHYTHM"
    v.rhythm(ds).ChannelDefinitionSequence[0].ChannelLabel = "Ableitung Ü"
    for syntax in SYNTAXES.values():
        raw = encode(ds, syntax)
        fast, slow = read(raw), pydicom.dcmread(io.BytesIO(raw))
        assert "WaveformAnnotationSequence" not in fast
        assert v.rhythm(fast).ChannelDefinitionSequence[0].ChannelLabel == "Ableitung Ü"
        assert_same(outcome(fast), outcome(slow))


def test_big_endian_falls_back_to_dcmread(sample):
    ds = v.new_uids(sample)
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        pydicom.dcmwrite(out, ds, little_endian=False, implicit_vr=False)
    raw = out.getvalue()
    fast = read(raw)
    assert "WaveformAnnotationSequence" in fast  # read by dcmread
    assert_same(outcome(fast), outcome(pydicom.dcmread(io.BytesIO(raw))))


def test_no_preamble_and_garbage_fail_with_dcmreads_message(sample_path):
    raw = sample_path.read_bytes()
    for data in (raw[128:], b"", b"\x00" * 10):
        with pytest.raises(DicomError, match="File is missing DICOM File Meta Information header"):
            read(data)
    # a prefix and then nonsense: dcmread reads what it can, and so does the fallback
    garbage = b"\x00" * 128 + b"DICM" + b"\xff" * 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fast_outcome(garbage) == dcmread_outcome(garbage)


def _waveform_data_spans(raw: bytes) -> list[tuple[int, int]]:
    """File offsets of the sample values (flipping them tests nothing structural)."""
    ds = pydicom.dcmread(io.BytesIO(raw))
    spans = []
    for group in ds.WaveformSequence:
        element = group.get_item("WaveformData")
        spans.append((element.value_tell, element.value_tell + element.length))
    return spans


def _mutations(raw: bytes, seed: int) -> list[tuple[str, bytes, int | None]]:
    rng = random.Random(seed)
    spans = _waveform_data_spans(raw)
    body = 132 + 200  # past the preamble and most of the file meta
    structural = [i for i in range(body, len(raw)) if not any(a + 4 <= i < b - 4 for a, b in spans)]
    cases = [(f"truncated at {n}", raw[:n], None) for n in sorted(rng.sample(range(len(raw)), 20))]
    cases += [(f"truncated at {n}", raw[:n], None) for n in (0, 131, 132, 140, len(raw) - 1, len(raw) - 7)]
    cases += [(f"truncated at {a}{d:+}", raw[: a + d], None) for a, _ in spans for d in (-12, -8, -4, 0, 2)]
    for i in sorted(rng.sample(structural, 120)):
        mutated = bytearray(raw)
        mutated[i] ^= rng.choice((0x01, 0x10, 0x80, 0xFF))
        cases.append((f"byte {i} flipped", bytes(mutated), i))
    return cases


def _skipped_span(raw: bytes) -> tuple[int, int]:
    """File offsets from the first top-level sequence the fast read skips
    (the acquisition context) to the WaveformSequence."""
    ds = pydicom.dcmread(io.BytesIO(raw))
    first = ds["AcquisitionContextSequence"].file_tell
    waveform = ds["WaveformSequence"].file_tell
    assert first < ds["WaveformAnnotationSequence"].file_tell < waveform
    return first - 12, waveform - 12  # element headers included


@pytest.mark.slow  # hundreds of damaged files through both readers and normalise
@pytest.mark.parametrize("syntax", ["implicit", "explicit", "deflated"])
def test_truncated_and_corrupt_bytes_fail_as_dcmread_does(sample, syntax):
    """Any damage gives the fast read's DicomError or a data set; the worker's
    outcome (parse error text, rejection reason, signal) is the one dcmread
    gives today - except that damage inside the sequences normalise never
    reads (annotations, acquisition context) no longer loses an ECG whose
    waveform is intact: then the outcome is exactly the undamaged file's."""
    raw = encode(sample, SYNTAXES[syntax])
    intact = outcome(pydicom.dcmread(io.BytesIO(raw)))
    if syntax == "deflated":
        cases = [(f"truncated at {n}", raw[:n], None) for n in range(0, len(raw), max(1, len(raw) // 20))]
        cases += [
            (f"byte {i} flipped", raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :], None)
            for i in random.Random(1).sample(range(400, len(raw)), 20)
        ]
    else:
        cases = _mutations(raw, seed=7)
    skipped = _skipped_span(raw) if syntax != "deflated" else (0, 0)
    differ, tolerated = [], 0
    for name, data, flipped in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about what it guesses
            fast, slow = fast_outcome(data), dcmread_outcome(data)
        try:
            assert_same(fast, slow)
        except AssertionError as exc:
            if flipped is not None and skipped[0] <= flipped < skipped[1] and slow[0] == "unreadable":
                assert_same(fast, intact)
                tolerated += 1
            else:
                differ.append(f"{name}: {exc}")
    assert not differ, "\n".join(differ[:10])
    assert tolerated < len(cases) // 10


def test_worker_rejects_a_spooled_file_that_cannot_be_parsed(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample
):
    """Through the real worker: the receive stage accepted the files, then
    their bodies were damaged on disk; the reasons are dcmread's, as before."""

    from gateway.config import Config
    from gateway.process.worker import Worker
    from gateway.receive.spool import IncomingInstance, StoreContext, store_instance
    from gateway.store.models import PROCESSED, REJECTED, EcgInstance
    from gateway.store.spool import Spool

    cfg = Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "model": {"files": [str(demo_model)], "batch_size": 4, "max_wait_ms": 0},
        }
    )
    ids = []
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, None, None):
        raw = encode(sample, syntax or ExplicitVRLittleEndian)
        out = store_instance(
            IncomingInstance.from_file(
                raw,
                calling_ae="TESTCART",
                peer_address="127.0.0.1",
                transfer_syntax_uid=syntax or ExplicitVRLittleEndian,
            ),
            StoreContext(session_factory, Spool.from_config(cfg.storage)),
        )
        assert out.status == 0, out
        ids.append(out.ecg_id)
    with session_factory() as s:
        paths = [Spool.from_config(cfg.storage).resolve(s.get(EcgInstance, i).spool_path) for i in ids]
    no_preamble, truncated = paths[3].read_bytes()[128:], paths[4].read_bytes()[:-1000]
    paths[3].write_bytes(no_preamble)
    paths[4].write_bytes(truncated)
    worker = Worker(cfg, session_factory, demo_ensemble)
    while worker.run_once():
        pass
    with session_factory() as s:
        rows = [s.get(EcgInstance, i) for i in ids]
        assert [r.status for r in rows] == [PROCESSED] * 3 + [REJECTED] * 2
        assert rows[3].error == "DICOM data set cannot be parsed: " + dcmread_outcome(no_preamble)[1]
        assert rows[3].error.startswith("DICOM data set cannot be parsed: File is missing DICOM File Meta")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert dcmread_outcome(truncated)[0] == "unreadable"
            assert rows[4].error == "DICOM data set cannot be parsed: " + dcmread_outcome(truncated)[1]
        assert rows[4].error.startswith("DICOM data set cannot be parsed: No tag to read at file position")


@pytest.mark.parametrize(
    "options",
    [
        ["+e", "+te"],  # explicit lengths in every sequence and item, Explicit VR LE
        ["+e", "+ti"],  # ... Implicit VR LE
        ["+e", "+g", "+te"],  # with group length elements
        ["-e", "+td"],  # undefined lengths, Deflated
    ],
)
def test_files_written_by_dcmtk(sample, tmp_path, options):
    """A second writer (DCMTK dcmconv), with defined-length sequences and
    items, which pydicom's writer never produces."""
    import shutil
    import subprocess

    if shutil.which("dcmconv") is None:
        pytest.skip("DCMTK dcmconv is not installed")
    source = v.save(v.new_uids(v.eight_lead(sample)), tmp_path / "in.dcm")
    target = tmp_path / "out.dcm"
    subprocess.run(["dcmconv", *options, str(source), str(target)], check=True, capture_output=True)
    raw = target.read_bytes()
    fast = read(raw)
    assert "WaveformAnnotationSequence" not in fast  # the fast path itself
    result = outcome(fast)
    assert result[0] == "ok" and result[3] == []
    assert_same(result, outcome(pydicom.dcmread(io.BytesIO(raw))))


# -- the differential property: read(...) against dcmread over varied and garbled files ---------------

#: What the readers are asked for: the worker's, the door's, the cart report's.
KEPT = [WAVEFORM, ("WaveformSequence", "RequestAttributesSequence"), ("WaveformSequence", "WaveformAnnotationSequence")]
_ENCODED: dict[tuple[str, str], bytes] = {}


def _encoded(variant: str, syntax: str) -> bytes:
    key = (variant, syntax)
    if key not in _ENCODED:
        _ENCODED[key] = encode(VARIANTS[variant](v.load_sample()), SYNTAXES[syntax])
    return _ENCODED[key]


def _value(ds: Dataset, tag: Any) -> tuple:
    """An element's decoded value, or the type of the error decoding it."""
    try:
        return "ok", ds[tag].value
    except Exception as exc:  # noqa: BLE001 - compared: both must fail alike
        return "error", type(exc).__name__


def _quick_value(ds: Dataset, tag: Any) -> tuple:
    """:func:`gateway.dicomio.values.value` of an element (what normalise and
    the cart's report read), or the type of the error decoding it."""
    try:
        return "ok", value(ds, tag)
    except Exception as exc:  # noqa: BLE001 - compared: both must fail alike
        return "error", type(exc).__name__


def _dcmread(raw: bytes) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", pydicom.dcmread(io.BytesIO(raw))
        except Exception as exc:  # noqa: BLE001
            return "unreadable", str(exc) or type(exc).__name__


def _read(raw: bytes, kept: tuple[str, ...], nested: bool = True) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", read(raw, sequences=kept, nested=nested)
        except DicomError as exc:
            return "unreadable", str(exc)


def _assert_same_values(fast: Dataset, slow: Dataset, kept: tuple[str, ...], nested: bool = True) -> None:
    """Every element of ``fast`` has ``slow``'s value; ``fast`` lacks only
    the top-level sequences not asked for (and with ``nested=False`` the
    sequences inside the items of those asked for)."""
    assert fast.file_meta == slow.file_meta
    if not nested:
        for keyword in kept:
            if keyword in fast:
                assert len(fast[keyword].value) == len(slow[keyword].value)
                for fast_item, slow_item in zip(fast[keyword].value, slow[keyword].value, strict=True):
                    _assert_same_level(fast_item, slow_item)
        checked = {fast[kw].tag for kw in kept if kw in fast}
        _assert_same_level(Dataset({k: e for k, e in fast.items() if k not in checked}), slow)
        return
    _assert_same_level(fast, slow, kept)


def _assert_same_level(fast: Dataset, slow: Dataset, kept: tuple[str, ...] = ()) -> None:
    wanted = {pydicom.datadict.tag_for_keyword(k) for k in kept}
    for tag in slow.keys():
        if tag not in fast:  # only sequences not asked for (dcmread has parsed them: no decoding here)
            assert tag not in wanted and _value(slow, tag)[1].__class__.__name__ == "Sequence", f"{tag} missing"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the garbled values it decodes
        for tag in fast.keys():
            assert tag in slow, f"{tag} not in dcmread's data set"
            quick = _quick_value(fast, tag)  # first: ds[tag] below stores the decoded element in place of the raw one
            f, s = _value(fast, tag), _value(slow, tag)
            # dicomio.values.value decodes as ds[tag] does (a sequence: the very object)
            assert quick[1] is f[1] if isinstance(f[1], Sequence) else quick == f or repr(quick) == repr(f), tag
            if f[0] == s[0] == "ok" and isinstance(f[1], Sequence) and isinstance(s[1], Sequence):
                # item by item, not Sequence ==: that decodes every element deep down and
                # raises on the first it cannot (a damaged VR), where each side must fail alike
                assert len(f[1]) == len(s[1]), tag
                for fast_item, slow_item in zip(f[1], s[1], strict=True):
                    _assert_same_level(fast_item, slow_item)
            else:
                assert f == s, tag


#: (variant, syntax, damage, where in [0, 1), flip mask, inserted bytes): small, so hypothesis shows it.
_CASES = st.tuples(
    st.sampled_from(
        ["sample", "eight-lead", "mdc-codes", "general-32bit", "median-beat-only", "no-waveform", "shuffled"]
    ),
    st.sampled_from(["implicit", "explicit"]),
    st.sampled_from(["intact", "cut", "flip", "insert"]),
    st.floats(0, 1, exclude_max=True),
    st.integers(1, 255),
    st.binary(min_size=1, max_size=16),
)


def _damaged(case: tuple) -> tuple[str, bytes]:
    """A variant in a transfer syntax, then no damage, a cut, a flipped
    byte, or inserted garbage."""
    variant, syntax, kind, where, mask, garbage = case
    raw = _encoded(variant, syntax)
    at = int(where * len(raw))
    name = f"{variant}/{syntax}/{kind} at {at}"
    if kind == "cut":
        raw = raw[:at]
    elif kind == "flip":
        raw = raw[:at] + bytes([raw[at] ^ mask]) + raw[at + 1 :]
    elif kind == "insert":
        raw = raw[:at] + garbage + raw[at:]
    return name, raw


#: Damaged files per tier (a ``smoke`` count in the fast tier, ``full`` under slow): ~0.1 s of CPU each.
DAMAGED = [pytest.param(10, id="smoke"), pytest.param(40, id="full", marks=pytest.mark.slow)]


@pytest.mark.parametrize("examples", DAMAGED)
def test_read_gives_dcmreads_values_or_both_refuse(examples: int) -> None:
    """Same values, or both refuse with the same message - except that
    damage inside a top-level sequence the caller did not ask for (skipped by
    its length or delimiters) may leave the file readable where dcmread
    gives up: then every element read is one of the undamaged file's."""

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=_CASES, kept=st.sampled_from(KEPT), nested=st.booleans())
    def check(case: tuple, kept: tuple[str, ...], nested: bool) -> None:
        _check_damaged(case, kept, nested)

    check()


def _check_damaged(case: tuple, kept: tuple[str, ...], nested: bool) -> None:
    """:func:`test_read_gives_dcmreads_values_or_both_refuse` for one damaged file."""
    name, raw = _damaged(case)
    fast, slow = _read(raw, kept, nested), _dcmread(raw)
    if slow[0] == "ok" and fast[0] == "ok":
        _assert_same_values(fast[1], slow[1], kept, nested)
    elif slow[0] == "unreadable" and fast[0] == "unreadable":
        assert fast[1] == slow[1], name
    else:
        assert fast[0] == "ok", f"{name}: read refused what dcmread reads: {fast[1]}"
        intact = pydicom.dcmread(io.BytesIO(_encoded(*case[:2])))
        assert set(fast[1].keys()) <= set(intact.keys()), name


_VALUED = {"WaveformAnnotationSequence": VALUE_KEYWORDS}


def _valued_items(ds: Dataset) -> list[Dataset]:
    keys = [pydicom.datadict.tag_for_keyword(k) for k in _VALUED["WaveformAnnotationSequence"]]
    return [it for it in ds.get("WaveformAnnotationSequence") or [] if any(k in it for k in keys)]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_CASES)
def test_items_with_leaves_out_only_the_other_items(case: tuple) -> None:
    """``items_with``: the annotation items holding a value are dcmread's,
    the others are left out (all are there when the fast path left the file
    to dcmread), the cart's report is the same, and everything else is as
    without it (same values, or both refuse alike; damage inside a left-out
    item may leave the file readable where dcmread gives up)."""
    kept = ("WaveformSequence", "WaveformAnnotationSequence")
    name, raw = _damaged(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fast = "ok", read(raw, sequences=kept, items_with=_VALUED)
        except DicomError as exc:
            fast = "unreadable", str(exc)
    slow = _dcmread(raw)
    if slow[0] == "ok" and fast[0] == "ok":
        annotations = pydicom.datadict.tag_for_keyword("WaveformAnnotationSequence")
        without = Dataset({k: e for k, e in fast[1].items() if k != annotations})
        without.file_meta = fast[1].file_meta
        _assert_same_values(without, slow[1], ("WaveformSequence",))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            items = list(fast[1].get("WaveformAnnotationSequence") or [])
            everything = list(slow[1].get("WaveformAnnotationSequence") or [])
            # all of them when the fast path left the file to dcmread
            assert items in (_valued_items(slow[1]), everything), name
            assert extract(fast[1]) == extract(slow[1]), name
    elif slow[0] == "unreadable" and fast[0] == "unreadable":
        assert fast[1] == slow[1], name
    else:
        assert fast[0] == "ok", f"{name}: read refused what dcmread reads: {fast[1]}"


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=600), kept=st.sampled_from(KEPT))
def test_random_bytes_after_a_file_meta(data: bytes, kept: tuple[str, ...]) -> None:
    """Garbage after a real preamble and file meta: both read it or both refuse alike."""
    head = _encoded("sample", "explicit")
    meta_end = 132 + 12 + int.from_bytes(head[140:144], "little")
    raw = head[:meta_end] + data
    fast, slow = _read(raw, kept), _dcmread(raw)
    assert fast[0] == slow[0] or (fast[0] == "ok" and slow[0] == "unreadable"), (fast, slow)
    if fast[0] == slow[0] == "ok":
        _assert_same_values(fast[1], slow[1], kept)
    elif fast[0] == slow[0]:
        assert fast[1] == slow[1]


def test_file_meta_uids(sample_path) -> None:
    raw = sample_path.read_bytes()
    ds = pydicom.dcmread(io.BytesIO(raw))
    uids = file_meta_uids(raw)
    assert uids == (
        ds.file_meta.MediaStorageSOPClassUID,
        ds.file_meta.MediaStorageSOPInstanceUID,
        ds.file_meta.TransferSyntaxUID,
    )
    assert file_meta_uids(raw[128:]) == (None, None, None) == file_meta_uids(b"")
    assert file_meta_uids(raw[:200]).sop_class_uid == ds.file_meta.MediaStorageSOPClassUID


def test_every_sequence_is_dcmreads_data_set(sample_path) -> None:
    raw = sample_path.read_bytes()
    assert read(raw, sequences=None) == pydicom.dcmread(io.BytesIO(raw))
    with pytest.raises(ValueError, match="not DICOM keywords"):
        read(raw, sequences=("NoSuchKeyword",))
