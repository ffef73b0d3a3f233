"""Outbox claims of dead senders (HL7 and PACS): each claim records its
claimer (host, pid, start time), cleared with the outcome; a claim whose
claimer provably died on this host is due again at once, at sender start and
periodically, instead of after the lease (115 s for HL7 with the default timeouts).  Claims of
live processes and of other hosts keep their lease.  The "dead" and "live"
claimers are real child processes (tests/test_claims.py's helpers)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from deliver_helpers import hl7_config, make_ecg, receiver, require_receiver, sender, wait_for
from gateway.config import Config
from gateway.deliver import pacs as pacs_mod
from gateway.deliver import sender as sender_mod
from gateway.deliver.claims import release_dead_outbox_claims
from gateway.deliver.outbox import enqueue_result
from gateway.deliver.sender import claim_due
from gateway.store.claimer import Claimer, this_process
from gateway.store.models import Hl7Message, PacsMessage
from gateway.timeutil import as_utc, utcnow
from test_claims import _dead_child, live_child  # noqa: F401 - live_child is a fixture

OTHER_HOST = "elsewhere/0000/pid:[1]"


def enqueue_hl7(session_factory, cfg, patients: list[str]) -> list[int]:  # type: ignore[no-untyped-def]
    """One queued ORU per entry (same patient = same order key); message ids."""
    with session_factory() as s, s.begin():
        msgs = []
        for patient in patients:
            ecg = make_ecg(s, patient_id=patient)
            msgs.append(enqueue_result(s, ecg, ecg.prediction, cfg))
        s.flush()
        return [m.id for m in msgs]


def claim_hl7_as(session_factory, cfg, who: Claimer | None) -> int:  # type: ignore[no-untyped-def]
    """Claim the oldest due message as ``who`` (a sender that then died, or still runs)."""
    with session_factory() as s:
        [claimed] = claim_due(s, cfg, utcnow(), limit=1, claimer=who)
    return claimed.id


def hl7_rows(session_factory) -> dict[int, Hl7Message]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return {m.id: m for m in s.scalars(select(Hl7Message).order_by(Hl7Message.id))}


def claim_of(row: Hl7Message | PacsMessage) -> tuple[Any, ...]:
    return row.claim_host, row.claim_pid, row.claim_started


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- HL7 ---------------------------------------------------------------------------------------------


def test_hl7_claim_of_a_dead_sender_is_sent_at_start(session_factory, port, tmp_path, caplog):
    """The claimed head of one patient's queue and the two behind it go out at
    once after the restart (the lease is 39 s here, wait_for's deadline 30 s),
    in order, each once; the cut-off send counts as an attempt."""
    require_receiver()
    cfg = hl7_config(port)
    ids = enqueue_hl7(session_factory, cfg, ["P1", "P1", "P1"])
    dead = _dead_child()
    assert claim_hl7_as(session_factory, cfg, dead) == ids[0]
    head = hl7_rows(session_factory)[ids[0]]
    assert claim_of(head) == (dead.host, dead.pid, dead.started) and head.attempts == 1
    caplog.set_level(logging.INFO, "gateway.deliver")

    with receiver(port, tmp_path / "rx.jsonl") as rx, sender(session_factory, cfg):
        wait_for(lambda: all(m.status == "delivered" for m in hl7_rows(session_factory).values()), what="delivery")
        got = [g["control_id"] for g in rx.messages()]

    rows = hl7_rows(session_factory)
    assert got == [rows[i].control_id for i in ids]  # in order, each once
    assert [rows[i].attempts for i in ids] == [2, 1, 1]
    assert all(claim_of(m) == (None, None, None) for m in rows.values())  # cleared with the outcome
    assert (
        f"released 1 HL7 message claim(s) of process {dead.pid} on this host, which is no longer running "
        f"(ids {ids[0]}): sent again now, not after the lease" in warnings(caplog)
    )


def test_hl7_claims_of_live_processes_and_other_hosts_keep_their_lease(session_factory, live_child):  # noqa: F811
    cfg = hl7_config(9)  # nothing is sent
    me = this_process()
    assert me is not None
    ids = enqueue_hl7(session_factory, cfg, ["A", "B", "C"])
    far = Claimer(OTHER_HOST, live_child.pid + 1, 1)  # a pid that may or may not run here: not ours to judge
    for who in (live_child, me, far):
        claim_hl7_as(session_factory, cfg, who)
    before = {i: (claim_of(m), m.attempts, m.next_attempt_at) for i, m in hl7_rows(session_factory).items()}

    assert release_dead_outbox_claims(session_factory, Hl7Message, me) == {}
    assert {i: (claim_of(m), m.attempts, m.next_attempt_at) for i, m in hl7_rows(session_factory).items()} == before
    with session_factory() as s:
        assert claim_due(s, cfg, utcnow()) == []  # all three still leased

    # the live claimer dies: its claim (only) is released, due at once, attempts kept
    import os

    os.kill(live_child.pid, 9)
    released = wait_for(lambda: release_dead_outbox_claims(session_factory, Hl7Message, me), what="the release")
    assert released == {live_child.pid: [ids[0]]}
    with session_factory() as s:
        [again] = claim_due(s, cfg, utcnow(), claimer=me)
    assert (again.id, again.attempts) == (ids[0], 2)
    rows = hl7_rows(session_factory)
    assert claim_of(rows[ids[0]]) == (me.host, me.pid, me.started)
    assert claim_of(rows[ids[2]]) == (far.host, far.pid, far.started)


def test_a_running_hl7_sender_releases_a_dead_siblings_claim(
    db_url,
    session_factory,
    port,
    tmp_path,
    live_child,  # noqa: F811
    monkeypatch,
    caplog,
):
    """Another gateway process on this host holds a claim and is killed while
    this sender runs: the periodic check sends its message well before the lease."""
    require_receiver()
    import os

    monkeypatch.setattr(sender_mod, "DEAD_CLAIM_CHECK_S", 0.2)
    cfg = hl7_config(port)
    [mid] = enqueue_hl7(session_factory, cfg, ["P1"])
    claim_hl7_as(session_factory, cfg, live_child)
    caplog.set_level(logging.INFO, "gateway.deliver")
    with receiver(port, tmp_path / "rx.jsonl") as rx, sender(session_factory, cfg):
        os.kill(live_child.pid, 9)
        wait_for(lambda: hl7_rows(session_factory)[mid].status == "delivered", what="delivery")
        [got] = rx.messages()
    row = hl7_rows(session_factory)[mid]
    assert got["control_id"] == row.control_id and row.attempts == 2 and claim_of(row) == (None, None, None)
    if db_url.startswith("postgresql"):  # SQLite: made due at start (one process)
        assert any(f"HL7 message claim(s) of process {live_child.pid} on this host" in w for w in warnings(caplog))


# -- PACS --------------------------------------------------------------------------------------------


def pacs_config(db_url: str, tmp_path) -> Config:  # type: ignore[no-untyped-def]
    return Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "hl7": {"enabled": False},
            "pacs": {"enabled": True, "port": 9, "send": ["pdf"], "backoff_initial_s": 0.05, "backoff_max_s": 0.1},
        }
    )


def enqueue_pacs_row(session_factory, cfg: Config) -> int:  # type: ignore[no-untyped-def]
    with session_factory() as s, s.begin():
        [row] = pacs_mod.enqueue_pacs(s, make_ecg(s), cfg.pacs)
        s.flush()
        return row.id


def pacs_row(session_factory, row_id: int) -> PacsMessage:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        row = s.get(PacsMessage, row_id)
        assert row is not None
        return row


def test_pacs_claim_of_a_dead_sender_is_sent_at_start(db_url, session_factory, tmp_path, monkeypatch, caplog):
    """The PACS sender (its C-STORE replaced: what is tested is the claim)
    sends a dead process's claimed object at once, not after the lease
    (2 * (10 + 30) + 10 s by default)."""
    cfg = pacs_config(db_url, tmp_path)
    row_id = enqueue_pacs_row(session_factory, cfg)
    dead = _dead_child()
    claimed = pacs_mod._claim(session_factory, cfg.pacs, dead)
    assert claimed is not None and (claimed.id, claimed.attempts) == (row_id, 1)
    lease_end = as_utc(pacs_row(session_factory, row_id).next_attempt_at)
    assert lease_end is not None and (lease_end - utcnow()).total_seconds() > 60
    stored: list[Any] = []
    monkeypatch.setattr(pacs_mod, "build_object", lambda session, msg, spool, limit: msg.sop_instance_uid)
    monkeypatch.setattr(pacs_mod, "c_store", lambda ds, pacs: stored.append(ds))  # None: stored
    caplog.set_level(logging.INFO, "gateway.deliver")
    stop = threading.Event()
    t = threading.Thread(target=pacs_mod.run_pacs_sender, args=(session_factory, cfg, stop))
    t.start()
    try:
        wait_for(lambda: pacs_row(session_factory, row_id).status == "delivered", what="the stored object")
    finally:
        stop.set()
        t.join(30)
    row = pacs_row(session_factory, row_id)
    assert stored == [row.sop_instance_uid]
    assert row.attempts == 2 and claim_of(row) == (None, None, None)
    assert (
        f"released 1 PACS message claim(s) of process {dead.pid} on this host, which is no longer running "
        f"(ids {row_id}): sent again now, not after the lease" in warnings(caplog)
    )


def test_pacs_claims_of_live_processes_and_other_hosts_keep_their_lease(
    db_url,
    session_factory,
    tmp_path,
    live_child,  # noqa: F811
):
    cfg = pacs_config(db_url, tmp_path)
    me = this_process()
    assert me is not None
    ids = [enqueue_pacs_row(session_factory, cfg) for _ in range(2)]
    far = Claimer(OTHER_HOST, 1, 1)
    for who in (live_child, far):
        assert pacs_mod._claim(session_factory, cfg.pacs, who) is not None
    leases: dict[int, datetime] = {i: pacs_row(session_factory, i).next_attempt_at for i in ids}

    assert release_dead_outbox_claims(session_factory, PacsMessage, me) == {}
    assert {i: pacs_row(session_factory, i).next_attempt_at for i in ids} == leases
    assert pacs_mod._claim(session_factory, cfg.pacs, me) is None  # both still leased

    import os

    os.kill(live_child.pid, 9)
    released = wait_for(lambda: release_dead_outbox_claims(session_factory, PacsMessage, me), what="the release")
    assert released == {live_child.pid: [ids[0]]}
    again = pacs_mod._claim(session_factory, cfg.pacs, me)
    assert again is not None and (again.id, again.attempts) == (ids[0], 2)
    assert claim_of(pacs_row(session_factory, ids[1])) == (far.host, far.pid, far.started)
