"""Bad-input fuzzing of the receive stage (issue #9, item 1).

Mutated data sets derived from pydicom's real Mortara ECG (see
``fuzz_helpers``) are fed to the header reader (the bulk: at least 2,000), to
``store_instance`` directly, and over C-STORE to a running SCP (pynetdicom
sending the raw file bytes, and DCMTK storescu for a sample).  Pass = every
one gets a valid DIMSE status, the SCP still answers C-ECHO, RSS stays
bounded, and every accepted one reaches a final state in the Worker.

Larger runs: ``ECG_GATEWAY_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/test_fuzz_receive.py``
(the header reader gets that many cases; the network tests scale by the same factor).
The fast tier runs the header reader on ``SMOKE`` cases; the rest is ``slow``.
"""

from __future__ import annotations

import collections
import re
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from sqlalchemy import select

import fuzz_helpers as fh
from gateway.config import Config, DicomConfig, StorageConfig
from gateway.dicomio.reader import DicomError
from gateway.receive.header import EcgHeader, read_header
from gateway.receive.spool import (
    PROCESSING_FAILURE,
    SUCCESS,
    IncomingInstance,
    StoreContext,
    demographics,
    store_instance,
)
from gateway.store.models import FAILED, PROCESSED, REJECTED, EcgInstance
from gateway.store.spool import Spool
from receive_helpers import parse_statuses

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns about every invalid value, by design

#: RSS may grow this much over a fuzz run (caches, SQLite pages, TF arenas); a
#: leak of the received bytes or an allocation from a claimed 2^31 samples is far beyond.
RSS_BOUND_KIB = 256 * 1024
FINAL = {PROCESSED, REJECTED}
SMOKE = 200  # header-reader cases in the fast tier


def _check_header(header: EcgHeader) -> None:
    """What the SCP reads from every accepted header must not raise."""
    header.sop_instance_uid, header.sop_class_uid  # noqa: B018
    problem = header.waveform_problem()
    assert problem is None or problem.strip()
    for column, value in demographics(header).items():
        assert value is None or ("\x00" not in value and all(ch.isprintable() for ch in value)), column


@pytest.mark.parametrize(
    "count", [pytest.param(SMOKE, id="smoke"), pytest.param(fh.fuzz_examples(), id="full", marks=pytest.mark.slow)]
)
def test_header_reader_survives_mutations(count: int) -> None:
    """The bulk: every mutated data set is an EcgHeader or a DicomError with a
    reason.  The smoke run mutates the unmutated bases only (building the
    structural cases takes seconds)."""
    outcomes: collections.Counter[str] = collections.Counter()
    n = 0
    structural = fh.structural_cases() if count != SMOKE else []
    bases = None if count != SMOKE else [fh.Case(f"base:{k}", fh.encode(ds)) for k, ds in fh.base_datasets().items()]
    for case in [*structural, *fh.mutated_cases(count, seed=20260109, bases=bases)]:
        try:
            header = read_header(case.data)
        except DicomError as exc:
            assert str(exc).strip(), case.name
            outcomes["DicomError"] += 1
        except Exception as exc:  # pragma: no cover - the failure report
            pytest.fail(f"{case.name}: {type(exc).__name__} escaped read_header: {exc}")
        else:
            try:
                _check_header(header)
            except Exception as exc:  # pragma: no cover - the failure report
                pytest.fail(f"{case.name}: {type(exc).__name__} reading the parsed header: {exc}")
            outcomes["parsed"] += 1
        n += 1
    assert n == len(structural) + count and (count == SMOKE or count >= 2000)
    # both outcomes occur: the mutations reach the parser and do not all break the file
    assert outcomes["parsed"] > count // 10 and outcomes["DicomError"] > count // 10, outcomes


@pytest.mark.parametrize(
    "name,found,data",
    fh.regression_cases("header_regressions.json"),
    ids=lambda v: v if isinstance(v, str) and " " not in v else "",
)
def test_header_regressions(name: str, found: str, data: bytes) -> None:
    """Inputs that once let an exception escape (``found``) now read or refuse cleanly."""
    try:
        _check_header(read_header(data))
    except DicomError as exc:
        assert str(exc).strip()


def _config(db_url: str, tmp_path: Path, model: Path) -> Config:
    return Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "model": {"files": [str(model)], "batch_size": 8, "max_wait_ms": 0},
            "process": {"lease_seconds": 60, "max_attempts": 2},
        }
    )


def _drain_and_check(cfg: Config, session_factory, ensemble, accepted: set[int]) -> collections.Counter[str]:  # type: ignore[no-untyped-def]
    """Run a Worker until nothing is claimable; every accepted ECG must then
    be processed or rejected (never failed: that is an unexpected exception)."""
    from gateway.process.worker import Worker

    worker = Worker(cfg, session_factory, ensemble)
    for _ in range(len(accepted) + 10):
        if not worker.run_once():
            break
    with session_factory() as s:
        rows = s.execute(
            select(EcgInstance.id, EcgInstance.status, EcgInstance.error).where(EcgInstance.id.in_(accepted))
        ).all()
    assert {r.id for r in rows} == accepted
    stuck = [(r.id, r.status, (r.error or "").strip().splitlines()[-1:]) for r in rows if r.status not in FINAL]
    assert not stuck, f"accepted ECGs not in a final state (or failed): {stuck[:5]}"
    assert all(r.error for r in rows if r.status == REJECTED)
    return collections.Counter(r.status for r in rows)


@pytest.mark.slow
def test_store_instance_then_worker(db_url, session_factory, tmp_path: Path, demo_model, demo_ensemble) -> None:
    """Structural + byte mutations through the storage path, then the Worker."""
    cfg = _config(db_url, tmp_path, demo_model)
    cases = [*fh.structural_cases(), *fh.mutated_cases(fh.scaled(60), seed=7)]
    accepted: set[int] = set()
    statuses: collections.Counter[int] = collections.Counter()
    rss_before = fh.rss_kib()
    for serial, case in enumerate(cases):
        outcome = store_instance(
            IncomingInstance.from_file(fh.with_new_uid(case.data, serial), calling_ae="FUZZ", peer_address="127.0.0.1"),
            StoreContext(session_factory, Spool.from_config(cfg.storage)),
        )
        assert fh.is_valid_store_status(outcome.status), f"{case.name}: status 0x{outcome.status:04X} {outcome.reason}"
        statuses[outcome.status] += 1
        if outcome.status == SUCCESS:
            assert outcome.ecg_id is not None
            accepted.add(outcome.ecg_id)
        else:
            assert outcome.reason, case.name
    assert sum(statuses.values()) == len(cases) >= 120
    assert statuses[SUCCESS] and len(statuses) > 1, statuses
    t0 = time.monotonic()
    final = _drain_and_check(cfg, session_factory, demo_ensemble, accepted)
    print(f"worker: {len(accepted)} ECGs in {time.monotonic() - t0:.1f} s: {dict(final)}")
    assert final[PROCESSED] and final[REJECTED], final  # the sample's variants pass; broken ones are refused
    assert fh.rss_kib() - rss_before < RSS_BOUND_KIB


@pytest.fixture
def scp(session_factory, tmp_path: Path, port: int):  # type: ignore[no-untyped-def]
    from gateway.receive.scp import start_scp

    dicom = DicomConfig(
        port=port,
        host="127.0.0.1",
        min_free_disk_mb=0,
        max_associations=4,
        acse_timeout=5,
        dimse_timeout=10,
        network_timeout=10,
    )
    server = start_scp(dicom, StorageConfig(spool_dir=str(tmp_path / "spool")), session_factory)
    yield server
    server.shutdown()


def _client(port: int):  # type: ignore[no-untyped-def]
    from pynetdicom import AE

    from gateway.dicomio.reader import ECG_STORAGE_SOP_CLASSES, ECG_TRANSFER_SYNTAXES

    ae = AE(ae_title="FUZZCART")
    for sop_class in ECG_STORAGE_SOP_CLASSES:
        for syntax in ECG_TRANSFER_SYNTAXES:  # one context each: the SCP accepts one syntax per context
            ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="ECGGW")
    assert assoc.is_established
    return assoc


@pytest.mark.slow
def test_cstore_mutations_over_the_network_then_worker(
    scp, port: int, db_url, session_factory, tmp_path: Path, demo_model, demo_ensemble, monkeypatch
) -> None:
    """Mutated files sent as raw bytes (pynetdicom) and with DCMTK storescu;
    the SCP answers each with a valid status and still answers C-ECHO."""
    import pynetdicom

    # send each file's bytes as they are (only the file meta is read): no client-side repair
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    files = tmp_path / "files"
    files.mkdir()
    cases = [*fh.structural_cases()[:30], *fh.mutated_cases(fh.scaled(70), seed=11)]
    rss_before = fh.rss_kib()
    statuses: collections.Counter[int] = collections.Counter()
    assoc = _client(port)
    sent, refused_by_client = 0, []
    for serial, case in enumerate(cases):
        path = files / f"{serial}.dcm"
        path.write_bytes(fh.with_new_uid(case.data, 10_000 + serial))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                response = assoc.send_c_store(path)
        except (AttributeError, ValueError, KeyError, OSError, EOFError) as exc:
            refused_by_client.append(f"{type(exc).__name__}: {exc}")  # no usable file meta: nothing sent
            continue
        assert response, f"{case.name}: no C-STORE response (association {assoc.is_aborted and 'aborted'})"
        status = response.Status
        assert fh.is_valid_store_status(status) and status != PROCESSING_FAILURE, f"{case.name}: 0x{status:04X}"
        statuses[status] += 1
        sent += 1
    assert assoc.send_c_echo().Status == SUCCESS  # the same association is still served
    assoc.release()
    assert sent >= 80 and sent + len(refused_by_client) == len(cases), (sent, refused_by_client[:3])

    # DCMTK as the cart for a sample of them, over one association
    sample = sorted(files.glob("*.dcm"), key=lambda p: int(p.stem))[::6]
    proc = subprocess.run(
        ["storescu", "-d", "-nh", "-aet", "CART1", "-aec", "ECGGW", "127.0.0.1", str(port), *map(str, sample)],
        capture_output=True,
        timeout=120,
    )
    output = (proc.stdout + proc.stderr).decode("utf-8", "replace")  # -d dumps the mangled values too
    results = parse_statuses(output)
    for name, status in results:
        assert fh.is_valid_store_status(status), f"storescu {name}: 0x{status:04X}"
    # storescu refuses to send a file it cannot parse itself ("Bad DICOM file"): those are
    # counted, never silent; every other file must have got a status
    answered = {Path(name).name for name, _ in results}
    refused = {Path(name).name for name in re.findall(r"^E: Bad DICOM file: (.+?): ", output, re.MULTILINE)}
    print(f"storescu: {len(answered)} of {len(sample)} files answered, {len(refused)} refused by storescu")
    assert not answered & refused and len(results) == len(answered), output[-3000:]
    assert answered | refused == {p.name for p in sample}, output[-3000:]
    assert len(answered) >= len(sample) // 3, output[-3000:]  # the storescu leg tests the SCP, not only storescu
    assoc = _client(port)
    assert assoc.send_c_echo().Status == SUCCESS  # a new association after everything
    assoc.release()

    with session_factory() as s:
        accepted = set(s.scalars(select(EcgInstance.id).where(EcgInstance.status != REJECTED)))
    assert len(accepted) >= statuses[SUCCESS] // 2 > 0  # success includes duplicates of one instance
    t0 = time.monotonic()
    final = _drain_and_check(_config(db_url, tmp_path, demo_model), session_factory, demo_ensemble, accepted)
    print(f"worker: {len(accepted)} ECGs in {time.monotonic() - t0:.1f} s: {dict(final)}")
    assert FAILED not in final
    assert fh.rss_kib() - rss_before < RSS_BOUND_KIB
