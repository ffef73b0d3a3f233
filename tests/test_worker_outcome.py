"""The worker's outcome as a pure function (gateway.process.outcome.decide):
every outcome, its precedence, the retry backoff, and the ORU's options
(final, or a correction OBR-25 = C of an earlier version's result).  The
worker writing these decisions runs against real databases in test_process.py,
test_receive_versions.py and the end-to-end tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.deliver.oru import OruOptions
from gateway.process.outcome import MAX_RETRY_DELAY_S, Decision, Facts, Outcome, decide
from gateway.store.models import FAILED, PROCESSED, RECEIVED, REJECTED
from gateway.store.versions import IDENTITY_CHANGED_REASON

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
TRACEBACK = "Traceback (most recent call last):\n  ...\nOSError: disk gone\n"


def decided(
    facts: Facts, attempts: int = 1, max_attempts: int = 5, corrects: int | None = None, report_pdf: bytes | None = None
) -> Decision:
    return decide(
        facts, attempts=attempts, max_attempts=max_attempts, now=NOW, corrects=corrects, report_pdf=report_pdf
    )


def test_processed_sends_a_final_result_with_the_pdf():
    d = decided(Facts(inferred=True), report_pdf=b"%PDF-1.4")
    assert d == Decision(Outcome.PROCESSED, PROCESSED, None, oru=OruOptions(report_pdf=b"%PDF-1.4"))
    assert d.sends_result and d.releases_claim and d.metric_label == "processed"


def test_rejected_keeps_the_reason_and_sends_a_result_without_pdf():
    d = decided(Facts(rejection="no waveform: WaveformSequence missing"), report_pdf=b"%PDF-1.4")
    assert d == Decision(Outcome.REJECTED, REJECTED, "no waveform: WaveformSequence missing", oru=OruOptions())
    assert d.sends_result and d.releases_claim and d.metric_label == "rejected"


@pytest.mark.parametrize("facts", [Facts(inferred=True), Facts(rejection="too short")], ids=["processed", "rejected"])
def test_a_later_version_corrects_the_earlier_result(facts):
    d = decided(facts, corrects=41)
    assert d.oru is not None
    assert (d.oru.result_status, d.oru.filler_id) == ("C", "41")


def test_quarantined_another_patient_than_the_first_version_no_result():
    d = decided(Facts(inferred=True, identity_conflict=(7, 1)), corrects=7, report_pdf=b"%PDF")
    assert d == Decision(Outcome.QUARANTINED, REJECTED, f"{IDENTITY_CHANGED_REASON} (version 1 is ecg id 7)")
    assert not d.sends_result and d.releases_claim
    assert d.metric_label == "rejected"


@pytest.mark.parametrize(("attempts", "delay_s"), [(1, 2), (3, 8), (8, 256), (9, MAX_RETRY_DELAY_S), (20, 300)])
def test_unexpected_error_is_retried_with_capped_backoff(attempts, delay_s):
    d = decided(Facts(error=TRACEBACK), attempts=attempts, max_attempts=100)
    assert d == Decision(Outcome.RETRY, RECEIVED, TRACEBACK, retry_at=NOW + timedelta(seconds=delay_s))
    assert not d.sends_result and not d.releases_claim


def test_unexpected_error_fails_after_the_last_attempt():
    assert decided(Facts(error=TRACEBACK), attempts=4, max_attempts=5).outcome is Outcome.RETRY
    d = decided(Facts(error=TRACEBACK), attempts=5, max_attempts=5)
    assert d == Decision(Outcome.FAILED, FAILED, TRACEBACK)
    assert not d.sends_result and d.releases_claim and d.metric_label == "failed"


def test_an_error_outranks_the_model_output_and_the_rejection():
    # e.g. the model ran, then something failed after it: not a result
    assert decided(Facts(inferred=True, error=TRACEBACK)).outcome is Outcome.RETRY
    assert decided(Facts(rejection="too short", error=TRACEBACK)).outcome is Outcome.RETRY


def test_nothing_known_is_not_a_result():
    d = decided(Facts(), attempts=5, max_attempts=5)
    assert d == Decision(Outcome.FAILED, FAILED, None)
