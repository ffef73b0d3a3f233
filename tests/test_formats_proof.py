"""Issue 18 §5, proof: for each real sample the model input equals an
independent computation from the decoded leads (the sierraecg library's own
decode, a plain lxml read of the aECG), within 1e-4 mV; and the aECG sample
converted to DICOM with the project's encoder and sent by C-STORE (DCMTK
storescu) gives the same model input, within one LSB, as the aECG file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from lxml import etree
from scipy.signal import resample_poly
from sqlalchemy import select

from gateway.config import DicomConfig, StorageConfig
from gateway.normalise import NormaliseParams
from gateway.normalise.encode import make_ecg_dataset
from gateway.rebuild import model_input
from gateway.receive.scp import start_scp
from gateway.store.models import EcgInstance
from gateway.store.spool import Spool
from receive_helpers import storescu

DATA = Path(__file__).parent / "fixtures" / "inputs"
ORDER = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
#: docs/inputs facts: the ECG part of each Philips rhythm (before the end-of-record gap and pulse).
PHILIPS = {"129DYPRG.XML": 5264, "ad4d3d80-d165_1-04_orig.xml": 5300}


def independent_model_input(leads_mv: dict[str, np.ndarray], fs: int) -> np.ndarray:
    """What the model input must be: scipy's resample_poly to 400 Hz (its
    default Kaiser filter), centred in 4096 samples (padding or cropping)."""
    x = np.stack([leads_mv[lead] for lead in ORDER])
    g = np.gcd(400, fs)
    y = resample_poly(x, 400 // g, fs // g, axis=1)
    n = y.shape[1]
    if n <= 4096:
        before = (4096 - n) // 2
        y = np.pad(y, ((0, 0), (before, 4096 - n - before)))
    else:
        crop = (n - 4096) // 2
        y = y[:, crop : crop + 4096]
    return y.T


def aecg_leads_by_lxml(raw: bytes) -> tuple[dict[str, np.ndarray], int]:
    """A straightforward lxml read of the aECG rhythm leads (mV) and rate."""
    ns = {"v": "urn:hl7-org:v3"}
    root = etree.fromstring(raw)
    series = root.xpath("v:component/v:series[v:code/@code='RHYTHM']", namespaces=ns)[0]
    sequences = "v:component/v:sequenceSet/v:component/v:sequence"  # not the representative beat's
    increment = series.xpath(sequences + "[v:code/@code='TIME_ABSOLUTE']/v:value/v:increment", namespaces=ns)[0]
    assert increment.get("unit") == "s"
    fs = round(1 / float(increment.get("value")))
    leads = {}
    for seq in series.xpath(sequences + "[starts-with(v:code/@code, 'MDC_ECG_LEAD_')]", namespaces=ns):
        name = seq.xpath("v:code/@code", namespaces=ns)[0].removeprefix("MDC_ECG_LEAD_")
        value = seq.xpath("v:value", namespaces=ns)[0]
        scale = value.xpath("v:scale", namespaces=ns)[0]
        origin = value.xpath("v:origin", namespaces=ns)[0]
        assert scale.get("unit") == origin.get("unit") == "uV"
        digits = np.array(value.xpath("v:digits/text()", namespaces=ns)[0].split(), dtype=float)
        lead = {"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}.get(name, name)
        leads[lead] = (float(origin.get("value")) + float(scale.get("value")) * digits) / 1000
    return leads, fs


@pytest.mark.parametrize("name", sorted(PHILIPS))
def test_philips_model_input_equals_sierraecgs_own_decode(name: str) -> None:
    from sierraecg import read_file

    path = DATA / "philips" / name
    ecg = read_file(str(path))
    assert [lead.label for lead in ecg.leads] == list(ORDER)
    fs = ecg.leads[0].sampling_freq
    # 5 uV per count, offset 0 in both documents (docs: signalresolution / parsedwaveforms@resolution)
    leads = {lead.label: lead.samples[: PHILIPS[name]].astype(float) * 5 / 1000 for lead in ecg.leads}
    expected = independent_model_input(leads, fs)
    got = model_input(path.read_bytes(), NormaliseParams())
    assert got.report["source_format"] == "philips"
    assert got.report["source"]["samples"] == PHILIPS[name]
    assert np.abs(got.signal - expected).max() < 1e-4
    identified = got.report["lead_identification"]
    assert sorted(lead for leads in identified.values() for lead in leads) == sorted(ORDER)
    rebuilt = [how for how, leads in identified.items() if leads == ["III", "aVR", "aVL", "aVF"]]
    assert rebuilt and "rebuilt by sierraecg" in rebuilt[0]


def test_aecg_model_input_equals_a_plain_lxml_read() -> None:
    raw = (DATA / "aecg" / "hl7_aecg_example.xml").read_bytes()
    leads, fs = aecg_leads_by_lxml(raw)
    assert (fs, len(leads["V2"])) == (500, 5000)
    got = model_input(raw, NormaliseParams())
    assert np.abs(got.signal - independent_model_input(leads, fs)).max() < 1e-4
    assert got.report["lead_identification"] == {"aECG sequence code": list(ORDER)}
    assert got.report["leads_derived"] == []  # the file carries III, aVR, aVL, aVF: used as given


def test_aecg_as_dicom_through_c_store_gives_the_same_model_input(session_factory, tmp_path: Path, port: int) -> None:
    raw = (DATA / "aecg" / "hl7_aecg_example.xml").read_bytes()
    leads, fs = aecg_leads_by_lxml(raw)
    lsb_uv = 2.5  # the aECG scale: every value is a whole number of LSBs, so the encoding is exact
    ds = make_ecg_dataset(
        np.stack([leads[lead] for lead in ORDER], axis=1), fs, ORDER, resolution_uv=lsb_uv, patient_id="subject1"
    )
    path = tmp_path / "aecg.dcm"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    spool = tmp_path / "spool"
    scp = start_scp(
        DicomConfig(port=port, min_free_disk_mb=0), StorageConfig(spool_dir=str(spool)), session_factory, None
    )
    try:
        statuses, output = storescu(port, [path])
    finally:
        scp.shutdown()
    assert [status for _, status in statuses] == [0], output
    with session_factory() as s:
        row = s.scalars(select(EcgInstance)).one()
    stored = Spool(spool).resolve(row.spool_path).read_bytes()
    via_dicom = model_input(stored, NormaliseParams())
    via_aecg = model_input(raw, NormaliseParams())
    assert via_dicom.report["source_format"] == "dicom"
    assert np.abs(via_dicom.signal - via_aecg.signal).max() <= lsb_uv / 1000
