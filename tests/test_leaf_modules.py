"""The leaf modules: the findings registry and the UTC helpers."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

import gateway
from gateway import findings
from gateway.config import Config
from gateway.timeutil import as_utc, utcnow

ROOT = Path(__file__).resolve().parents[1]

# docs/ecg-model.md (Ribeiro et al. 2020), written out again here on purpose:
# code, SNOMED CT, threshold, Table 2 (P, R, Sp, F1), published model.hdf5 F1, positives.
PAPER = [
    ("1dAVb", "270492004", 0.124, (0.867, 0.929, 0.995, 0.897), 0.857, 28),
    ("RBBB", "59118001", 0.070, (0.895, 1.00, 0.995, 0.944), 0.919, 34),
    ("LBBB", "164909002", 0.050, (1.00, 1.00, 1.00, 1.00), 0.984, 30),
    ("SB", "426177001", 0.278, (0.833, 0.938, 0.996, 0.882), 0.833, 16),
    ("AF", "164889003", 0.390, (1.00, 0.769, 1.00, 0.870), 0.783, 13),
    ("ST", "427084000", 0.174, (0.947, 0.973, 0.997, 0.960), 0.947, 37),
]


# --- findings registry ----------------------------------------------------------------------------


def test_registry_holds_the_papers_facts_in_model_output_order():
    got = [
        (
            f.code,
            f.snomed,
            f.threshold,
            (f.table2.precision, f.table2.recall, f.table2.specificity, f.table2.f1),
            f.published_model_f1,
            f.test_positives,
        )
        for f in findings.REGISTRY
    ]
    assert got == PAPER
    assert findings.FINDINGS == ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")
    assert findings.TEST_SET_EXAMS == 827
    assert [findings.BY_CODE[c].code for c in findings.FINDINGS] == list(findings.FINDINGS)


def test_registry_entries_are_frozen():
    with pytest.raises(AttributeError):
        findings.BY_CODE["AF"].threshold = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        findings.BY_CODE["XX"] = findings.BY_CODE["AF"]  # type: ignore[index]


def test_older_import_path_is_the_registry():
    assert gateway.FINDINGS is findings.FINDINGS


def test_config_defaults_come_from_the_registry():
    c = Config()
    assert c.model.thresholds == {code: thr for code, _, thr, *_ in PAPER}
    assert c.hl7.probability_codes == {
        "1dAVb": "1DAVB_PROB",
        "RBBB": "RBBB_PROB",
        "LBBB": "LBBB_PROB",
        "SB": "SB_PROB",
        "AF": "AF_PROB",
        "ST": "ST_PROB",
    }
    # a key left out keeps the registry's default
    assert Config.model_validate({"hl7": {"probability_codes": {"AF": "X"}}}).hl7.probability_codes["SB"] == "SB_PROB"


def test_listed_codes_for_help_texts():
    assert findings.listed() == "1dAVb, RBBB, LBBB, SB, AF, ST"
    assert findings.listed(" or ") == "1dAVb, RBBB, LBBB, SB, AF or ST"


# --- UTC helpers ----------------------------------------------------------------------------------


def test_as_utc_takes_a_naive_value_as_utc():
    got = as_utc(datetime(2024, 5, 6, 7, 8, 9))
    assert got == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC) and got.tzinfo is UTC


def test_as_utc_converts_an_aware_value():
    got = as_utc(datetime(2024, 5, 6, 1, 0, tzinfo=timezone(timedelta(hours=2))))
    assert (got.day, got.hour, got.tzinfo) == (5, 23, UTC)


def test_as_utc_keeps_utc_and_none():
    value = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert as_utc(value) == value and as_utc(value).isoformat() == "2024-05-06T07:08:09.123456+00:00"
    assert as_utc(None) is None


def test_utcnow_is_aware_utc():
    before = datetime.now(UTC)
    now = utcnow()
    after = datetime.now(UTC)
    assert now.tzinfo is UTC and before <= now <= after


# --- layering -------------------------------------------------------------------------------------


def test_leaf_modules_import_no_gateway_stage_package():
    code = (
        "import sys, gateway.findings, gateway.timeutil; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'gateway')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["gateway", "gateway.findings", "gateway.timeutil"]
