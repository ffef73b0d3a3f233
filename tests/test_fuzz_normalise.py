"""Property fuzzing of the normalise stage (issue #9, part A follow-up).

Hypothesis mutates real data sets (pydicom's Mortara sample and the
``ecg_variants`` a cart could send) in the ways a cart's header can be wrong:
sensitivities 0/NaN/inf/negative, absurd rates, channel counts that disagree
with the data length, bits stored/allocated combinations, padding values,
unit strings, code values, sample interpretations, truncated WaveformData and
removed sequences.  Each mutated data set goes to ``normalise_dataset``
directly and, encoded to bytes, through the worker's
``gateway.dicomio.reader.read``.  The only outcomes allowed: a ``NormalisedEcg``
with a finite float32 (4096, 12) signal, or ``NormaliseError`` (or, for the
bytes path, the reader's ``DicomError``) with a non-empty reason.  Anything
else is a bug.

Deterministic (``derandomize=True``, fixed example counts: ``smoke`` in the
fast tier, ``full`` under ``./dev test --all``); the recipe of a failing
example is printed by Hypothesis and can be replayed with :func:`apply_recipe`.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

import ecg_variants as variants
import fuzz_helpers as fh
from gateway.dicomio.reader import DicomError, read
from gateway.normalise import NormalisedEcg, NormaliseError, normalise_dataset

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns about every invalid value, by design

EXAMPLES = 150  # per test in the full tier; ~0.1 s each on a loaded CI machine
#: The example count per tier: the fast tier's smoke run still reaches both outcomes.
TIERS = [pytest.param(30, id="smoke"), pytest.param(EXAMPLES, id="full", marks=pytest.mark.slow)]

NUMBERS = [
    "0",
    "-0",
    "NaN",
    "inf",
    "-inf",
    "-1.25",
    "1e308",
    "-1e308",
    "1e-308",
    "5e-324",
    "",
    "abc",
    "1e999",
    " 1.25 ",
    "1_000",
    "0x10",
    "1.25\\2.5",
    "+1.25",
    ".",
    "1e",
    "000000000000000001",
]
RATES = [
    *NUMBERS,
    "1000",
    "500",
    "400",
    "250",
    "100",
    "99.99",
    "2000",
    "2000.001",
    "999.999",
    "499.712",
    "1e3",
    "1000.0000000001",
    "300",
    "257",
    "1024",
]
COUNTS = [0, 1, 2, 7, 8, 11, 12, 13, 255, 65535]
SAMPLE_COUNTS = [0, 1, 2, 399, 4095, 4096, 8000, 9999, 10000, 10001, 20000, 2**31, 2**32 - 1]
BITS = [0, 1, 2, 8, 12, 15, 16, 17, 24, 32, 33, 64, 65535]
INTERPRETATIONS = ["SS", "SL", "SB", "UB", "US", "UL", "MB", "AB", "SV", "", "ss", "SS\\SL"]
UNITS = [
    "uV",
    "mV",
    "V",
    "nV",
    "\u00b5V",
    "10*-6.V",
    "10*-99.V",
    "10*+99.V",
    "10*3.V",
    "MV",
    "mmHg",
    "",
    " ",
    "uv",
    "1",
    "kV",
]
CODES = [
    "5.6.3-9-1",
    "5.6.3-9-2",
    "5.6.3-9-61",
    "5.6.3-9-65",
    "5.6.3-9-0",
    "5.6.3-9-",
    "5.6.3-9-99999999999999999999",
    "2:1",
    "2:3",
    "2:65",
    "2:31",
    "131073",
    "131137",
    "196608",
    "99999999999999999999",
    "",
    "-1",
    "I",
    "V7",
]
SCHEMES = ["SCPECG", "MDC", "DCM", "", "99LOCAL"]
MEANINGS = ["Lead I", "Lead II", "-aVR", "V6", "lead v1 (chest)", "", "median", "\x00"]
PADDINGS = [b"", b"\x00", b"\x00\x80", b"\xff\x7f", b"\x00\x00", b"\x00\x00\x00\x80", b"\x01"]
#: Raw values for the US/UL counts: lengths that are not a whole number of values, or several values.
RAW_COUNTS = [b"", b"\x01", b"\x01\x00\x00", b"\x10\x00\x10\x00", b"\xff\xff\xff\xff\xff", bytes(8), b"\xff\xfe"]
GROUP_COUNTS = ["NumberOfWaveformChannels", "NumberOfWaveformSamples", "WaveformBitsAllocated"]
SEQUENCES = ["ChannelSourceSequence", "ChannelSensitivityUnitsSequence"]
GROUP_ELEMENTS = [
    "ChannelDefinitionSequence",
    "WaveformData",
    "SamplingFrequency",
    "WaveformBitsAllocated",
    "WaveformSampleInterpretation",
    "NumberOfWaveformChannels",
    "NumberOfWaveformSamples",
    "WaveformPaddingValue",
    "MultiplexGroupLabel",
]
CHANNEL_TEXT = {
    "ChannelSensitivity": NUMBERS,
    "ChannelSensitivityCorrectionFactor": NUMBERS,
    "ChannelBaseline": NUMBERS,
    "ChannelSampleSkew": NUMBERS,
}


@functools.lru_cache(maxsize=1)
def _bases() -> dict[str, Dataset]:
    sample = variants.load_sample()
    return {
        "sample": sample,
        "eight-lead": variants.eight_lead(sample),
        "general-32bit": variants.general_32bit(sample),
        "500hz-mv": variants.millivolts_with_baseline(variants.with_rate(sample, 500)),
        "mdc-shuffled": variants.shuffled(variants.mdc_codes(sample), seed=3),
    }


# -- mutations: (name, args) recipes applied to a deep copy ------------------------------------------


def _channels(group: Dataset, which: int) -> list[Dataset]:
    """``which`` < 0: every channel; otherwise that one (modulo the count)."""
    items = list(group.get("ChannelDefinitionSequence") or [])
    if not items:
        return []
    return items if which < 0 else [items[which % len(items)]]


def _put_text(item: Dataset, keyword: str, text: str) -> None:
    fh.put_raw(item, keyword, text)


def _apply(ds: Dataset, name: str, args: tuple[Any, ...]) -> None:
    groups = list(ds.get("WaveformSequence") or [])
    group = (
        variants.rhythm(ds)
        if any(str(g.get("MultiplexGroupLabel", "")).upper() == "RHYTHM" for g in groups)
        else (groups[0] if groups else Dataset())
    )
    if name == "channel-text":  # sensitivity, correction, baseline, skew
        keyword, text, which = args
        for item in _channels(group, which):
            _put_text(item, keyword, text)
    elif name == "rate":
        _put_text(group, "SamplingFrequency", args[0])
    elif name == "channels":
        fh.put_raw(group, "NumberOfWaveformChannels", args[0])
    elif name == "samples":
        fh.put_raw(group, "NumberOfWaveformSamples", args[0])
    elif name == "bits-allocated":
        fh.put_raw(group, "WaveformBitsAllocated", args[0])
    elif name == "raw-count":  # bytes as the file carries them, decoded (or not) by pydicom on access
        keyword, raw, which = args
        for item in [group] if keyword in GROUP_COUNTS else _channels(group, which):
            fh.put_raw(item, keyword, raw)
    elif name == "bits-stored":
        bits, which = args
        for item in _channels(group, which):
            fh.put_raw(item, "WaveformBitsStored", bits)
    elif name == "interpretation":
        _put_text(group, "WaveformSampleInterpretation", args[0])
    elif name == "padding":
        if args[0]:
            fh.put_raw(group, "WaveformPaddingValue", args[0])
        elif "WaveformPaddingValue" in group:
            del group.WaveformPaddingValue
    elif name == "unit":
        unit, which = args
        for item in _channels(group, which):
            for unit_item in item.get("ChannelSensitivityUnitsSequence") or []:
                _put_text(unit_item, "CodeValue", unit)
    elif name == "code":
        value, scheme, meaning, which = args
        for item in _channels(group, which):
            for source in item.get("ChannelSourceSequence") or []:
                _put_text(source, "CodeValue", value)
                _put_text(source, "CodingSchemeDesignator", scheme)
                _put_text(source, "CodeMeaning", meaning)
    elif name == "label":
        label, which = args
        for item in _channels(group, which):
            _put_text(item, "ChannelLabel", label)
    elif name == "truncate-data":
        data = bytes(group.get("WaveformData") or b"")
        group.WaveformData = data[: int(len(data) * args[0]) & ~1]
    elif name == "fill-data":  # extreme or constant sample values (rails, padding collisions)
        data = group.get("WaveformData")
        if data is not None:
            group.WaveformData = (args[0] * (len(data) // len(args[0]) + 1))[: len(data)]
    elif name == "drop-channel-item":
        items = group.get("ChannelDefinitionSequence")
        if items:
            del items[args[0] % len(items)]
    elif name == "duplicate-channel-item":
        items = group.get("ChannelDefinitionSequence")
        if items:
            items.append(copy.deepcopy(items[args[0] % len(items)]))
    elif name == "remove-in-channels":
        keyword, which = args
        for item in _channels(group, which):
            if keyword in item:
                delattr(item, keyword)
    elif name == "empty-in-channels":
        keyword, which = args
        for item in _channels(group, which):
            setattr(item, keyword, [])
    elif name == "remove-in-group":
        if args[0] in group:
            delattr(group, args[0])
    elif name == "remove-waveform-sequence":
        if "WaveformSequence" in ds:
            del ds.WaveformSequence
    elif name == "median-label-everywhere":
        for g in groups:
            _put_text(g, "MultiplexGroupLabel", "MEDIAN BEAT")
    else:  # pragma: no cover - a recipe typo
        raise AssertionError(name)


def apply_recipe(base: str, recipe: list[tuple[str, tuple[Any, ...]]]) -> Dataset:
    """The base data set with each mutation of ``recipe`` applied in order."""
    ds = copy.deepcopy(_bases()[base])
    for name, args in recipe:
        _apply(ds, name, args)
    return ds


which = st.integers(-1, 12)
MUTATIONS = st.one_of(
    st.tuples(
        st.just("channel-text"), st.tuples(st.sampled_from(sorted(CHANNEL_TEXT)), st.sampled_from(NUMBERS), which)
    ),
    st.tuples(
        st.just("rate"), st.tuples(st.one_of(st.sampled_from(RATES), st.floats(50, 3000).map(lambda f: f"{f:.6g}")))
    ),
    st.tuples(st.just("channels"), st.tuples(st.sampled_from(COUNTS))),
    st.tuples(st.just("samples"), st.tuples(st.sampled_from(SAMPLE_COUNTS))),
    st.tuples(st.just("bits-allocated"), st.tuples(st.sampled_from(BITS))),
    st.tuples(st.just("bits-stored"), st.tuples(st.sampled_from(BITS), which)),
    st.tuples(
        st.just("raw-count"),
        st.tuples(st.sampled_from([*GROUP_COUNTS, "WaveformBitsStored"]), st.sampled_from(RAW_COUNTS), which),
    ),
    st.tuples(st.just("interpretation"), st.tuples(st.sampled_from(INTERPRETATIONS))),
    st.tuples(st.just("padding"), st.tuples(st.sampled_from(PADDINGS))),
    st.tuples(st.just("unit"), st.tuples(st.sampled_from(UNITS), which)),
    st.tuples(
        st.just("code"), st.tuples(st.sampled_from(CODES), st.sampled_from(SCHEMES), st.sampled_from(MEANINGS), which)
    ),
    st.tuples(st.just("label"), st.tuples(st.sampled_from(MEANINGS), which)),
    st.tuples(st.just("truncate-data"), st.tuples(st.sampled_from([0.0, 0.1, 0.5, 0.999, 0.9999]))),
    st.tuples(
        st.just("fill-data"),
        st.tuples(
            st.sampled_from(
                [b"\x00\x80", b"\xff\x7f", b"\x00\x00", b"\xff\xff", b"\x00\x00\x00\x80", b"\x01\x00\x00\x80"]
            )
        ),
    ),
    st.tuples(st.just("drop-channel-item"), st.tuples(st.integers(0, 11))),
    st.tuples(st.just("duplicate-channel-item"), st.tuples(st.integers(0, 11))),
    st.tuples(
        st.just("remove-in-channels"),
        st.tuples(st.sampled_from([*SEQUENCES, *CHANNEL_TEXT, "WaveformBitsStored"]), which),
    ),
    st.tuples(st.just("empty-in-channels"), st.tuples(st.sampled_from(SEQUENCES), which)),
    st.tuples(st.just("remove-in-group"), st.tuples(st.sampled_from(GROUP_ELEMENTS))),
    st.tuples(st.just("remove-waveform-sequence"), st.just(())),
    st.tuples(st.just("median-label-everywhere"), st.just(())),
)
RECIPES = st.tuples(st.sampled_from(sorted(_bases())), st.lists(MUTATIONS, min_size=1, max_size=4))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_outcome(ds: Dataset) -> str:
    """``normalise_dataset(ds)``: a finite float32 (4096, 12) signal or a
    NormaliseError with a reason; anything else fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = normalise_dataset(ds)
    except NormaliseError as exc:
        assert str(exc).strip(), "NormaliseError without a reason"
        return "NormaliseError"
    assert isinstance(result, NormalisedEcg)
    assert result.signal.dtype == np.float32 and result.signal.shape == (4096, 12)
    assert np.isfinite(result.signal).all()
    return "normalised"


def check_bytes_outcome(raw: bytes) -> str:
    """The worker's path: bytes -> gateway.dicomio.reader.read -> normalise_dataset."""
    try:
        ds = read(raw)
    except DicomError as exc:
        assert str(exc).strip(), "DicomError without a reason"
        return "DicomError"
    return check_outcome(ds)


def fuzz(examples: int, check: Callable[[str, list[tuple[str, tuple[Any, ...]]]], str]) -> Counter[str]:
    """Run ``check(base, mutations)`` on ``examples`` recipes; how often each outcome came."""
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=examples)
    @given(RECIPES)
    def run(recipe) -> None:  # type: ignore[no-untyped-def]
        outcomes[check(*recipe)] += 1

    run()
    return outcomes


@pytest.mark.parametrize("examples", TIERS)
def test_normalise_dataset_survives_mutations(examples: int) -> None:
    outcomes = fuzz(examples, lambda base, mutations: check_outcome(apply_recipe(base, mutations)))
    # the mutations reach the maths and do not all break the file
    assert outcomes["normalised"] and outcomes["NormaliseError"], outcomes


@pytest.mark.parametrize("examples", TIERS)
def test_normalise_from_bytes_survives_mutations(examples: int) -> None:
    outcomes = fuzz(examples, lambda base, mutations: check_bytes_outcome(fh.encode(apply_recipe(base, mutations))))
    assert outcomes["normalised"] and outcomes["NormaliseError"], outcomes


@pytest.mark.parametrize("base", sorted(_bases()))
def test_unmutated_bases_normalise(base: str) -> None:
    """The bases themselves are good ECGs (else the fuzz only tests refusals)."""
    assert check_outcome(apply_recipe(base, [])) == "normalised"
    assert check_bytes_outcome(fh.encode(apply_recipe(base, []))) == "normalised"


# -- regressions found by this fuzzing ------------------------------------------------------------


@pytest.mark.parametrize("keyword", [*GROUP_COUNTS, "WaveformBitsStored"])
@pytest.mark.parametrize(
    "raw,why",
    [(b"\x01\x00\x00", "cannot be decoded"), (b"\x10\x00\x10\x00", "values"), (bytes(8), "values")],
    ids=["odd-length", "two-values", "eight-bytes"],
)
def test_undecodable_or_multivalued_counts_are_a_normalise_error(keyword: str, raw: bytes, why: str) -> None:
    """Found by this fuzzing: a US/UL count of the wrong length or with several
    values escaped as BytesLengthException / TypeError; now the reason names it."""
    if keyword == "NumberOfWaveformSamples" and raw == b"\x10\x00\x10\x00":
        raw = bytes(8)  # UL: 4 bytes are one value; 8 are two
    ds = apply_recipe("sample", [("raw-count", (keyword, raw, -1))])
    with pytest.raises(NormaliseError) as caught:
        normalise_dataset(ds)
    assert keyword in str(caught.value) and why in str(caught.value), str(caught.value)
    outcome = check_bytes_outcome(fh.encode(ds))  # the worker's path: refused with a reason too
    assert outcome in ("NormaliseError", "DicomError")
