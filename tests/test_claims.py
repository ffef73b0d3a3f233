"""Claims of dead processes: who holds a claim is recorded (host, pid, start
time), and a claim whose holder provably died is released at once instead of
after the lease (issue 13 §5).  Real processes: the "dead" claimers are
child processes that were really started and killed."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from gateway.process import claim as claim_mod
from gateway.process.claim import claim_batch, release_dead_claims
from gateway.store import claimer as claimer_mod
from gateway.store.claimer import Claimer, claimer_alive, this_process
from gateway.store.models import PROCESSED, PROCESSING, RECEIVED, EcgInstance


def _rows(session_factory, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    with session_factory.begin() as s:
        rows = [
            EcgInstance(
                sop_instance_uid=f"1.2.826.0.1.77.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.1",
                spool_path=f"x/{i}.dcm",
                sha256="0" * 64,
                size_bytes=1,
            )
            for i in range(n)
        ]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def _dead_child() -> Claimer:
    """A real process that ran and was killed (and reaped): its pid is free."""
    me = this_process()
    assert me is not None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = claimer_mod._proc_stat(child.pid)[1]  # type: ignore[index]
    child.kill()
    child.wait()
    return Claimer(me.host, child.pid, started)


@pytest.fixture
def live_child():  # type: ignore[no-untyped-def]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    me = this_process()
    assert me is not None
    yield Claimer(me.host, child.pid, claimer_mod._proc_stat(child.pid)[1])  # type: ignore[index]
    child.kill()
    child.wait()


def _claim_as(session_factory, ecg_id: int, who: Claimer | None, token: str, attempts: int = 1) -> None:  # type: ignore[no-untyped-def]
    with session_factory.begin() as s:
        s.execute(
            update(EcgInstance)
            .where(EcgInstance.id == ecg_id)
            .values(
                status=PROCESSING,
                claimed_by=token,
                attempts=attempts,
                lease_expires_at=datetime.now(UTC) + timedelta(seconds=300),
                claim_host=who.host if who else None,
                claim_pid=who.pid if who else None,
                claim_started=who.started if who else None,
            )
        )


def _state(session_factory, ecg_id: int) -> tuple:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        r = s.get(EcgInstance, ecg_id)
        return r.status, r.claimed_by, r.claim_host, r.claim_pid, r.claim_started, r.attempts


def test_this_process_and_liveness():
    me = this_process()
    assert me is not None and me.pid == os.getpid()
    hostname, boot_id, pid_ns = me.host.split("/")
    assert boot_id == open("/proc/sys/kernel/random/boot_id").read().strip()
    assert pid_ns.startswith("pid:[")
    assert claimer_alive(me.pid, me.started)
    assert not claimer_alive(me.pid, me.started + 1)  # the pid now names another process
    dead = _dead_child()
    assert not claimer_alive(dead.pid, dead.started)


def test_a_killed_but_unreaped_process_is_dead():
    """A zombie (killed, its parent has not waited yet) keeps its pid and start time."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = claimer_mod._proc_stat(child.pid)[1]  # type: ignore[index]
    assert claimer_alive(child.pid, started)
    os.kill(child.pid, 9)
    deadline = time.monotonic() + 10
    while claimer_mod._proc_stat(child.pid)[0] != "Z" and time.monotonic() < deadline:  # type: ignore[index]
        time.sleep(0.01)
    assert not claimer_alive(child.pid, started)
    child.wait()


def test_claim_records_the_claimer(session_factory):
    [ecg_id] = _rows(session_factory, 1)
    me = this_process()
    assert claim_batch(session_factory, "w1", 5, lease_seconds=60, max_attempts=3, claimer=me) == [ecg_id]
    assert _state(session_factory, ecg_id) == (PROCESSING, "w1", me.host, me.pid, me.started, 1)


def test_release_only_provably_dead_claims(session_factory, live_child, caplog):
    ids = _rows(session_factory, 6)
    me = this_process()
    dead = _dead_child()
    other_host = Claimer("elsewhere/0000/pid:[1]", dead.pid, dead.started)
    reused_pid = Claimer(me.host, live_child.pid, live_child.started + 7)  # same pid, another process
    _claim_as(session_factory, ids[0], dead, "dead-w", attempts=2)
    _claim_as(session_factory, ids[1], live_child, "live-w")
    _claim_as(session_factory, ids[2], me, "me-w")
    _claim_as(session_factory, ids[3], other_host, "far-w")
    _claim_as(session_factory, ids[4], reused_pid, "reused-w")
    _claim_as(session_factory, ids[5], None, "old-w")  # claimed before claimers were recorded
    caplog.set_level(logging.INFO, "gateway.process")

    released = release_dead_claims(session_factory, me)

    assert released == {dead.pid: [ids[0]], live_child.pid: [ids[4]]}
    assert _state(session_factory, ids[0]) == (RECEIVED, None, None, None, None, 2)  # attempts kept
    assert _state(session_factory, ids[4])[:2] == (RECEIVED, None)
    for ecg_id, token in ((ids[1], "live-w"), (ids[2], "me-w"), (ids[3], "far-w"), (ids[5], "old-w")):
        assert _state(session_factory, ecg_id)[:2] == (PROCESSING, token)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        f"released 1 ECG claim(s) of process {dead.pid} on this host, which is no longer running "
        f"(ids {ids[0]}): processed again now, not after the lease" in warnings
    )
    # the released row is claimable at once, long before its 300 s lease
    assert claim_batch(session_factory, "w2", 10, lease_seconds=60, max_attempts=3, claimer=me) == [ids[0], ids[4]]
    # unknown claimers only when asked (SQLite start-up: nobody else can hold claims)
    assert release_dead_claims(session_factory, me, include_unknown=True) == {0: [ids[5]]}
    assert _state(session_factory, ids[5])[:2] == (RECEIVED, None)


def test_release_does_not_undo_a_claim_taken_over_meanwhile(session_factory, monkeypatch):
    """The release is a compare-and-set on the claim token."""
    [ecg_id] = _rows(session_factory, 1)
    dead = _dead_child()
    _claim_as(session_factory, ecg_id, dead, "dead-w")

    def alive_check(pid: int, started: int | None) -> bool:
        # between the read and the update, another worker takes the row over
        _claim_as(session_factory, ecg_id, this_process(), "new-owner")
        return False

    monkeypatch.setattr(claim_mod, "claimer_alive", alive_check)
    assert release_dead_claims(session_factory, this_process()) == {}
    assert _state(session_factory, ecg_id)[:2] == (PROCESSING, "new-owner")


def test_a_running_worker_releases_a_dead_siblings_claims(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample_path, monkeypatch
):
    """Another gateway process on this host was killed while this one runs:
    the periodic check hands its claims to this worker well before the lease."""
    from pydicom import dcmread

    import ecg_variants as v
    from gateway.process import worker as worker_mod
    from gateway.process.worker import Worker
    from test_process import make_config, store

    monkeypatch.setattr(worker_mod, "DEAD_CLAIM_CHECK_S", 0.2)
    cfg = make_config(db_url, tmp_path, demo_model, lease_seconds=600)
    ecg_id = store(cfg, session_factory, v.new_uids(dcmread(sample_path)))
    _claim_as(session_factory, ecg_id, _dead_child(), "killed-sibling")
    worker = Worker(cfg, session_factory, demo_ensemble)
    stop = threading.Event()
    t = threading.Thread(target=worker.run, args=(stop,))
    t.start()
    try:
        deadline = time.monotonic() + 60
        while _state(session_factory, ecg_id)[0] != PROCESSED and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        worker.wake()
        t.join(30)
    status, claimed_by, *_, attempts = _state(session_factory, ecg_id)
    assert (status, claimed_by, attempts) == (PROCESSED, None, 2)
    with session_factory() as s:
        assert s.scalar(select(EcgInstance.processed_at).where(EcgInstance.id == ecg_id)) is not None


# -- through the real path: serve killed with SIGKILL while it holds claims ---------------------------------


@pytest.mark.slow
@pytest.mark.one_db("postgresql", "sqlite")  # one serve; the claim SQL runs on both in the tests above
def test_kill_9_while_claimed_reprocessed_soon_after_restart(db_url, tmp_path, demo_model, sample_path):
    """`serve` (lease 300 s) is killed with SIGKILL while its worker holds a
    batch; the cart resends what was not acknowledged.  The restarted serve
    releases the dead process's claims at start, before its worker starts
    (not after the lease); they are processed soon after the restart and
    the EHR gets exactly one ORU^R01 per ECG.  While serve is killed the EHR
    is down, so no message is on the wire (a cut-off send may legitimately
    arrive twice: that is test_faults' kill test).

    Issue 13 asks for 30 s after the restart; measured 16-26 s on the shared
    2-CPU VM (docs/reliability.md).  The assertion allows 60 s, generous as
    the house rule asks: start-up alone (TensorFlow import, model load,
    warm-up) took up to 29 s there at load average 10, and the lease this
    replaces is 300 s."""
    from collections import Counter

    from sqlalchemy import func

    from conftest import free_port
    from deliver_helpers import receiver, require_receiver
    from e2e_helpers import gateway_env, start_serve, stop, wait_for_port, wait_until
    from fault_helpers import ecg_copies, start_storescu, store_outcomes
    from gateway.store.db import make_engine, make_sessionmaker
    from gateway.store.models import HL7_DELIVERED, Hl7Message

    require_receiver()
    n = 24
    copies = ecg_copies(sample_path, tmp_path / "in", n)
    by_name = {str(p): uid for p, (uid, _) in copies.items()}
    studies = {study for _, study in copies.values()}
    engine = make_engine(db_url)
    sf = make_sessionmaker(engine)
    log = tmp_path / "serve.log"
    hl7_port = free_port()
    acked: set[str] = set()

    def start(**extra: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        env = gateway_env(
            tmp_path,
            db_url,
            demo_model,
            port,
            free_port(),
            **extra,
            ECG_GATEWAY_HL7__ENABLED="true",
            ECG_GATEWAY_HL7__PORT=str(hl7_port),
            ECG_GATEWAY_HL7__CONNECT_TIMEOUT="1",
            ECG_GATEWAY_HL7__BACKOFF_INITIAL_S="0.1",
            ECG_GATEWAY_HL7__BACKOFF_MAX_S="0.5",
            ECG_GATEWAY_MODEL__THREADS="1",
            ECG_GATEWAY_MODEL__BATCH_SIZE="4",
            ECG_GATEWAY_PROCESS__LEASE_SECONDS="300",
        )
        proc = start_serve(env, log, "--components", "scp,worker,hl7")
        wait_for_port(port, proc=proc)
        return proc, port

    def claimed_by(pid: int) -> list[int]:
        with sf() as s:
            return list(
                s.scalars(select(EcgInstance.id).where(EcgInstance.status == PROCESSING, EcgInstance.claim_pid == pid))
            )

    def collect(cart: subprocess.Popen) -> None:
        out, _ = cart.communicate(timeout=120)
        acked.update(by_name[f] for f, s in store_outcomes(out).items() if s == "Success")

    proc, port = start(ECG_GATEWAY_MODEL__MAX_WAIT_MS="1000")  # the first batch fills up as the cart sends
    cart = start_storescu(list(copies), port)
    wait_until(lambda: len(claimed_by(proc.pid)) >= 4, 120, interval=0.01, what="a claimed batch", procs=[proc])
    proc.send_signal(9)
    proc.wait()
    collect(cart)
    held = claimed_by(proc.pid)
    assert held, "the kill did not land while the worker held claims"
    dead_pid = proc.pid

    with receiver(hl7_port, tmp_path / "hl7.jsonl") as ehr:
        restarted = time.monotonic()
        proc, port = start()
        try:
            collect(start_storescu([p for p in copies if by_name[str(p)] not in acked], port))
            assert len(acked) == n

            def processed(ids: list[int] | None = None) -> int:
                with sf() as s:
                    q = select(func.count()).select_from(EcgInstance).where(EcgInstance.status == PROCESSED)
                    return s.scalar(q.where(EcgInstance.id.in_(ids)) if ids else q) or 0

            wait_until(lambda: processed(held) == len(held), 120, interval=0.05, what="the killed claims", procs=[proc])
            held_s = time.monotonic() - restarted
            wait_until(lambda: processed() == n, 120, interval=0.05, what="all processed", procs=[proc])
            all_s = time.monotonic() - restarted

            def delivered() -> int:
                with sf() as s:
                    return s.scalar(select(func.count()).where(Hl7Message.status == HL7_DELIVERED)) or 0

            wait_until(lambda: delivered() == n, 120, what="all delivered", procs=[proc])
        finally:
            code = stop(proc)
        received = ehr.messages()
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    print(
        f"\n{engine.dialect.name}: the {len(held)} ECG(s) claimed by the killed process processed "
        f"{held_s:.1f} s after the restart (model load included); all {n} after {all_s:.1f} s"
    )
    assert held_s < 60, f"the killed worker's ECGs were processed {held_s:.1f} s after the restart"
    lines = text.splitlines()
    released = next(
        i
        for i, line in enumerate(lines)
        if f"ECG claim(s) of process {dead_pid} on this host, which is no longer running" in line
    )
    started = max(i for i, line in enumerate(lines) if "gateway.process: worker " in line and " started" in line)
    assert released < started  # released at start, before the new worker claims anything
    with sf() as s:
        attempts = dict(s.execute(select(EcgInstance.id, EcgInstance.attempts)).all())
    assert all(attempts[i] == 2 for i in held)  # the killed claim counted as one attempt
    per_study = Counter(st for m in received for st in studies if st in m["message"])
    assert per_study == Counter({st: 1 for st in studies}), per_study  # exactly one ORU per ECG
    assert len(received) == n
    engine.dispose()
