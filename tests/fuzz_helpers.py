"""Bad-input generators for the fuzz suite, derived from real ECG files.

Two layers, both deterministic (seeded), so a failure names a recipe that
rebuilds the exact bytes:

- *structural* mutations (:func:`structural_cases`): the real sample and its
  variants changed with pydicom where the change needs re-encoding: nested
  sequences removed, sensitivity 0/NaN, absurd sample and channel counts
  (2^31 samples claimed), bad rates, bad encodings, path-like UIDs;
- *byte* mutations (:func:`mutate`): flips, truncation, wrong VRs on real
  element headers, absurd numeric values and lengths patched in place,
  deleted and duplicated ranges, applied on top of the structural bases.

Counts: ``ECG_GATEWAY_FUZZ_EXAMPLES`` (default 2000) is the number of
byte-mutated data sets fed to the header reader; the other tests scale from
it (see :func:`fuzz_examples`).  Raise it for a longer local run, e.g.
``ECG_GATEWAY_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/test_fuzz_receive.py``.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import random
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

import ecg_variants as variants

FUZZ_DIR = Path(__file__).parent / "fixtures" / "fuzz"


#: DIMSE statuses a C-STORE answer may carry (success, warning, out of
#: resources, does not match SOP class, cannot understand).  0x0110
#: "processing failure" is deliberately absent: the gateway returns it only
#: for an unexpected exception, which is a bug.
def is_valid_store_status(status: int) -> bool:
    """True for 0x0000, 0xA7xx, 0xA9xx, 0xCxxx and 0xB0xx."""
    return status == 0x0000 or status >> 8 in (0xA7, 0xA9, 0xB0) or status >> 12 == 0xC


def fuzz_examples(default: int = 2000) -> int:
    """The header-reader example count (``ECG_GATEWAY_FUZZ_EXAMPLES``)."""
    return int(os.environ.get("ECG_GATEWAY_FUZZ_EXAMPLES", default))


def scaled(count: int) -> int:
    """``count`` scaled by ECG_GATEWAY_FUZZ_EXAMPLES / 2000 (never below ``count``)."""
    return max(count, count * fuzz_examples() // 2000)


def rss_kib() -> int:
    """This process's resident set size (VmRSS, KiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def encode(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file (invalid values are the point: no validation)."""
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def seeded_uid(*seed: object) -> str:
    """A valid 64-character UID (2.25 root) derived from ``seed`` only: the
    same seed gives the same UID in every run, so every fuzz byte offset and
    every file sent is the same from run to run."""
    return generate_uid(prefix="2.25.", entropy_srcs=[repr(part) for part in seed])


def _fresh(ds: Dataset, name: str) -> Dataset:
    """``ds`` with SOP Instance, Series and Study UIDs seeded by ``name``."""
    out = copy.deepcopy(ds)
    out.SOPInstanceUID = seeded_uid(name, "sop")
    out.SeriesInstanceUID = seeded_uid(name, "series")
    out.StudyInstanceUID = seeded_uid(name, "study")
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


def put_raw(item: Dataset, keyword: str, value: str | int | bytes) -> None:
    """Set ``keyword`` to exactly these bytes, as a file would carry them
    (pydicom validates nothing until the value is read)."""
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag).split(" or ")[-1]  # "OB or OW" -> OW
    if isinstance(value, int):
        raw = struct.pack("<H" if vr == "US" else "<I", value)
    elif isinstance(value, str):
        raw = value.encode("latin-1")
        raw += b" " * (len(raw) % 2)
    else:
        raw = value
    item[tag] = RawDataElement(BaseTag(tag), vr, len(raw), raw, 0, False, True)


def _set_all_channels(keyword: str, value: str | int | bytes) -> Callable[[Dataset], Dataset]:
    def build(ds: Dataset) -> Dataset:
        out = copy.deepcopy(ds)
        for channel in variants.rhythm(out).ChannelDefinitionSequence:
            put_raw(channel, keyword, value)
        return out

    return build


def _set_group(keyword: str, value: str | int | bytes) -> Callable[[Dataset], Dataset]:
    def build(ds: Dataset) -> Dataset:
        out = copy.deepcopy(ds)
        put_raw(variants.rhythm(out), keyword, value)
        return out

    return build


def _del_in_channels(keyword: str, only_first: bool = False) -> Callable[[Dataset], Dataset]:
    def build(ds: Dataset) -> Dataset:
        out = copy.deepcopy(ds)
        channels = variants.rhythm(out).ChannelDefinitionSequence
        for channel in channels[:1] if only_first else channels:
            if keyword in channel:
                delattr(channel, keyword)
        return out

    return build


def _del_group(keyword: str) -> Callable[[Dataset], Dataset]:
    def build(ds: Dataset) -> Dataset:
        out = copy.deepcopy(ds)
        delattr(variants.rhythm(out), keyword)
        return out

    return build


def _del_top(keyword: str) -> Callable[[Dataset], Dataset]:
    def build(ds: Dataset) -> Dataset:
        out = copy.deepcopy(ds)
        delattr(out, keyword)
        return out

    return build


def _truncate_data(fraction: float) -> Callable[[Dataset], Dataset]:
    def build(ds: Dataset) -> Dataset:
        out = copy.deepcopy(ds)
        group = variants.rhythm(out)
        data = bytes(group.WaveformData)
        group.WaveformData = data[: int(len(data) * fraction) & ~1]
        return out

    return build


def _uid(value: str) -> Callable[[Dataset], Dataset]:
    def build(ds: Dataset) -> Dataset:
        out = copy.deepcopy(ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.SOPInstanceUID = value
            out.file_meta.MediaStorageSOPInstanceUID = value
        return out

    return build


def _empty_sequence(ds: Dataset) -> Dataset:
    out = copy.deepcopy(ds)
    out.WaveformSequence = []
    return out


#: name -> builder; each takes the (fresh-UID) base data set.
STRUCTURAL: dict[str, Callable[[Dataset], Dataset]] = {
    "no-channel-definitions": _del_group("ChannelDefinitionSequence"),
    "no-channel-source-first": _del_in_channels("ChannelSourceSequence", only_first=True),
    "no-channel-source-all": _del_in_channels("ChannelSourceSequence"),
    "no-units-sequence": _del_in_channels("ChannelSensitivityUnitsSequence"),
    "no-sensitivity": _del_in_channels("ChannelSensitivity"),
    "no-waveform-sequence": _del_top("WaveformSequence"),
    "empty-waveform-sequence": _empty_sequence,
    "no-waveform-data": _del_group("WaveformData"),
    "no-sampling-frequency": _del_group("SamplingFrequency"),
    "no-bits-allocated": _del_group("WaveformBitsAllocated"),
    "no-sop-class": _del_top("SOPClassUID"),
    "sensitivity-0": _set_all_channels("ChannelSensitivity", "0"),
    "sensitivity-nan": _set_all_channels("ChannelSensitivity", "NaN"),
    "sensitivity-inf": _set_all_channels("ChannelSensitivity", "inf"),
    "sensitivity-negative": _set_all_channels("ChannelSensitivity", "-1.25"),
    "sensitivity-huge": _set_all_channels("ChannelSensitivity", "1e308"),
    "sensitivity-tiny": _set_all_channels("ChannelSensitivity", "1e-308"),
    "correction-0": _set_all_channels("ChannelSensitivityCorrectionFactor", "0"),
    "correction-nan": _set_all_channels("ChannelSensitivityCorrectionFactor", "NaN"),
    "baseline-inf": _set_all_channels("ChannelBaseline", "-inf"),
    "baseline-huge": _set_all_channels("ChannelBaseline", "9.9e307"),
    "bits-stored-0": _set_all_channels("WaveformBitsStored", 0),
    "bits-stored-1": _set_all_channels("WaveformBitsStored", 1),
    "bits-stored-64": _set_all_channels("WaveformBitsStored", 64),
    "samples-2^31": _set_group("NumberOfWaveformSamples", 2**31),
    "samples-2^32-1": _set_group("NumberOfWaveformSamples", 2**32 - 1),
    "samples-0": _set_group("NumberOfWaveformSamples", 0),
    "samples-1": _set_group("NumberOfWaveformSamples", 1),
    "channels-0": _set_group("NumberOfWaveformChannels", 0),
    "channels-1": _set_group("NumberOfWaveformChannels", 1),
    "channels-65535": _set_group("NumberOfWaveformChannels", 65535),
    "rate-0": _set_group("SamplingFrequency", "0"),
    "rate-nan": _set_group("SamplingFrequency", "NaN"),
    "rate-inf": _set_group("SamplingFrequency", "inf"),
    "rate-negative": _set_group("SamplingFrequency", "-1000"),
    "rate-huge": _set_group("SamplingFrequency", "1e308"),
    "rate-odd": _set_group("SamplingFrequency", "999.999"),
    "rate-text": _set_group("SamplingFrequency", "fast"),
    "bits-allocated-0": _set_group("WaveformBitsAllocated", 0),
    "bits-allocated-12": _set_group("WaveformBitsAllocated", 12),
    "bits-allocated-64": _set_group("WaveformBitsAllocated", 64),
    "interpretation-UB": _set_group("WaveformSampleInterpretation", "UB"),
    "interpretation-MB": _set_group("WaveformSampleInterpretation", "MB"),
    "padding-odd": _set_group("WaveformPaddingValue", b"\x00\x80"),
    "data-half": _truncate_data(0.5),
    "data-empty": _truncate_data(0.0),
    "uid-dotdot": _uid("../../../etc/passwd"),
    "uid-absolute": _uid("/tmp/ecg-gateway-fuzz"),
    "uid-slashes": _uid("1.2.3/../../4"),
    "uid-65-chars": _uid("1." + "2" * 63),
}


def base_datasets() -> dict[str, Dataset]:
    """The real sample and variants a cart could send (distinct seeded UIDs each)."""
    sample = variants.load_sample()
    return {
        "sample": _fresh(sample, "sample"),
        "eight-lead": _fresh(variants.eight_lead(sample), "eight-lead"),
        "general-32bit": _fresh(variants.general_32bit(sample), "general-32bit"),
        "500hz-mv": _fresh(variants.millivolts_with_baseline(variants.with_rate(sample, 500)), "500hz-mv"),
        "mdc-shuffled": _fresh(variants.shuffled(variants.mdc_codes(sample), seed=3), "mdc-shuffled"),
    }


@dataclass(frozen=True)
class Case:
    """One bad data set: ``name`` is its recipe, ``data`` the Part 10 bytes."""

    name: str
    data: bytes


def _with_syntax(ds: Dataset, syntax: str) -> Dataset:
    out = copy.deepcopy(ds)
    out.file_meta.TransferSyntaxUID = syntax
    return out


@functools.lru_cache(maxsize=1)
def structural_cases() -> list[Case]:
    """Every structural mutation of the sample, the variants' own bytes, and
    the sample in Implicit and Deflated syntaxes (built once per session;
    mutations share their base's UID: see :func:`with_new_uid`)."""
    bases = base_datasets()
    sample = bases["sample"]
    cases = [Case(f"base:{name}", encode(ds)) for name, ds in bases.items()]
    cases.append(Case("base:implicit", encode(_fresh(_with_syntax(sample, ImplicitVRLittleEndian), "implicit"))))
    cases.append(
        Case("base:deflated", encode(_fresh(_with_syntax(sample, DeflatedExplicitVRLittleEndian), "deflated")))
    )
    for name, build in STRUCTURAL.items():
        cases.append(Case(f"sample+{name}", encode(build(sample))))
    for name in ("sensitivity-nan", "samples-2^31", "no-channel-source-first", "rate-0"):
        cases.append(Case(f"eight-lead+{name}", encode(STRUCTURAL[name](bases["eight-lead"]))))
    return cases


# -- byte-level mutations ----------------------------------------------------

#: Tags (group, element) whose explicit-VR headers are targets: counts,
#: rates, sequences, sensitivities, UIDs, the samples.
TARGET_TAGS = [
    (0x003A, 0x0005),
    (0x003A, 0x0010),
    (0x003A, 0x001A),
    (0x003A, 0x0200),
    (0x003A, 0x0208),
    (0x003A, 0x0210),
    (0x003A, 0x0211),
    (0x003A, 0x0212),
    (0x003A, 0x0213),
    (0x003A, 0x021A),
    (0x5400, 0x0100),
    (0x5400, 0x1004),
    (0x5400, 0x1006),
    (0x5400, 0x1010),
    (0x5400, 0x100A),
    (0x0008, 0x0016),
    (0x0008, 0x0018),
    (0x0010, 0x0010),
    (0x0010, 0x0020),
    (0x0040, 0xB020),
    (0x0008, 0x0005),
    (0x0002, 0x0010),
    (0x0002, 0x0000),
]
VRS = [b"SQ", b"OB", b"OW", b"UN", b"UT", b"US", b"UL", b"DS", b"IS", b"FD", b"AT", b"ZZ", b"\x00\x00"]
ABSURD_U32 = [0, 1, 2, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
ABSURD_TEXT = [b"0", b"NaN", b"inf", b"-inf", b"-1", b"1e999", b"", b"\x00", b"\xff\xfe", b"1e-999", b" . "]


def element_offsets(raw: bytes) -> list[int]:
    """Offsets of the explicit-VR element headers of :data:`TARGET_TAGS` (a byte search)."""
    offsets = []
    for group, elem in TARGET_TAGS:
        needle = struct.pack("<HH", group, elem)
        start = raw.find(needle)
        while start != -1:
            if raw[start + 4 : start + 6].isalpha():  # an explicit VR follows: a real header
                offsets.append(start)
            start = raw.find(needle, start + 1)
    return sorted(offsets)


def _header_region(raw: bytes) -> int:
    """End of the bytes before the first WaveformData value (where parsing happens)."""
    at = raw.find(struct.pack("<HH", 0x5400, 0x1010))
    return at + 12 if at != -1 else len(raw)


def mutate(raw: bytes, rng: random.Random, offsets: list[int]) -> tuple[str, bytes]:
    """One byte-level mutation of ``raw``: (recipe, bytes)."""
    data = bytearray(raw)
    kind = rng.choice(
        ["flip", "flip", "truncate", "vr", "u16", "u32", "text", "length", "delete", "duplicate", "multi"]
    )
    header_end = _header_region(raw)

    def flip() -> str:
        # Mostly in the parsed header, sometimes anywhere (the samples).
        pos = rng.randrange(132, header_end) if rng.random() < 0.85 else rng.randrange(len(data))
        bit = 1 << rng.randrange(8)
        data[pos] ^= bit
        return f"flip@{pos}^{bit}"

    if kind == "flip":
        return flip(), bytes(data)
    if kind == "multi":
        return "+".join(flip() for _ in range(rng.randint(2, 16))), bytes(data)
    if kind == "truncate":
        cut = rng.choice([rng.randrange(len(data)), rng.randrange(min(header_end + 64, len(data)))])
        return f"truncate@{cut}", bytes(data[:cut])
    at = rng.choice(offsets) if offsets else rng.randrange(132, header_end)
    if kind == "vr":
        vr = rng.choice(VRS)
        data[at + 4 : at + 6] = vr
        return f"vr@{at}={vr.decode('latin-1')}", bytes(data)
    vr = bytes(data[at + 4 : at + 6])
    long_form = vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL")
    value_at = at + (12 if long_form else 8)
    if kind == "u16" and value_at + 2 <= len(data):
        value = rng.choice([0, 1, 0xFFFF, 0x8000])
        struct.pack_into("<H", data, value_at, value)
        return f"u16@{value_at}={value}", bytes(data)
    if kind == "u32" and value_at + 4 <= len(data):
        value = rng.choice(ABSURD_U32)
        struct.pack_into("<I", data, value_at, value)
        return f"u32@{value_at}={value}", bytes(data)
    if kind == "length":
        value = rng.choice(ABSURD_U32)
        if long_form:
            struct.pack_into("<I", data, at + 8, value)
        else:
            struct.pack_into("<H", data, at + 6, value & 0xFFFF)
        return f"length@{at}={value}", bytes(data)
    if kind == "text" and not long_form:
        length = struct.unpack_from("<H", data, at + 6)[0]
        text = rng.choice(ABSURD_TEXT)[:length].ljust(length, b" ")
        data[value_at : value_at + length] = text
        return f"text@{value_at}={text!r}", bytes(data)
    if kind == "delete":
        start = rng.randrange(132, header_end)
        size = rng.choice([1, 2, 4, 8, rng.randrange(1, 512)])
        del data[start : start + size]
        return f"delete@{start}+{size}", bytes(data)
    start = rng.randrange(132, header_end)
    size = rng.choice([4, 8, 12, rng.randrange(1, 256)])
    data[start:start] = data[start : start + size]
    return f"duplicate@{start}+{size}", bytes(data)


def mutated_cases(count: int, seed: int, bases: list[Case] | None = None) -> Iterator[Case]:
    """``count`` byte-mutated cases over ``bases`` (default: the structural
    cases), round-robin, deterministic for ``seed``."""
    bases = bases if bases is not None else list(structural_cases())
    offsets = {b.name: element_offsets(b.data) for b in bases}
    rng = random.Random(seed)
    for i in range(count):
        base = bases[i % len(bases)]
        recipe, data = mutate(base.data, rng, offsets[base.name])
        yield Case(f"{base.name}|{recipe}", data)


def with_new_uid(data: bytes, serial: int) -> bytes:
    """``data`` with every copy of its SOP Instance UID swapped for another
    of the same length (element lengths stay right), seeded by the UID and
    ``serial`` (the same bytes in every run), so each fuzz case is a distinct
    instance; unchanged when no UID can be found."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        uid = str(ds.SOPInstanceUID)
    except Exception:  # noqa: BLE001 - a mangled file keeps its bytes
        return data
    if len(uid) < 20 or not uid.replace(".", "").isdigit():
        return data
    new = seeded_uid(uid, serial)[: len(uid)]  # 64 characters: long enough for any UID
    return data.replace(uid.encode(), new.encode())


# -- regression fixtures -----------------------------------------------------


def regression_cases(fixture: str) -> list[tuple[str, str, bytes]]:
    """(name, what was found, bytes) of each entry of ``fixtures/fuzz/<fixture>``:
    hex patches ``[offset, hex]`` applied to a real base file (pydicom's test
    files), optionally truncated, so a fixture is a few lines, not a file."""
    import json

    from pydicom.data import get_testdata_file

    out = []
    for entry in json.loads((FUZZ_DIR / fixture).read_text()):
        data = bytearray(Path(get_testdata_file(entry["base"])).read_bytes())
        for offset, patch in entry.get("patches", []):
            value = bytes.fromhex(patch)
            data[offset : offset + len(value)] = value
        if entry.get("truncate") is not None:
            del data[entry["truncate"] :]
        out.append((entry["name"], entry["found"], bytes(data)))
    return out
