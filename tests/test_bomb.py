"""Decompression bombs and oversize data sets (issue 13, item 2): ``[dicom]
max_dataset_mb`` holds in every path that reads DICOM bytes - the SCP while
P-DATA arrives, the header read at the door, ``ingest``, the worker's read and
the pydicom fallbacks - with bounded memory.  See docs/security.md.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select
from typer.testing import CliRunner

import fuzz_helpers as fh
from bomb_helpers import MIB, bomb_stream, deflated_bomb, oversize_file, send_file
from gateway.dicomio.limits import DEFAULT_MAX_DATASET_BYTES, DatasetTooLarge, inflate
from gateway.dicomio.reader import DicomError, read
from gateway.receive.header import read_header
from gateway.receive.spool import DATA_SET_TOO_LARGE, SUCCESS, IncomingInstance, StoreContext, store_instance
from gateway.store.models import PROCESSED, REJECTED, EcgInstance, Hl7Message
from gateway.store.spool import Spool
from receive_helpers import ecg_bytes, write

ROOT = Path(__file__).resolve().parents[1]
TOO_LARGE_64 = "larger than [dicom] max_dataset_mb (64 MB)"
INFLATES_64 = "deflated data set inflates to more than [dicom] max_dataset_mb (64 MB)"


def read_dicom(raw: bytes, max_bytes: int) -> Any:
    """dicomio's pydicom path alone (what ``read`` falls back to)."""
    return read(raw, max_bytes, sequences=None)


def _deflate(data: bytes, level: int = 6) -> bytes:
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


# -- the bounded inflate ------------------------------------------------------------------------

# around the output chunk (1 MiB) and the output kept on the first pass (2 MiB) of gateway.dicomio.limits
SIZES = [0, 1, 1000, MIB - 1, MIB, MIB + 1, 2 * MIB, 2 * MIB + 1, 5 * MIB + 3]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["zeros", "random"])
@pytest.mark.parametrize("level", [0, 9])
def test_inflate_exact_limit_passes_and_one_byte_more_is_refused(size: int, kind: str, level: int) -> None:
    data = bytes(size) if kind == "zeros" else os.urandom(size)
    stream = _deflate(data, level)
    exact = inflate(stream, size)
    assert exact.complete and exact.data == data
    if size:
        with pytest.raises(DatasetTooLarge, match=r"inflates to more than \[dicom\] max_dataset_mb"):
            inflate(stream, size - 1)
    assert inflate(stream + b"trailing bytes are ignored", size).data == data


@pytest.mark.parametrize("size", [1000, MIB + 1, 5 * MIB + 3])
def test_inflate_truncated_stream_gives_what_it_has_and_says_incomplete(size: int) -> None:
    data = os.urandom(size // 2) + bytes(size - size // 2)
    stream = _deflate(data)
    half = inflate(stream[: len(stream) // 2], size)
    assert not half.complete and data.startswith(half.data) and len(half.data) < size
    no_end = inflate(stream[:-1], size)  # the last byte may hold only the end of the final block
    assert not no_end.complete and data.startswith(no_end.data)
    assert inflate(b"", size) == inflate(b"", 0)
    assert not inflate(b"", size).complete and inflate(b"", size).data == b""


@pytest.mark.parametrize(
    "garbage", [b"\xff" * 64, b"not a deflate stream at all", os.urandom(4096)[:1] + b"\x07" * 100]
)
def test_inflate_garbage_is_a_zlib_error(garbage: bytes) -> None:
    with pytest.raises(zlib.error):
        inflate(garbage, MIB)


@pytest.mark.parametrize("final_block", [True, False], ids=["complete", "no-final-block"])
def test_inflating_a_bomb_stops_at_the_limit_in_bounded_memory(final_block: bool) -> None:
    stream = bomb_stream(b"", 1024, final_block=final_block)  # 1 GiB of zeros in ~1 MB
    rss = fh.rss_kib()
    with pytest.raises(DatasetTooLarge, match=re.escape(INFLATES_64)):
        inflate(stream, DEFAULT_MAX_DATASET_BYTES)
    assert fh.rss_kib() - rss < 32 * 1024, "the refused output was kept"


# -- every reader: header (door), worker, pydicom fallback ---------------------------------------


@pytest.mark.parametrize("final_block", [True, False], ids=["complete", "no-final-block"])
def test_every_reader_refuses_a_bomb_without_inflating_it(sample_path: Path, final_block: bool) -> None:
    """The door's header read, the worker's read (whose fast path would
    otherwise fall back to dcmread on a stream without its final block) and
    the pydicom fallback itself stop at the limit; memory stays bounded."""
    raw = deflated_bomb(sample_path, 1024, final_block=final_block)
    rss = fh.rss_kib()
    for reader in (read_header, read, read_dicom):
        with pytest.raises(DatasetTooLarge, match=re.escape(INFLATES_64)):
            reader(raw, DEFAULT_MAX_DATASET_BYTES)
    assert fh.rss_kib() - rss < 32 * 1024


def test_readers_hold_plain_bytes_to_the_limit(sample_path: Path) -> None:
    raw = ecg_bytes(sample_path)
    for reader in (read_header, read, read_dicom):
        reader(raw, len(raw))  # exactly the limit: read
        with pytest.raises(DatasetTooLarge, match=f"data set of {len(raw)} bytes is larger than"):
            reader(raw, len(raw) - 1)


def test_bounded_fallback_reads_a_deflated_file_as_dcmread_does(sample_path: Path) -> None:
    raw = ecg_bytes(sample_path, transfer_syntax=DeflatedExplicitVRLittleEndian)
    ours, theirs = read_dicom(raw, DEFAULT_MAX_DATASET_BYTES), dcmread(io.BytesIO(raw))
    assert ours == theirs and ours.file_meta == theirs.file_meta
    assert ours.WaveformSequence[0].WaveformData == theirs.WaveformSequence[0].WaveformData
    truncated = raw[: len(raw) - 40]
    with pytest.raises(zlib.error, match="incomplete or truncated stream"):
        dcmread(io.BytesIO(truncated))
    with pytest.raises(DicomError, match="incomplete or truncated stream"):
        read_dicom(truncated, DEFAULT_MAX_DATASET_BYTES)
    with pytest.raises(DicomError, match="incomplete or truncated stream"):
        read(truncated, DEFAULT_MAX_DATASET_BYTES)  # the fast path leaves it to dcmread: dcmread's verdict


# -- the door: store_instance and ingest -------------------------------------------------------------


def _kept_files(spool: Path) -> list[Path]:
    return sorted(p for p in spool.rglob("*") if p.is_file()) if spool.exists() else []


def test_store_instance_refuses_a_bomb_and_keeps_nothing(
    session_factory, tmp_path: Path, sample_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uid = generate_uid()
    spool = tmp_path / "spool"
    caplog.set_level(logging.WARNING, "gateway.receive")
    out = store_instance(
        IncomingInstance.from_file(
            deflated_bomb(sample_path, 1024, uid=uid), calling_ae="BOMBER", peer_address="192.0.2.7"
        ),
        StoreContext(session_factory, Spool(spool)),
    )
    assert (out.status, out.ecg_id, out.reason) == (DATA_SET_TOO_LARGE, None, INFLATES_64)
    assert _kept_files(spool) == []  # not in the spool, not in rejected/, no temp file
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(EcgInstance)) == 0
    lines = [r.getMessage() for r in caplog.records if "0xA701" in r.getMessage()]
    assert lines == [
        f"refused SOP Instance UID {uid} from BOMBER@192.0.2.7 with status 0xA701: {INFLATES_64}; nothing kept"
    ]


def test_ingest_refuses_a_bomb_and_an_oversize_file_with_a_reason(
    db_url: str, session_factory, sample_path: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    bomb_path = write(archive / "bomb.dcm", deflated_bomb(sample_path, 1024))
    big = oversize_file(sample_path, archive / "big.dcm", 65)  # sparse: 65 MiB + the sample
    write(archive / "good.dcm", ecg_bytes(sample_path))
    spool = tmp_path / "spool"
    env = {
        "ECG_GATEWAY_STORAGE__DATABASE_URL": db_url,
        "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(spool),
        "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "0",
    }
    rss = fh.rss_kib()
    result = CliRunner().invoke(
        app_for_ingest(), ["--config", str(ROOT / "config" / "gateway.toml"), "ingest", str(archive)], env=env
    )
    assert fh.rss_kib() - rss < 48 * 1024, "ingest read or inflated an oversize file"
    assert result.exit_code == 1, result.output
    assert f"refused {bomb_path}: 0xA701 {INFLATES_64}" in result.output
    assert f"refused {big}: 0xA701 data set of {big.stat().st_size} bytes is {TOO_LARGE_64}" in result.output
    assert "3 files: 1 accepted, 0 duplicate, 2 refused" in result.output
    with session_factory() as s:
        assert [r.status for r in s.scalars(select(EcgInstance))] == ["received"]
    assert len(_kept_files(spool)) == 1  # the good one; nothing of the refused ones


def app_for_ingest():  # type: ignore[no-untyped-def]
    from gateway.cli import app

    return app


# -- the worker -------------------------------------------------------------------------------------------


def test_worker_refuses_oversize_spool_files_unread(
    db_url, session_factory, tmp_path, demo_model, demo_ensemble, sample_path: Path
) -> None:
    """Files stored under a higher limit (or before there was one) reach a
    worker with ``max_dataset_mb = 1``: a small deflate bomb and a plain
    oversize file are `rejected` with the reason (and an HL7 result, so the
    order does not hang open); a normal ECG beside them is processed."""
    from gateway.process.worker import Worker
    from test_process import drain, make_config

    cfg = make_config(db_url, tmp_path, demo_model)
    cfg.dicom.max_dataset_mb = 1
    spool = Path(cfg.storage.spool_dir)
    plain = oversize_file(sample_path, tmp_path / "plain.dcm", 2).read_bytes()
    ids = {}
    for name, raw in {"bomb": deflated_bomb(sample_path, 3), "plain": plain, "ok": ecg_bytes(sample_path)}.items():
        out = store_instance(
            IncomingInstance.from_file(raw, calling_ae="CART", peer_address="127.0.0.1"),
            StoreContext(session_factory, Spool(spool)),
        )
        assert out.status == SUCCESS, out
        ids[name] = out.ecg_id
    drain(Worker(cfg, session_factory, demo_ensemble))
    with session_factory() as s:
        rows = {name: s.get(EcgInstance, ecg_id) for name, ecg_id in ids.items()}
        assert rows["bomb"].status == REJECTED
        assert rows["bomb"].error == "deflated data set inflates to more than [dicom] max_dataset_mb (1 MB)"
        assert rows["plain"].status == REJECTED
        assert rows["plain"].error == f"data set of {len(plain)} bytes is larger than [dicom] max_dataset_mb (1 MB)"
        assert rows["ok"].status == PROCESSED
        for ecg_id in ids.values():
            assert s.scalar(select(func.count()).select_from(Hl7Message).where(Hl7Message.ecg_id == ecg_id)) == 1


# -- the SCP, in process ------------------------------------------------------------------------------------


def test_scp_answers_a701_to_a_bomb_and_aborts_an_oversize_transfer(
    session_factory, tmp_path: Path, port: int, sample_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deflate bomb (complete on the wire, 1.1 MB) gets 0xA701; a plain
    data set is cut off as soon as it passes the limit (the association is
    aborted, no response); nothing of either is kept; a cart is served after."""
    from gateway.config import DicomConfig, StorageConfig
    from gateway.receive.scp import start_scp
    from receive_helpers import storescu

    spool = tmp_path / "spool"
    dicom = DicomConfig(port=port, host="127.0.0.1", min_free_disk_mb=0, max_dataset_mb=8)
    caplog.set_level(logging.WARNING, "gateway.receive")
    server = start_scp(dicom, StorageConfig(spool_dir=str(spool)), session_factory)
    try:
        bomb_uid, big_uid = generate_uid(), generate_uid()
        bomb_path = write(tmp_path / "in" / "bomb.dcm", deflated_bomb(sample_path, 1024, uid=bomb_uid))
        big = oversize_file(sample_path, tmp_path / "in" / "big.dcm", 256, uid=big_uid)
        rss = fh.rss_kib()
        sent_bomb = send_file(port, bomb_path)
        sent_big = send_file(port, big)
        grown_mib = (fh.rss_kib() - rss) / 1024
        good = write(tmp_path / "in" / "good.dcm", ecg_bytes(sample_path))
        results, output = storescu(port, [good])
    finally:
        server.shutdown()
    assert sent_bomb.status == DATA_SET_TOO_LARGE, sent_bomb
    assert sent_big.status is None, sent_big  # aborted: no C-STORE response
    assert grown_mib < 64, f"RSS grew by {grown_mib:.0f} MiB (limit 8 MiB, 256 MiB sent)"
    assert [status for _, status in results] == [SUCCESS], output
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(EcgInstance)) == 1
    assert not (spool / "rejected").exists() or not list((spool / "rejected").iterdir())
    assert not list((spool / ".incoming").glob("*"))
    refusals = [r.getMessage() for r in caplog.records if "max_dataset_mb" in r.getMessage()]
    assert len(refusals) == 2, refusals
    assert refusals[0] == (
        f"refused SOP Instance UID {bomb_uid} from BOMBER@127.0.0.1 with status 0xA701: "
        "deflated data set inflates to more than [dicom] max_dataset_mb (8 MB); nothing kept"
    )
    assert refusals[1].startswith(
        f"aborted association from 127.0.0.1 (calling AE 'BOMBER'): SOP Instance UID "
        f"{big_uid}: data set larger than [dicom] max_dataset_mb (8 MB) ("
    )
    assert refusals[1].endswith(" bytes received); nothing kept")
    received = int(refusals[1].rsplit("(", 1)[1].split()[0])
    assert 8 * MIB < received <= 8 * MIB + dicom.max_pdu  # stopped at the first PDU past the limit


def _data_set_bytes(raw: bytes) -> bytes:
    """A Part 10 file's bytes after its file meta (the SCP writes its own meta)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return raw[fp.tell() :]


def test_scp_gathers_a_large_data_set_in_a_file_and_stores_it_whole(
    session_factory, tmp_path: Path, port: int, sample_path: Path
) -> None:
    """A 20 MiB data set (within the 64 MB limit, past the 8 MB kept in memory
    while it arrives) is gathered in a temporary file and stored byte for byte."""
    from gateway.config import DicomConfig, StorageConfig
    from gateway.receive.scp import DATASET_IN_MEMORY, start_scp

    spool = tmp_path / "spool"
    big = oversize_file(sample_path, tmp_path / "in" / "big.dcm", 20)
    assert big.stat().st_size > DATASET_IN_MEMORY
    server = start_scp(
        DicomConfig(port=port, host="127.0.0.1", min_free_disk_mb=0),
        StorageConfig(spool_dir=str(spool)),
        session_factory,
    )
    try:
        sent = send_file(port, big, aet="CART")
    finally:
        server.shutdown()
    assert sent.status == SUCCESS, sent
    with session_factory() as s:
        row = s.scalars(select(EcgInstance)).one()
    assert _data_set_bytes((spool / row.spool_path).read_bytes()) == _data_set_bytes(big.read_bytes())
    assert not list((spool / ".incoming").glob("*"))


def test_oversize_transfers_at_once_hold_little_memory(
    session_factory, tmp_path: Path, port: int, sample_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Four plain data sets of 40 MiB at once against a 32 MB limit: each is
    aborted once 32 MB have arrived, while at most 8 MB of each is in memory
    (the rest goes to a temporary file), so the SCP's RSS grows by far less
    than 4 x 32 MB; no descriptor or file is left behind.  (Half the default
    limit: the same proof for half the bytes; the default limit is serve's,
    in test_ten_bombs_against_serve_while_a_cart_sends.)"""
    from bomb_helpers import sender_result, start_sender
    from fault_helpers import ResourceSampler, open_fds
    from gateway.config import DicomConfig, StorageConfig
    from gateway.receive.scp import start_scp

    spool = tmp_path / "spool"
    caplog.set_level(logging.WARNING, "gateway.receive")
    uids = [generate_uid() for _ in range(4)]
    files = [oversize_file(sample_path, tmp_path / "in" / f"big{i}.dcm", 40, uid=uid) for i, uid in enumerate(uids)]
    server = start_scp(
        DicomConfig(port=port, host="127.0.0.1", min_free_disk_mb=0, max_dataset_mb=32),
        StorageConfig(spool_dir=str(spool)),
        session_factory,
    )
    try:
        time.sleep(0.2)
        fds = open_fds(os.getpid())
        rss = fh.rss_kib()
        sampler = ResourceSampler(os.getpid(), interval=0.05)
        sent = [sender_result(p) for p in [start_sender(port, f) for f in files]]
        sampler.stop()
        time.sleep(0.5)  # association threads wind down
        fds_after = open_fds(os.getpid())
    finally:
        server.shutdown()
    peak_growth_mib = (max(kb for _, kb, _ in sampler.samples) - rss) / 1024
    print(f"\nfour 40 MiB transfers at once: SCP RSS +{peak_growth_mib:.0f} MiB at the peak")
    assert [s.status for s in sent] == [None] * 4, sent  # all aborted
    assert peak_growth_mib < 4 * 8 + 48 < 4 * 32, f"RSS grew by {peak_growth_mib:.0f} MiB"
    assert fds_after <= fds, (fds, fds_after)
    lines = [r.getMessage() for r in caplog.records if "max_dataset_mb (32 MB)" in r.getMessage()]
    assert sorted(uid for uid in uids if any(uid in line for line in lines)) == sorted(uids), lines
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(EcgInstance)) == 0
    assert _kept_files(spool) == []


# -- the real path: ten bombs against a running `serve` while a cart sends ------------------------------

BOMBS = 10
PLAIN = 3
CART_ECGS = 20
REFUSE_WITHIN_S = 5.0  # the bound for a bomb, from A-ASSOCIATE-RQ to the refusal the sender sees
#: A plain oversize data set is refused once max_dataset_mb (64 MB) has arrived:
#: its time is the gateway's receive rate (16 KB PDUs through pynetdicom; a few
#: seconds on 2 busy cores), so its bound is only a generous "not stuck".
PLAIN_REFUSED_WITHIN_S = 30.0
RSS_HEADROOM_MB = 256  # the bound over idle


@pytest.mark.slow
@pytest.mark.one_db("sqlite")  # the bound is at the door, before any database
def test_ten_bombs_against_serve_while_a_cart_sends(
    db_url: str, session_factory, tmp_path: Path, demo_model: Path, sample_path: Path
) -> None:
    """`serve` with the default limit (64 MB).  Ten pynetdicom senders each
    send a 1.1 MB deflate bomb (1 GiB inflated) and three send a 96 MiB plain
    data set, all at once, while DCMTK storescu (the cart) sends 20 ECGs.
    Every bomb is refused within 5 s with 0xA701 (the plain ones are aborted
    once 64 MB have arrived), serve's
    RSS (/proc) stays below idle + 256 MB, nothing of the bombs is kept and
    every cart ECG is stored and processed."""
    from bomb_helpers import sender_result, start_sender
    from conftest import free_port
    from e2e_helpers import gateway_env, start_serve, stop, wait_for_port, wait_until
    from fault_helpers import ResourceSampler, ecg_copies, proc_status_kb, spool_files, start_storescu, store_outcomes

    dicom_port = free_port()
    env = gateway_env(
        tmp_path,
        db_url,
        demo_model,
        dicom_port,
        free_port(),
        ECG_GATEWAY_DICOM__MAX_ASSOCIATIONS="16",  # 13 attackers + the cart at once
        ECG_GATEWAY_MODEL__THREADS="1",
    )
    log_path = tmp_path / "serve.log"
    warm = ecg_copies(sample_path, tmp_path / "warm", 4, prefix="warm")
    cart = ecg_copies(sample_path, tmp_path / "cart", CART_ECGS, prefix="cart")
    bombs = {generate_uid(): tmp_path / "bombs" / f"bomb{i}.dcm" for i in range(BOMBS)}
    for uid, path in bombs.items():
        write(path, deflated_bomb(sample_path, 1024, uid=uid))
    plains = {
        uid: oversize_file(sample_path, tmp_path / "bombs" / f"plain{i}.dcm", 96, uid=uid)
        for i, uid in enumerate(generate_uid() for _ in range(PLAIN))
    }

    def processed() -> int:
        with session_factory() as s:
            return s.scalar(select(func.count()).select_from(EcgInstance).where(EcgInstance.status == PROCESSED)) or 0

    proc = start_serve(env, log_path)
    try:
        wait_for_port(dicom_port, proc=proc)
        warm_out = start_storescu(warm, dicom_port).communicate(timeout=120)[0]
        assert list(store_outcomes(warm_out).values()) == ["Success"] * 4, warm_out
        wait_until(lambda: processed() == 4, timeout=120, what="warm-up ECGs processed", procs=[proc])
        time.sleep(1.0)
        idle_mb = proc_status_kb(proc.pid, "VmRSS") / 1024

        sampler = ResourceSampler(proc.pid, interval=0.05)
        senders = {uid: start_sender(dicom_port, path) for uid, path in [*bombs.items(), *plains.items()]}
        # the cart: four associations of five ECGs, one after the other, while the bombs arrive
        batches = [list(cart)[i : i + 5] for i in range(0, CART_ECGS, 5)]
        with ThreadPoolExecutor(1) as pool:
            cart_runs = pool.map(lambda files: start_storescu(files, dicom_port).communicate(timeout=300)[0], batches)
            sent = {uid: sender_result(p) for uid, p in senders.items()}
            cart_out = "\n".join(cart_runs)
        wait_until(lambda: processed() == 4 + CART_ECGS, timeout=300, what="cart ECGs processed", procs=[proc])
        sampler.stop()
    finally:
        stop(proc)
    log = log_path.read_text(errors="replace")
    peak_mb = max(kb for _, kb, _ in sampler.samples) / 1024
    refused_at = {uid: _logged_at(log, uid) - s.started for uid, s in sent.items()}
    print(
        f"\nbomb test ({db_url.split(':')[0]}): idle RSS {idle_mb:.0f} MB, peak {peak_mb:.0f} MB "
        f"(+{peak_mb - idle_mb:.0f} MB); seen by the senders, s: "
        + ", ".join(f"{s.seconds:.2f}" for s in sent.values())
        + "; refusal logged after, s: "
        + ", ".join(f"{t:.2f}" for t in refused_at.values())
    )

    for uid in bombs:
        assert sent[uid].status == DATA_SET_TOO_LARGE, (uid, sent[uid])
    for uid in plains:
        assert sent[uid].status is None, sent[uid]  # aborted mid-transfer: no response
    assert max(sent[uid].seconds for uid in bombs) < REFUSE_WITHIN_S, {uid: s.seconds for uid, s in sent.items()}
    assert max(sent[uid].seconds for uid in plains) < PLAIN_REFUSED_WITHIN_S, {uid: sent[uid] for uid in plains}
    assert peak_mb < idle_mb + RSS_HEADROOM_MB, (idle_mb, peak_mb)

    outcomes = store_outcomes(cart_out)
    assert sorted(outcomes) == sorted(str(p) for p in cart) and set(outcomes.values()) == {"Success"}, cart_out
    with session_factory() as s:
        rows = s.execute(select(EcgInstance.sop_instance_uid, EcgInstance.status)).all()
    assert sorted(uid for uid, _ in rows) == sorted(uid for uid, _ in [*warm.values(), *cart.values()])
    assert {status for _, status in rows} == {PROCESSED}
    spool = tmp_path / "spool"
    assert len(spool_files(spool)) == 4 + CART_ECGS
    assert not list(spool.glob("rejected/*")) and not list(spool.glob(".incoming/*"))

    # one refusal line per attacker: peer, calling AE, SOP Instance UID; no PHI
    refusals = [line for line in log.splitlines() if "max_dataset_mb" in line]
    assert len(refusals) == BOMBS + PLAIN, refusals
    for uid in bombs:
        assert (
            sum(f"refused SOP Instance UID {uid} from BOMBER@127.0.0.1 with status 0xA701" in line for line in refusals)
            == 1
        )
    for uid in plains:
        assert (
            sum(
                f"aborted association from 127.0.0.1 (calling AE 'BOMBER'): SOP Instance UID {uid}" in line
                for line in refusals
            )
            == 1
        )
    assert not any("642341" in line or "Anonymous" in line for line in refusals)


def _logged_at(log: str, uid: str) -> float:
    """Wall-clock time of the refusal line naming ``uid`` in a serve log."""
    from datetime import datetime

    line = next(line for line in log.splitlines() if uid in line and "max_dataset_mb" in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
