"""Decode times per input format: ms per file, best and median of rounds.

For each sample (pydicom's Mortara DICOM ECG, the Philips Sierra XML 1.03 and
1.04 documents, the HL7 aECG example) it measures, on this machine:

  door:       what the door reads (``gateway.receive.door.incoming_from_bytes``:
              sniff + values, no waveform; DICOM: ``read_header``, which the store runs);
  decode:     the waveform to leads (DICOM: ``gateway.dicomio.reader.read``; Philips:
              sierraecg + scale; aECG: lxml + digits);
  model input: the whole read-and-normalise path (``gateway.rebuild.model_input``).

Usage: .venv/bin/python bench/bench_formats.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.dicomio.reader import read  # noqa: E402
from gateway.formats import decode  # noqa: E402
from gateway.normalise import NormaliseParams  # noqa: E402
from gateway.rebuild import model_input  # noqa: E402
from gateway.receive.door import incoming_from_bytes  # noqa: E402
from gateway.receive.header import read_header  # noqa: E402

INPUTS = ROOT / "tests" / "fixtures" / "inputs"


def samples() -> list[tuple[str, str, bytes]]:
    from pydicom.data import get_testdata_file

    return [
        ("DICOM (Mortara, 1000 Hz, 10 s)", "dicom", Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()),
        ("Philips XML 1.03 (UTF-8)", "philips", (INPUTS / "philips" / "129DYPRG.XML").read_bytes()),
        ("Philips XML 1.04 (UTF-16)", "philips", (INPUTS / "philips" / "ad4d3d80-d165_1-04_orig.xml").read_bytes()),
        ("HL7 aECG (500 Hz, 10 s)", "aecg", (INPUTS / "aecg" / "hl7_aecg_example.xml").read_bytes()),
    ]


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    fn()  # warm: imports, filter design
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    params = NormaliseParams()
    print(f"{'format':34} {'bytes':>8} {'door ms':>16} {'decode ms':>16} {'model input ms':>16}   (best / median)")
    for name, fmt, raw in samples():
        if fmt == "dicom":  # the store reads the header after the door (store_instance)
            door = timed(lambda raw=raw: read_header(raw), args.rounds)
        else:
            door = timed(lambda raw=raw: incoming_from_bytes(raw, "bench"), args.rounds)
        if fmt == "dicom":
            dec = timed(lambda raw=raw: read(raw), args.rounds)
        else:
            dec = timed(lambda raw=raw, fmt=fmt: decode(raw, fmt), args.rounds)
        full = timed(lambda raw=raw: model_input(raw, params), args.rounds)
        cells = [f"{best:7.1f} / {median:6.1f}" for best, median in (door, dec, full)]
        print(f"{name:34} {len(raw):8d} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16}")


if __name__ == "__main__":
    main()
