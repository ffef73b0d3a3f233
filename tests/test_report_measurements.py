"""Issue 16 §1: the cart's global measurements and statements, read from the
WaveformAnnotationSequence (gateway.report.measurements), and how the worker
stores them, the admin rows show them and the ORU sends them."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import hl7
import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from gateway.report.measurements import (
    CODES,
    KINDS,
    display_value,
    extract,
    loinc_check_digit_ok,
    mdc_code,
)

MORTARA = {
    "heart_rate": (61, "/min", "8867-4", "derived"),
    "rr_interval": (982, "ms", "8637-1", "cart"),
    "pr_interval": (161, "ms", "8625-6", "cart"),
    "qrs_duration": (75, "ms", "8633-0", "cart"),
    "qt_interval": (368, "ms", "8634-8", "cart"),
    "qtc_interval": (370, "ms", "8636-3", "cart"),
    "p_axis": (74, "deg", "8626-4", "cart"),
    "qrs_axis": (52, "deg", "8632-2", "cart"),
    "t_axis": (57, "deg", "8638-9", "cart"),
}


@pytest.fixture(scope="module")
def sample(sample_path):  # type: ignore[no-untyped-def]
    return dcmread(sample_path)


def code(value: str, scheme: str, meaning: str = "") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning or value
    return item


def numeric(value: str, scheme: str, number, unit: str | None, channels=(1, 0)) -> Dataset:  # type: ignore[no-untyped-def]
    item = Dataset()
    item.ConceptNameCodeSequence = Sequence([code(value, scheme)])
    item.NumericValue = number
    if unit is not None:
        item.MeasurementUnitsCodeSequence = Sequence([code(unit, "UCUM")])
    if channels is not None:
        item.ReferencedWaveformChannels = list(channels)
    item.AnnotationGroupNumber = 1
    return item


def text(value: str) -> Dataset:
    item = Dataset()
    item.ReferencedWaveformChannels = [1, 0]
    item.AnnotationGroupNumber = 0
    item.UnformattedTextValue = value
    return item


def dataset(*items: Dataset) -> Dataset:
    ds = Dataset()
    ds.WaveformAnnotationSequence = Sequence(list(items))
    return ds


def test_the_mortara_sample_as_the_issue_lists_it(sample):
    report = extract(sample)
    got = {k: (m["value"], m["unit"], m["code"], m["source"]) for k, m in report.measurements.items()}
    # every known kind with its LOINC code, the heart rate derived from RR (60000 / 982 = 61.1)
    assert {k: got[k] for k in MORTARA} == MORTARA
    assert list(report.measurements)[: len(MORTARA)] == [k.key for k in KINDS]
    assert report.measurements["heart_rate"]["derived_from"] == "rr_interval"
    assert report.measurements["pr_interval"]["cart_code"] == "SCPECG:5.13.5-7"
    # PP Interval (0 ms) has no LOINC in the table: kept as the cart wrote it, not guessed
    assert report.measurements["SCPECG:5.10.2.1-5"] == {
        "value": 0,
        "unit": "ms",
        "code": None,
        "name": "PP Interval",
        "source": "cart",
        "cart_code": "SCPECG:5.10.2.1-5",
    }
    assert len(report.measurements) == len(MORTARA) + 1  # fiducial points (no value) are not measurements
    assert report.statements == ["RITMO SINUSALE", "ECG NORMALE"]
    json.dumps(report.measurements)  # stored as JSON


def test_a_loinc_coded_heart_rate_is_taken_and_nothing_is_derived():
    # a GE MAC file: only LOINC 8867-4 "Heart rate" = 69
    report = extract(dataset(numeric("8867-4", "LN", "69", "/min")))
    assert report.measurements == {
        "heart_rate": {
            "value": 69,
            "unit": "/min",
            "code": "8867-4",
            "name": "Heart rate",
            "source": "cart",
            "cart_code": "LN:8867-4",
        }
    }
    # a cart that gives RR and its own rate: the cart's rate stands
    report = extract(
        dataset(numeric("5.10.2.1-3", "SCPECG", "1000", "ms"), numeric("8867-4", "LN", "59", "{beats}/min"))
    )
    assert report.measurements["heart_rate"]["value"] == 59 and report.measurements["heart_rate"]["source"] == "cart"


@pytest.mark.parametrize("written", ["2:15872", "2: 15872", "146944"])
def test_mdc_codes_in_both_spellings(written):
    assert mdc_code(written) == "2:15872"
    report = extract(dataset(numeric(written, "MDC", "0.161", "s")))
    assert report.measurements["pr_interval"]["value"] == 161  # seconds converted to ms
    assert report.measurements["pr_interval"]["code"] == "8625-6"
    assert report.measurements["pr_interval"]["cart_code"] == "MDC:2:15872"


def test_units_are_converted_and_a_wrong_unit_is_not_mapped():
    report = extract(
        dataset(
            numeric("2:16770", "MDC", "1.2", "Hz"),  # 72 /min
            numeric("2:16132", "MDC", "0.5", "rad"),
            numeric("2:16160", "MDC", "400", "mV"),  # a QT in millivolts: not a time
            numeric("2:15876", "MDC", "410", None),  # no unit at all: not guessed
        )
    )
    m = report.measurements
    assert (m["heart_rate"]["value"], m["heart_rate"]["unit"]) == (72, "/min")
    assert (m["qrs_axis"]["value"], m["qrs_axis"]["unit"]) == (28.648, "deg")
    assert "qt_interval" not in m and m["MDC:2:16160"]["code"] is None and m["MDC:2:16160"]["unit"] == "mV"
    assert "not a ms unit" in m["MDC:2:16160"]["note"]
    assert "qtc_interval" not in m and m["MDC:2:15876"]["unit"] is None


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_per_lead_values_odd_items_and_unknown_schemes():
    per_lead = numeric("5.13.5-7", "SCPECG", "150", "ms", channels=(1, 3))
    no_value = numeric("5.13.5-9", "SCPECG", "75", "ms")
    del no_value.NumericValue
    garbage = numeric("5.13.5-11", "SCPECG", "1", "ms")
    # as read from a file: a DS that is no number (pydicom refuses to set one)
    garbage[0x0040A30A] = RawDataElement(Tag(0x0040A30A), "DS", 12, b"not a numbr ", 0, False, True)
    infinite = numeric("5.10.3-11", "SCPECG", "inf", "deg")
    other = numeric("X-1", "99LOCAL", "3", "ms", channels=None)
    report = extract(dataset(per_lead, no_value, garbage, infinite, other, text("  SINUS  RHYTHM "), text("")))
    assert list(report.measurements) == ["99LOCAL:X-1"]  # the only global value; unknown, kept
    assert report.statements == ["SINUS RHYTHM"]
    assert extract(Dataset()).measurements == {} and extract(Dataset()).statements == []


def test_no_heart_rate_from_a_zero_rr():
    assert "heart_rate" not in extract(dataset(numeric("5.10.2.1-3", "SCPECG", "0", "ms"))).measurements


def test_coded_statements_are_statements():
    item = Dataset()
    item.ConceptCodeSequence = Sequence([code("164889003", "SCT", "Atrial fibrillation")])
    assert extract(dataset(item)).statements == ["Atrial fibrillation"]


def test_every_loinc_code_passes_the_check_digit():
    assert all(loinc_check_digit_ok(k.loinc) for k in KINDS)
    assert {v for (scheme, _), v in CODES.items()} == {k.key for k in KINDS}
    # the issue's 8638-1 for the T wave axis and DICOM's 11524-0 fail: 8638-9 and 11524-6 are right
    assert not loinc_check_digit_ok("8638-1") and not loinc_check_digit_ok("11524-0")
    assert loinc_check_digit_ok("11524-6")


def test_display_value():
    assert display_value({"value": 52, "unit": "deg"}) == "52\u00b0"
    assert display_value({"value": 61, "unit": "/min"}) == "61 /min"


def test_the_workers_fast_read_keeps_the_annotations_as_pydicom_reads_them(sample_path):
    from gateway.dicomio.reader import read

    raw = Path(sample_path).read_bytes()
    fast = read(raw, sequences=("WaveformSequence", "WaveformAnnotationSequence"))
    assert fast.WaveformAnnotationSequence == dcmread(io.BytesIO(raw)).WaveformAnnotationSequence
    assert "WaveformAnnotationSequence" not in read(raw)  # the export's read stays lean
    assert extract(fast) == extract(dcmread(io.BytesIO(raw)))


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("syntax", ["implicit", "explicit", "deflated"])
def test_the_workers_read_leaves_out_only_items_extract_skips(sample, syntax):
    """The worker's read keeps only the annotation items holding a value
    (the fiducial points, most of a cart's items, are stepped over): the
    report is what it is on dcmread's data set, for the sample and for odd
    items (per-lead, no value, garbled, coded statements, unknown schemes)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from gateway.rebuild import read_dataset
    from gateway.report.measurements import VALUE_KEYWORDS

    ds = copy.deepcopy(sample)
    no_value = numeric("5.13.5-9", "SCPECG", "75", "ms")
    del no_value.NumericValue
    garbage = numeric("5.13.5-11", "SCPECG", "1", "ms")
    garbage[0x0040A30A] = RawDataElement(Tag(0x0040A30A), "DS", 12, b"not a numbr ", 0, False, True)
    coded = Dataset()
    coded.ConceptCodeSequence = Sequence([code("164889003", "SCT", "Atrial fibrillation")])
    odd = [numeric("5.13.5-7", "SCPECG", "150", "ms", channels=(1, 3)), no_value, garbage, coded]
    odd += [numeric("2:16770", "MDC", "72", "/min"), numeric("X-1", "99LOCAL", "3", "ms", channels=None), text("AF")]
    ds.WaveformAnnotationSequence = Sequence([*odd[:3], *ds.WaveformAnnotationSequence, *odd[3:]])
    ds.file_meta.TransferSyntaxUID = {
        "implicit": ImplicitVRLittleEndian,
        "explicit": ExplicitVRLittleEndian,
        "deflated": DeflatedExplicitVRLittleEndian,
    }[syntax]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()

    full, lean = dcmread(io.BytesIO(raw)), read_dataset(raw, annotations=True)
    valued = [it for it in full.WaveformAnnotationSequence if any(k in it for k in VALUE_KEYWORDS)]
    assert len(valued) == 11 + 6 < len(full.WaveformAnnotationSequence)  # the sample's 11, and 6 odd ones
    assert list(lean.WaveformAnnotationSequence) == valued
    assert lean.WaveformSequence == full.WaveformSequence
    assert extract(lean) == extract(full)
    assert extract(lean).statements == ["RITMO SINUSALE", "ECG NORMALE", "Atrial fibrillation", "AF"]


@pytest.mark.slow  # three ECGs through the worker and the demo model: ~4-9 s on 2 loaded cores
def test_the_worker_stores_them_and_rows_and_the_oru_carry_them(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample
):
    import ecg_variants as v
    from gateway.admin.queries import ecg_detail, ecg_rows
    from gateway.process.worker import Worker
    from gateway.store.models import EcgInstance, Hl7Message
    from test_process import drain, make_config, store

    cfg = make_config(db_url, tmp_path, demo_model)
    ok_id = store(cfg, session_factory, v.new_uids(sample))
    short_id = store(cfg, session_factory, v.new_uids(v.with_duration(sample, 5.0)))  # rejected by normalisation
    bare = v.new_uids(copy.deepcopy(sample))
    del bare.WaveformAnnotationSequence
    bare_id = store(cfg, session_factory, bare)
    drain(Worker(cfg, session_factory, demo_ensemble))

    with session_factory() as s:
        ok, short, plain = (s.get(EcgInstance, i) for i in (ok_id, short_id, bare_id))
        assert ok.status == "processed" and short.status == "rejected"
        assert ok.measurements["qtc_interval"]["value"] == 370 and ok.cart_statements == [
            "RITMO SINUSALE",
            "ECG NORMALE",
        ]
        # the cart's reading is kept even when the model could not read the ECG
        assert short.measurements == ok.measurements and short.cart_statements == ok.cart_statements
        assert plain.measurements == {} and plain.cart_statements == []
        rows = {r["id"]: r for r in ecg_rows(s)}
        assert rows[ok_id]["measurements"]["heart_rate"] == {
            "value": 61,
            "unit": "/min",
            "code": "8867-4",
            "name": "Heart rate",
            "source": "derived",
            "derived_from": "rr_interval",
        }
        assert rows[ok_id]["cart_statements"] == ["RITMO SINUSALE", "ECG NORMALE"]
        assert ecg_detail(s, str(ok_id))["measurements"] == ok.measurements
        payload = s.query(Hl7Message).filter_by(ecg_id=ok_id).one().payload
        rejected_payload = s.query(Hl7Message).filter_by(ecg_id=short_id).one().payload
    msg = hl7.parse(payload)

    def fields(seg):  # type: ignore[no-untyped-def]
        f = str(seg).split("|") + [""] * 20
        return f[2], f[3].split("^")[0], msg.unescape(f[5]), f[6].split("^")[0], msg.unescape(f[18])

    obx = [fields(seg) for seg in msg.segments("OBX")]
    nm = {ident: (value, units) for vt, ident, value, units, _ in obx if vt == "NM" and "-" in ident}
    assert nm == {
        "8867-4": ("61", "/min"),
        "8637-1": ("982", "ms"),
        "8625-6": ("161", "ms"),
        "8633-0": ("75", "ms"),
        "8634-8": ("368", "ms"),
        "8636-3": ("370", "ms"),
        "8626-4": ("74", "deg"),
        "8632-2": ("52", "deg"),
        "8638-9": ("57", "deg"),
    }
    statements = [(value, equipment) for vt, ident, value, _, equipment in obx if ident == "CART_STATEMENT"]
    # marked as the device's: OBX-18 names the cart (Manufacturer, ManufacturerModelName)
    assert statements == [
        ("RITMO SINUSALE", "Mortara Instrument, Inc. el250"),
        ("ECG NORMALE", "Mortara Instrument, Inc. el250"),
    ]
    # the cart's block comes before the AI's and the statements are not EKG impressions (8601-7)
    idents = [ident for _, ident, *_ in obx]
    assert idents.index("CART_STATEMENT") < idents.index("1DAVB_PROB")
    assert all(value not in ("RITMO SINUSALE", "ECG NORMALE") for vt, ident, value, *_ in obx if ident == "8601-7")
    assert "8636-3^Q-T interval corrected^LN" in rejected_payload
