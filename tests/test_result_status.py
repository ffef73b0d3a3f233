"""Issue 17 §1: an AI read goes out as preliminary (OBR-25 = P, OBX-11 = P) unless
``[hl7] ai_result_status = "F"``; a demo model's read always P (MSH-11 = D); a
later version corrects (C) only a result sent as final; a resend keeps the status
it was sent with.  Through ``enqueue_result`` / ``resend`` on the real database."""

from __future__ import annotations

import hl7
import pytest
from sqlalchemy import select

from admin_helpers import seed
from gateway.config import Hl7Config
from gateway.deliver.oru import OruOptions, result_status_of
from gateway.deliver.outbox import ai_result_status, enqueue_result, resend
from gateway.store.models import EcgInstance, Hl7Message


@pytest.fixture
def seeded(session_factory, sample_path, tmp_path):
    return seed(session_factory, sample_path, tmp_path / "spool")


def _statuses(payload: str) -> tuple[str, set[str], str]:
    msg = hl7.parse(payload)
    return str(msg.segment("OBR")[25]), {str(o[11]) for o in msg.segments("OBX")}, str(msg.segment("MSH")[11])


@pytest.mark.parametrize(
    "setting, demo, expected", [("P", False, "P"), ("F", False, "F"), ("P", True, "P"), ("F", True, "P")]
)
def test_an_ai_read_is_preliminary_unless_the_site_says_final(session_factory, seeded, setting, demo, expected):
    cfg = Hl7Config(ai_result_status=setting)
    with session_factory() as s:
        ecg = s.get(EcgInstance, seeded["e1"])
        ecg.prediction.demo_model = demo
        msg = enqueue_result(s, ecg, ecg.prediction, cfg)
        assert msg is not None and msg.status == "pending", msg.last_error
        obr25, obx11, msh11 = _statuses(msg.payload)
        assert (obr25, obx11, msh11) == (expected, {expected}, "D" if demo else "P")


def test_the_default_is_preliminary_and_a_rejection_is_final(session_factory, seeded):
    assert Hl7Config().ai_result_status == "P"
    with pytest.raises(ValueError):
        Hl7Config(ai_result_status="C")
    with session_factory() as s:
        rejected = s.get(EcgInstance, seeded["e3"])
        msg = enqueue_result(s, rejected, None, Hl7Config())
        assert _statuses(msg.payload)[:2] == ("F", {"F"})  # "cannot be analysed" is no AI read


def test_a_correction_replaces_only_a_final_result(session_factory, seeded):
    """A later version of an instance (OruOptions C naming the earlier order): C when
    a final result was sent for that order, else the AI read's own status."""
    with session_factory() as s:
        ecg = s.get(EcgInstance, seeded["e2"])  # stands for the later version; e1 for the earlier
        first = s.get(Hl7Message, seeded["m1"])
        correction = OruOptions(result_status="C", filler_id=str(seeded["e1"]))
        for sent, setting, expected in (("P", "P", "P"), ("P", "F", "F"), ("F", "P", "C"), ("C", "F", "C")):
            first.payload = f"MSH|^~\\&|X\rOBR|1|||||||||||||||||||||||EC|{sent}"
            s.flush()
            ecg.prediction.demo_model = False
            got = ai_result_status(s, ecg, ecg.prediction, Hl7Config(ai_result_status=setting), correction)
            assert got == expected, (sent, setting)
        # a physician's over-read keeps the status its caller chose
        from gateway.deliver.oru import OverRead

        over = OruOptions(result_status="F", over_read=OverRead(findings=("AF",), reader_id="1", family_name="X"))
        assert ai_result_status(s, ecg, ecg.prediction, Hl7Config(), over) == "F"


def test_a_resend_keeps_the_status_it_was_sent_with(session_factory, seeded):
    with session_factory() as s:
        ecg = s.get(EcgInstance, seeded["e1"])
        preliminary = enqueue_result(s, ecg, ecg.prediction, Hl7Config())
        final = enqueue_result(s, ecg, ecg.prediction, Hl7Config(ai_result_status="F"))
        s.flush()
        again_p = resend(s, preliminary.id, "test", Hl7Config(ai_result_status="F"))
        again_f = resend(s, final.id, "test", Hl7Config())
        assert _statuses(again_p.payload)[:2] == ("P", {"P"})
        assert _statuses(again_f.payload)[:2] == ("F", {"F"})
        s.rollback()


def test_result_status_of():
    assert result_status_of("MSH|^~\\&|X\rOBR|1|||||||||||||||||||||||EC|P|") == "P"
    assert result_status_of("MSH|^~\\&|X\nOBR|1|||||||||||||||||||||||EC|C") == "C"
    assert result_status_of("MSH|^~\\&|X\rOBR|1|2") is None and result_status_of(None) is None
    assert result_status_of("OBR|1|||||||||||||||||||||||EC|X") is None


def test_the_worker_sends_the_ai_read_as_preliminary(session_factory, seeded):
    """What the worker stored for a processed ECG through the same path (enqueue_result)."""
    with session_factory() as s:
        ecg = s.get(EcgInstance, seeded["e1"])
        enqueue_result(s, ecg, ecg.prediction, Hl7Config())
        s.commit()
        payloads = s.scalars(
            select(Hl7Message.payload).where(Hl7Message.ecg_id == seeded["e1"]).order_by(Hl7Message.id.desc())
        ).first()
        assert result_status_of(payloads) == "P"
