"""Issue 13 §1 and §3 through the real path: DCMTK storescu -> a running
`ecg-gateway serve` -> the npm MLLP receiver (simple-hl7) -> python-hl7.

One gateway run per database sends the attack ECGs of the issue (a channel
label that forges a second message, a CR-only label that forges segments), a
flat and a fully clipped ECG (rejection reasons of 434 and 900+ characters)
and two ECGs whose IssuerOfPatientID is longer than HL7's 20 characters (one
mapped by [hl7.assigning_authorities], one cut).  Every ECG must yield exactly
one ORU^R01 at the receiver, each one message with one MSH and one PID.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import hl7
import numpy as np
import pytest
from sqlalchemy import select

import ecg_variants as v
from conftest import free_port
from deliver_helpers import receiver
from e2e_helpers import gateway_env, start_serve, stop, storescu, wait_for_port, wait_until
from gateway.deliver.oru import MORE, REASON_LIMIT, REJECTED_PREFIX
from gateway.store.db import make_engine, make_sessionmaker
from gateway.store.models import PROCESSED, REJECTED, EcgInstance, Hl7Message

#: The label of issue 13 §1, verbatim: FS and CR end the ORU's frame, VT opens a forged one.
ATTACK_LABEL = "A\x1c\r\x0bMSH!#$%*!LAB!LAB!EHR!HOSPITAL!20260101!!ADT#A08!INJ1!P!2.5.1\rPID!1!!666666!!Hacked#Ed\rZ"
CR_ONLY_LABEL = "A\rPID|1||666666||Hacked^Ed\rZ"
CONTROL_BYTES = [b for b in range(0x20) if b != 0x0D] + [0x7F]


def labelled(ds, label: str):
    """First channel: no ChannelSourceSequence, no units, the given label (issue 13 §1)."""
    out = copy.deepcopy(ds)
    channel = v.rhythm(out).ChannelDefinitionSequence[0]
    del channel.ChannelSourceSequence
    del channel.ChannelSensitivityUnitsSequence
    channel.ChannelLabel = label
    return out


def with_samples(ds, change):
    out = copy.deepcopy(ds)
    group = v.rhythm(out)
    x = v.raw_samples(group)
    group.WaveformData = np.ascontiguousarray(change(x)).astype(x.dtype).tobytes()
    return out


#: name -> (build from the sample, PatientID, IssuerOfPatientID, expected status)
CASES = {
    "attack": (lambda ds: labelled(ds, ATTACK_LABEL), "PAT-ATTACK", "HOSP", REJECTED),
    "cr-only": (lambda ds: labelled(ds, CR_ONLY_LABEL), "PAT-CR", "HOSP", REJECTED),
    "flat": (lambda ds: with_samples(ds, np.zeros_like), "PAT-FLAT", "HOSP", REJECTED),
    "clipped": (
        lambda ds: with_samples(ds, lambda x: np.clip(x.astype(np.int64) * 300, -32768, 32767)),
        "PAT-CLIP",
        "HOSP",
        REJECTED,
    ),
    "issuer-mapped": (lambda ds: ds, "PAT-MAPPED", "UNIVERSITY-HOSPITAL-X", PROCESSED),
    "issuer-cut": (lambda ds: ds, "PAT-CUT", "UNIVERSITY-HOSPITAL-Y", PROCESSED),
}


def write_cases(folder: Path) -> dict[str, Path]:
    import warnings

    folder.mkdir()
    base = v.load_sample()
    out = {}
    for name, (build, patient_id, issuer, _) in CASES.items():
        with warnings.catch_warnings():  # the labels are longer than SH allows: that is the attack
            warnings.simplefilter("ignore")
            ds = v.new_uids(build(base))
            ds.PatientID, ds.IssuerOfPatientID = patient_id, issuer
            out[name] = v.save(ds, folder / f"{name}.dcm")
    return out


@pytest.mark.slow
@pytest.mark.one_db("postgresql", "sqlite")  # through serve once; the builder and the store are tested on both
def test_attack_flat_clipped_and_long_issuers_each_yield_one_oru(db_url, tmp_path, demo_model):
    files = write_cases(tmp_path / "in")
    dicom_port, admin_port, hl7_port = free_port(), free_port(), free_port()
    env = gateway_env(
        tmp_path,
        db_url,
        demo_model,
        dicom_port,
        admin_port,
        ECG_GATEWAY_HL7__ENABLED="true",
        ECG_GATEWAY_HL7__PORT=str(hl7_port),
        ECG_GATEWAY_HL7__BACKOFF_INITIAL_S="0.1",
        ECG_GATEWAY_HL7__ASSIGNING_AUTHORITIES='{ "UNIVERSITY-HOSPITAL-X" = "UHX" }',
    )
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    log_path = tmp_path / "serve.log"
    with receiver(hl7_port, tmp_path / "hl7.jsonl") as ehr:
        proc = start_serve(env, log_path)
        try:
            wait_for_port(dicom_port, proc=proc)
            results, text = storescu(list(files.values()), dicom_port)
            assert [s for _, s in results] == ["Success"] * len(files), text

            def all_delivered() -> bool:
                with sf() as s:
                    statuses = list(s.scalars(select(Hl7Message.status)))
                return len(statuses) == len(files) and set(statuses) == {"delivered"}

            wait_until(all_delivered, 180, what="one delivered ORU per ECG", procs=[proc])
            time.sleep(0.5)  # anything sent after the last ACK would arrive now
        finally:
            assert stop(proc) == 0, log_path.read_text()[-3000:]
        received = ehr.messages()
    log = log_path.read_text(encoding="utf-8", errors="replace")

    with sf() as s:
        rows = {r.patient_id: r for r in s.scalars(select(EcgInstance))}
        outbox = list(s.scalars(select(Hl7Message)))
    engine.dispose()
    assert sorted(rows) == sorted(c[1] for c in CASES.values())
    assert {m.status for m in outbox} == {"delivered"} and len(outbox) == len(files)

    # exactly one message per ECG arrived: no forged frame (INJ1), no cut ORU
    assert len(received) == len(files), [r["control_id"] for r in received]
    assert sorted(r["control_id"] for r in received) == sorted(m.control_id for m in outbox)
    by_patient = {}
    for r in received:
        raw = r["message"].encode("utf-8")
        assert not any(bytes([b]) in raw for b in CONTROL_BYTES), r["control_id"]
        msg = hl7.parse(r["message"])
        types = [str(seg[0]) for seg in msg]
        assert types.count("MSH") == 1 and types.count("PID") == 1 and types[:4] == ["MSH", "PID", "ORC", "OBR"]
        assert set(types[4:]) == {"OBX"}
        by_patient[msg["PID.F3.R1.C1"]] = msg
    assert sorted(by_patient) == sorted(rows)  # PID-3 of each is its own ECG's, never 666666
    assert "666666" not in by_patient and "INJ1" not in [r["control_id"] for r in received]

    def impression(msg) -> str:
        [obx] = [seg for seg in msg.segments("OBX") if str(seg[3][0][0]) == "8601-7"]
        return msg.unescape(str(obx[5]))

    for name, (_, patient_id, _, status) in CASES.items():
        row, msg = rows[patient_id], by_patient[patient_id]
        assert row.status == status, (name, row.status, row.error)
        if status == REJECTED:
            assert row.error.isprintable(), name  # the reason, as stored and shown, is one printable line
    # §1: the reason quotes the label repr-style, and arrives whole and readable
    for name in ("attack", "cr-only"):
        row, msg = rows[CASES[name][1]], by_patient[CASES[name][1]]
        assert row.error.startswith("channel 1 ('A\\") and row.error.endswith(
            "): no ChannelSensitivityUnitsSequence unit"
        )
        assert impression(msg) == REJECTED_PREFIX + row.error
    assert "\\x1c\\r\\x0bMSH!#$%*!LAB" in rows["PAT-ATTACK"].error
    assert "'A\\rPID|1||666666||Hacked^Ed\\rZ'" in rows["PAT-CR"].error
    # §3: the long reasons went out short; the full reason stays in the database
    for patient_id, first in (("PAT-FLAT", "I: flat (peak-to-peak 0.000 mV); "), ("PAT-CLIP", "I: clipped (")):
        row, sent = rows[patient_id], impression(by_patient[patient_id])
        assert len(row.error) > 400 and row.error.startswith("12 of 12 leads unusable: " + first)
        assert sent.startswith(REJECTED_PREFIX + "12 of 12 leads unusable: " + first) and sent.endswith(MORE)
        assert len(sent) <= len(REJECTED_PREFIX) + REASON_LIMIT
        assert row.error.startswith(sent[len(REJECTED_PREFIX) : -len(MORE)])
    assert by_patient["PAT-MAPPED"]["PID.F3.R1.C4"] == "UHX"
    assert by_patient["PAT-CUT"]["PID.F3.R1.C4"] == "UNIVERSITY-HOSPITAL-"
    assert by_patient["PAT-MAPPED"]["PID.F3.R1.C5"] == "MR"
    for msg in by_patient.values():  # ORC-3/OBR-3: the gateway's filler order number (the sample has none)
        ecg_id = rows[msg["PID.F3.R1.C1"]].id
        assert (
            (msg["ORC.F3.R1.C1"], msg["ORC.F3.R1.C2"])
            == (str(ecg_id), "ECGGW")
            == (msg["OBR.F3.R1.C1"], msg["OBR.F3.R1.C2"])
        )

    # the log: the cut issuer is named (escaped), the mapped one is not; no PHI; no raw control character
    warnings = [line for line in log.splitlines() if "PID-3.4" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "'UNIVERSITY-HOSPITAL-Y'" in warnings[0]
    assert not any(chr(b) in log.replace("\n", "") for b in CONTROL_BYTES)
    sample = v.load_sample()
    assert str(sample.PatientName).split("^")[0] not in log
    assert not any(patient_id in log for patient_id in rows)
