"""Issue 16 §3: ``[hl7] embed_pdf``: the PDF report inside the ORU as one ED OBX
(``^AP^PDF^Base64^<data>``), end to end in-process: a real C-STORE-less store,
the worker (demo model), the sender over MLLP to npm simple-hl7, python-hl7
reading what the receiver got; the decoded bytes equal ``ecg export-report``'s.
"""

from __future__ import annotations

import base64
import json

import hl7
import pytest
from pydicom import dcmread
from sqlalchemy import select

from deliver_helpers import receiver, require_receiver, sender, wait_for
from gateway.config import Config
from gateway.deliver.oru import ED_PDF_PREFIX, embedded_pdf
from gateway.store.models import EcgInstance, Hl7Message


@pytest.fixture(autouse=True)
def _receiver_available() -> None:
    require_receiver()


def config(db_url, tmp_path, model, port, embed: bool) -> Config:  # type: ignore[no-untyped-def]
    return Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "model": {"files": [str(model)], "batch_size": 4, "max_wait_ms": 0},
            "hl7": {
                "host": "127.0.0.1",
                "port": port,
                "embed_pdf": embed,
                "connect_timeout": 1.0,
                "ack_timeout": 5.0,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.2,
            },
        }
    )


@pytest.mark.slow  # the worker, the npm receiver, 130 KB messages
def test_the_pdf_in_the_oru_is_the_exported_pdf(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample_path, port
):
    import ecg_variants as v
    from gateway.admin.exports import report_pdf
    from gateway.deliver.outbox import resend
    from gateway.process.worker import Worker
    from test_process import drain, store

    sample = dcmread(sample_path)
    cfg = config(db_url, tmp_path, demo_model, port, embed=True)
    ok_id = store(cfg, session_factory, v.new_uids(sample))
    short_id = store(cfg, session_factory, v.new_uids(v.with_duration(sample, 5.0)))  # rejected: no report
    drain(Worker(cfg, session_factory, demo_ensemble))
    with receiver(port, tmp_path / "rx.jsonl") as rx, sender(session_factory, cfg.hl7):

        def both() -> list | None:
            try:  # a ~130 KB line may be half written when read
                got = rx.messages()
            except json.JSONDecodeError:
                return None
            return got if len(got) == 2 else None

        got = wait_for(both, 60, what="both ORUs at the receiver")
    with session_factory() as s:
        ok = s.get(EcgInstance, ok_id)
        exported = report_pdf(s, str(ok_id), cfg.storage.spool_dir)[1]
        by_control = {m.control_id: m.ecg_id for m in s.scalars(select(Hl7Message))}
    received = {by_control[g["control_id"]]: g["message"] for g in got}
    # python-hl7 reads the receiver's copy: one ED OBX whose base64 decodes to the exported PDF, byte for byte
    msg = hl7.parse(received[ok_id].replace("\n", "\r"))
    ed = [seg for seg in msg.segments("OBX") if str(seg[2]) == "ED"]
    assert len(ed) == 1
    assert str(ed[0][3]).startswith("REPORT_PDF^")
    field = str(ed[0][5])
    assert field.startswith(ED_PDF_PREFIX)
    decoded = base64.b64decode(field[len(ED_PDF_PREFIX) :], validate=True)
    assert decoded == exported and decoded.startswith(b"%PDF-")
    assert len(received[ok_id]) > 4 * len(exported) // 3  # the whole report travelled
    assert not any(str(seg[2]) == "ED" for seg in hl7.parse(received[short_id].replace("\n", "\r")).segments("OBX"))
    # a resend carries the same PDF (the outbox has no model input to draw another)
    with session_factory() as s, s.begin():
        first = s.scalars(select(Hl7Message).where(Hl7Message.ecg_id == ok_id)).one()
        again = resend(s, first.id, "test", cfg.hl7)
        assert embedded_pdf(again.payload) == exported
    assert ok.measurements["qtc_interval"]["value"] == 370


def test_off_by_default(db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample_path, port):
    import ecg_variants as v
    from gateway.process.worker import Worker
    from test_process import drain, store

    cfg = config(db_url, tmp_path, demo_model, port, embed=False)
    assert Config().hl7.embed_pdf is False
    ecg_id = store(cfg, session_factory, v.new_uids(dcmread(sample_path)))
    drain(Worker(cfg, session_factory, demo_ensemble))
    with session_factory() as s:
        payload = s.scalars(select(Hl7Message).where(Hl7Message.ecg_id == ecg_id)).one().payload
    assert embedded_pdf(payload) is None and "|ED|" not in payload
