"""The watched folder ([ingest] watch_dir): files that stopped growing are
stored like a C-STORE, then moved to done_dir or (refused) failed_dir with a
reason file.  Each test drives :meth:`WatchFolder.poll` by hand, so "stopped
growing" is two looks with the same size, mtime and inode."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.config import IngestConfig
from gateway.receive.spool import IncomingInstance, StoreContext, store_instance
from gateway.receive.watch import REASON_SUFFIX, WATCH_SOURCE, WatchFolder, move_unique, recognise
from gateway.store.models import RECEIVED, REJECTED, EcgInstance
from gateway.store.spool import Spool
from receive_helpers import ecg_bytes, spool_files


def watcher(tmp_path: Path, session_factory: Any, **ctx: Any) -> WatchFolder:
    ingest = IngestConfig(
        watch_dir=str(tmp_path / "in"), done_dir=str(tmp_path / "done"), failed_dir=str(tmp_path / "failed")
    )
    woken: list[int] = []
    folder = WatchFolder(ingest, StoreContext(session_factory, Spool(tmp_path / "spool"), **ctx), woken.append)
    folder.prepare()
    folder.woken = woken  # type: ignore[attr-defined]
    return folder


def rows(session_factory: Any) -> list[EcgInstance]:
    with session_factory() as s:
        return list(s.scalars(select(EcgInstance).order_by(EcgInstance.id)))


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_accepted_file_is_stored_then_moved(tmp_path: Path, session_factory, sample_path: Path) -> None:
    w = watcher(tmp_path, session_factory)
    raw = ecg_bytes(sample_path)
    (w.watch_dir / "IM0001").write_bytes(raw)  # no extension: recognised by content
    assert w.poll() == []  # first look
    [taken] = w.poll()
    assert (taken.name, taken.result) == ("IM0001", "accepted")
    [row] = rows(session_factory)
    assert (row.status, row.peer_address, row.sha256) == (RECEIVED, WATCH_SOURCE, hashlib.sha256(raw).hexdigest())
    assert taken.ecg_id == row.id and w.woken == [row.id]  # type: ignore[attr-defined]
    assert names(w.watch_dir) == [] and names(w.done_dir) == ["IM0001"] and names(w.failed_dir) == []
    assert (w.done_dir / "IM0001").read_bytes() == raw
    assert [p.read_bytes() for p in spool_files(tmp_path / "spool")] == [raw]


def test_xml_files_are_taken_too(tmp_path: Path, session_factory) -> None:
    """Philips Sierra XML (the UTF-16 1.04 sample) and HL7 aECG, whatever their names."""
    w = watcher(tmp_path, session_factory)
    inputs = Path(__file__).parent / "fixtures" / "inputs"
    samples = {
        "export_0001": inputs / "philips" / "ad4d3d80-d165_1-04_orig.xml",
        "aecg.dat": inputs / "aecg" / "hl7_aecg_example.xml",
    }
    for name, sample in samples.items():
        (w.watch_dir / name).write_bytes(sample.read_bytes())
    w.poll()
    assert sorted(t.result for t in w.poll()) == ["accepted", "accepted"]
    assert names(w.done_dir) == sorted(samples)
    stored = {r.source_format: r for r in rows(session_factory)}
    assert sorted(stored) == ["aecg", "philips"]
    assert all(r.status == RECEIVED and r.peer_address == WATCH_SOURCE for r in stored.values())


def test_half_copied_file_is_never_taken(tmp_path: Path, session_factory, sample_path: Path) -> None:
    """Written in two steps with a look between: the first part is never stored."""
    w = watcher(tmp_path, session_factory)
    raw = ecg_bytes(sample_path)
    path = w.watch_dir / "ecg.dcm"
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
        f.flush()
        assert w.poll() == []  # first look at the half file
        f.write(raw[len(raw) // 2 :])
    assert w.poll() == []  # it grew since: look again
    assert rows(session_factory) == []
    [taken] = w.poll()
    assert taken.result == "accepted"
    [row] = rows(session_factory)
    assert row.sha256 == hashlib.sha256(raw).hexdigest()


def test_temporary_names_and_dotfiles_are_never_taken(tmp_path: Path, session_factory, sample_path: Path) -> None:
    w = watcher(tmp_path, session_factory)
    for name in ("ecg.dcm.part", ".ecg.dcm", "ecg.dcm.TMP", "ecg.dcm~"):
        (w.watch_dir / name).write_bytes(ecg_bytes(sample_path))
    (w.watch_dir / "sub").mkdir()
    (w.watch_dir / "sub" / "x.dcm").write_bytes(ecg_bytes(sample_path))  # sub-folders are not watched
    for _ in range(3):
        assert w.poll() == []
    os.rename(w.watch_dir / "ecg.dcm.part", w.watch_dir / "ecg.dcm")  # the writer's last step
    assert w.poll() == []
    assert [t.result for t in w.poll()] == ["accepted"]
    assert len(rows(session_factory)) == 1


def test_refused_file_goes_to_failed_with_its_reason(tmp_path: Path, session_factory, sample_path: Path) -> None:
    w = watcher(tmp_path, session_factory)
    bad = ecg_bytes(sample_path, drop_waveform=True)
    (w.watch_dir / "no_waveform.dcm").write_bytes(bad)
    (w.watch_dir / "notes.txt").write_bytes(b"not an ECG at all")
    w.poll()
    taken = {t.name: t for t in w.poll()}
    assert {n: t.result for n, t in taken.items()} == {"no_waveform.dcm": "refused", "notes.txt": "refused"}
    assert names(w.failed_dir) == [
        "no_waveform.dcm",
        "no_waveform.dcm" + REASON_SUFFIX,
        "notes.txt",
        "notes.txt" + REASON_SUFFIX,
    ]
    # each refusal has its row, saying why
    row, other_row = sorted(rows(session_factory), key=lambda r: r.error != "no WaveformSequence")
    assert (row.status, row.error) == (REJECTED, "no WaveformSequence")
    assert other_row.status == REJECTED and other_row.error.startswith("not a DICOM file")
    reason = (w.failed_dir / ("no_waveform.dcm" + REASON_SUFFIX)).read_text()
    assert "refused: no WaveformSequence\n" in reason and "status: 0xA900\n" in reason
    assert f"ecg id: {row.id}\n" in reason and f"sha256: {hashlib.sha256(bad).hexdigest()}\n" in reason
    assert "file: no_waveform.dcm\n" in reason
    other = (w.failed_dir / ("notes.txt" + REASON_SUFFIX)).read_text()
    assert "refused: not a DICOM file" in other and f"ecg id: {other_row.id}\n" in other
    assert (w.failed_dir / "notes.txt").read_bytes() == b"not an ECG at all"


def test_name_collisions_and_duplicates(tmp_path: Path, session_factory, sample_path: Path) -> None:
    """The same file dropped twice: stored once, the second a duplicate, both kept in done_dir."""
    w = watcher(tmp_path, session_factory)
    raw = ecg_bytes(sample_path)
    for expected in (["a.dcm"], ["a.1.dcm", "a.dcm"]):
        (w.watch_dir / "a.dcm").write_bytes(raw)
        w.poll()
        [taken] = w.poll()
        assert names(w.done_dir) == expected
    assert taken.result == "duplicate" and len(rows(session_factory)) == 1
    assert len(w.woken) == 1  # type: ignore[attr-defined]
    # failed_dir: a name whose reason file is there already is not reused either
    (w.failed_dir / "b.txt.reason.txt").write_text("someone else's")
    (w.watch_dir / "b.txt").write_bytes(b"junk")
    moved = move_unique(w.watch_dir / "b.txt", w.failed_dir, reserve_suffix=REASON_SUFFIX)
    assert moved == w.failed_dir / "b.1.txt"
    assert move_unique(w.watch_dir / "gone", w.failed_dir) is None


def test_done_dir_on_another_file_system(tmp_path: Path, session_factory, sample_path: Path) -> None:
    """No hard link across file systems: the file is copied (fsynced) there, then removed here."""
    import shutil
    import tempfile

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's tmp_path")
    elsewhere = Path(tempfile.mkdtemp(dir=shm, prefix="watch-done-"))
    try:
        ingest = IngestConfig(watch_dir=str(tmp_path / "in"), done_dir=str(elsewhere), failed_dir=str(tmp_path / "f"))
        w = WatchFolder(ingest, StoreContext(session_factory, Spool(tmp_path / "spool")))
        w.prepare()
        raw = ecg_bytes(sample_path)
        (w.watch_dir / "a.dcm").write_bytes(raw)
        w.poll()
        [taken] = w.poll()
        assert taken.result == "accepted" and taken.moved_to == elsewhere / "a.dcm"
        assert [p.name for p in elsewhere.iterdir()] == ["a.dcm"]  # no temporary copy left
        assert (elsewhere / "a.dcm").read_bytes() == raw and names(w.watch_dir) == []
    finally:
        shutil.rmtree(elsewhere)


def test_crash_between_store_and_move_is_a_duplicate(tmp_path: Path, session_factory, sample_path: Path) -> None:
    """The row committed, the process died before the move: at the next start
    the file is taken again, recognised as a duplicate, and moved."""
    w = watcher(tmp_path, session_factory)
    raw = ecg_bytes(sample_path)
    (w.watch_dir / "a.dcm").write_bytes(raw)
    incoming = recognise(raw, w.ctx.max_dataset_bytes)
    assert isinstance(incoming, IncomingInstance)
    assert store_instance(incoming, w.ctx).status == 0
    restarted = watcher(tmp_path, session_factory)
    assert restarted.poll() == []
    [taken] = restarted.poll()
    assert taken.result == "duplicate" and names(w.done_dir) == ["a.dcm"]
    assert len(rows(session_factory)) == 1


def test_oversize_file_is_refused_unread(tmp_path: Path, session_factory, sample_path: Path) -> None:
    w = watcher(tmp_path, session_factory, max_dataset_bytes=100_000)
    (w.watch_dir / "big.dcm").write_bytes(ecg_bytes(sample_path))  # about 290 KB
    w.poll()
    [taken] = w.poll()
    assert (taken.result, taken.status) == ("refused", 0xA701)
    assert "larger than [dicom] max_dataset_mb (100000 bytes)" in (w.failed_dir / "big.dcm.reason.txt").read_text()
    assert rows(session_factory) == []  # as for a C-STORE: nothing of it is kept


def test_out_of_resources_leaves_the_file_for_later(tmp_path: Path, session_factory, sample_path: Path) -> None:
    free = {"bytes": 0}
    w = watcher(tmp_path, session_factory, min_free_disk_mb=1, free_bytes=lambda _p: free["bytes"])
    (w.watch_dir / "a.dcm").write_bytes(ecg_bytes(sample_path))
    w.poll()
    [taken] = w.poll()
    assert (taken.result, taken.status) == ("retry", 0xA700)
    assert names(w.watch_dir) == ["a.dcm"] and names(w.failed_dir) == []
    free["bytes"] = 10**12
    [taken] = w.poll()
    assert taken.result == "accepted" and names(w.done_dir) == ["a.dcm"]


def test_symbolic_link_is_moved_aside_never_followed(tmp_path: Path, session_factory, sample_path: Path) -> None:
    w = watcher(tmp_path, session_factory)
    target = tmp_path / "elsewhere.dcm"
    target.write_bytes(ecg_bytes(sample_path))
    (w.watch_dir / "link.dcm").symlink_to(target)
    w.poll()
    [taken] = w.poll()
    assert taken.result == "refused" and "symbolic link" in (taken.reason or "")
    assert (w.failed_dir / "link.dcm").is_symlink() and target.exists()
    assert rows(session_factory) == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"watch_dir": "in", "done_dir": "in"}, "three different folders"),
        ({"watch_dir": "in", "failed_dir": ""}, "failed_dir is empty"),
    ],
)
def test_config_refuses_folders_that_overlap(values: dict[str, str], message: str) -> None:
    from gateway.config import ConfigError, load_config

    env = {f"ECG_GATEWAY_INGEST__{k.upper()}": v for k, v in values.items()}
    with pytest.raises(ConfigError, match=message):
        load_config(None, {**env, "ECG_GATEWAY_CONFIG": ""})


def test_serve_component_starts_stops_and_refuses_a_folder_it_cannot_make(
    tmp_path: Path, session_factory, sample_path: Path
) -> None:
    import time

    from gateway.config import Config
    from gateway.serve import StartError, WatchComponent

    def config(watch: Path) -> Config:
        return Config.model_validate(
            {
                "storage": {"spool_dir": str(tmp_path / "spool")},
                "dicom": {"min_free_disk_mb": 0},
                "ingest": {
                    "watch_dir": str(watch),
                    "done_dir": str(tmp_path / "done"),
                    "failed_dir": str(tmp_path / "failed"),
                    "poll_interval_s": 0.05,
                },
            }
        )

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StartError, match="cannot use the watched folder"):
        WatchComponent(config(blocker / "in"), session_factory, None).start()
    woken: list[int] = []
    component = WatchComponent(config(tmp_path / "in"), session_factory, woken.append)
    component.start()
    try:
        (tmp_path / "in" / "a.dcm").write_bytes(ecg_bytes(sample_path))
        deadline = time.monotonic() + 30
        while not (tmp_path / "done" / "a.dcm").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "done" / "a.dcm").exists() and len(woken) == 1
    finally:
        component.stop()
    assert not component.crashed
