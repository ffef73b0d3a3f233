"""The ECG paper SVG: layout, scale and grid, checked on the parsed SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from admin_helpers import model_input
from gateway.admin.ecg_svg import LAYOUT, MARGIN_MM, ROW_MM, TOP_MM, ecg_svg, recording_span
from gateway.rebuild import DEFAULT_LEADS

NS = {"s": "http://www.w3.org/2000/svg"}


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def points(group: ET.Element) -> np.ndarray:
    text = group.find("s:polyline", NS).get("points")
    return np.array([[float(v) for v in p.split(",")] for p in text.split()])


def test_sample_is_drawn_as_12_panels_in_3x4_and_a_lead_ii_rhythm_strip(sample_path):
    signal, report, _ = model_input(sample_path)
    root = parse(ecg_svg(signal, report["output_leads"]))
    panels = root.findall("s:g[@class='lead-panel']", NS)
    assert [p.get("data-lead") for p in panels] == [lead for row in LAYOUT for lead in row]
    assert [lead for row in LAYOUT for lead in row] == [
        "I",
        "aVR",
        "V1",
        "V4",
        "II",
        "aVL",
        "V2",
        "V5",
        "III",
        "aVF",
        "V3",
        "V6",
    ]
    (strip,) = root.findall("s:g[@class='rhythm-strip']", NS)
    assert strip.get("data-lead") == "II"
    # 2.5 s panels = 62.5 mm at 25 mm/s, side by side; the strip is 10 s = 250 mm.
    for k, panel in enumerate(panels):
        xy = points(panel)
        assert len(xy) == 1000  # 2.5 s at 400 Hz
        assert xy[0, 0] == pytest.approx(MARGIN_MM + (k % 4) * 62.5)
        assert xy[-1, 0] - xy[0, 0] == pytest.approx(62.5 - 25 / 400, abs=0.01)
    xy = points(strip)
    assert len(xy) == 4000 and xy[-1, 0] - xy[0, 0] == pytest.approx(250 - 25 / 400, abs=0.01)
    # Each column shows its own 2.5 s: aVL (row 2, column 2) is seconds 2.5-5 of the recording.
    start, _ = recording_span(signal)
    avl = report["output_leads"].index("aVL")
    baseline = TOP_MM + ROW_MM * 1.5
    np.testing.assert_allclose(
        points(panels[5])[:, 1], baseline - 10 * signal[start + 1000 : start + 2000, avl], atol=0.006
    )
    np.testing.assert_allclose(
        xy[:, 1],
        TOP_MM + ROW_MM * 3.5 - 10 * signal[start : start + 4000, report["output_leads"].index("II")],
        atol=0.006,
    )


def test_scale_is_10_mm_per_mv_and_padding_is_skipped():
    signal = np.zeros((4096, 12), np.float32)
    signal[48:4048] = 1.0  # 10 s of 1 mV, centred padding of 48 + 48
    signal[48, :] = 2.0
    root = parse(ecg_svg(signal, DEFAULT_LEADS))
    first = root.find("s:g[@data-lead='I']", NS)
    xy = points(first)
    baseline = TOP_MM + ROW_MM / 2
    assert xy[0, 1] == pytest.approx(baseline - 20)  # the first recorded sample, not padding
    assert xy[1:, 1] == pytest.approx(np.full(999, baseline - 10))
    # gain: the input is mV x gain; the paper shows mV
    xy = points(parse(ecg_svg(signal * 2, DEFAULT_LEADS, gain=2.0)).find("s:g[@data-lead='I']", NS))
    assert xy[5, 1] == pytest.approx(baseline - 10)


def test_grid_is_1_mm_minor_and_5_mm_major_on_a_true_scale_page():
    root = parse(ecg_svg(np.zeros((4096, 12), np.float32), DEFAULT_LEADS))
    minor = root.find(".//s:pattern[@id='ecg-minor']", NS)
    major = root.find(".//s:pattern[@id='ecg-major']", NS)
    assert (minor.get("width"), minor.get("height")) == ("1", "1")
    assert (major.get("width"), major.get("height")) == ("5", "5")
    assert root.get("width") == "265mm" and root.get("viewBox") == "0 0 265 127"
    assert (root.get("data-mm-per-s"), root.get("data-mm-per-mv")) == ("25", "10")
    assert len(root.findall("s:path[@class='calibration']", NS)) == 4  # 1 mV pulse per row


def test_columns_can_come_in_any_order():
    signal = np.zeros((4096, 12), np.float32)
    leads = ["aVL", "I", "aVR", "II", "aVF", "III", *DEFAULT_LEADS[6:]]
    signal[48:4048, leads.index("aVR")] = 0.5
    xy = points(parse(ecg_svg(signal, leads)).find("s:g[@data-lead='aVR']", NS))
    assert xy[10, 1] == pytest.approx(TOP_MM + ROW_MM / 2 - 5)


def test_short_recordings_leave_the_rest_blank():
    signal = np.zeros((4096, 12), np.float32)
    signal[1048:3048] = 0.3  # 5 s
    root = parse(ecg_svg(signal, DEFAULT_LEADS))
    assert len(points(root.find("s:g[@data-lead='V1']", NS))) == 0
    assert len(points(root.find("s:g[@class='rhythm-strip']", NS))) == 2000


@pytest.mark.parametrize(
    "shape, leads, message",
    [
        ((4096, 11), DEFAULT_LEADS, "expected a \\(samples, 12\\) array"),
        ((4096,), DEFAULT_LEADS, "expected a"),
        ((4096, 12), [*DEFAULT_LEADS[:11], "X"], "leads missing for the 3x4 layout: V6"),
    ],
)
def test_bad_input_is_refused(shape, leads, message):
    with pytest.raises(ValueError, match=message):
        ecg_svg(np.zeros(shape, np.float32), leads)
