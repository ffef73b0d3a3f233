"""Red team: the watched folder with hostile names and links.  A refused file
whose name is not UTF-8 (a Latin-1 name from a Windows share) gets its reason
file with the name's own bytes (was UnicodeEncodeError out of poll, which
stopped the folder for good); an unexpected error in one look is logged by
its type only (no file name) and the folder is looked at again; a link planted
under the reason file's temporary name is not written through; the log never
names a file."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.receive.watch import REASON_SUFFIX, write_new_file
from receive_helpers import ecg_bytes
from test_watch import rows, watcher

PHI_NAME = b"M\xdcLLER^HANS_1970.dcm"  # Latin-1: not UTF-8


def test_a_refused_file_with_a_latin1_name_gets_its_reason(
    tmp_path: Path, session_factory, caplog: pytest.LogCaptureFixture
) -> None:
    w = watcher(tmp_path, session_factory)
    with open(os.fsencode(w.watch_dir) + b"/" + PHI_NAME, "wb") as f:
        f.write(b"not an ECG at all " * 50)
    caplog.set_level(logging.INFO)
    w.poll()
    [taken] = w.poll()
    assert taken.result == "refused"
    failed = sorted(os.listdir(os.fsencode(w.failed_dir)))
    assert failed == [PHI_NAME, PHI_NAME + REASON_SUFFIX.encode()]
    reason = os.fsencode(w.failed_dir) + b"/" + PHI_NAME + REASON_SUFFIX.encode()
    with open(reason, "rb") as f:
        text = f.read()
    assert text.startswith(b"file: " + PHI_NAME + b"\nrefused: ")
    assert os.listdir(w.watch_dir) == []
    assert [r.status for r in rows(session_factory)] == ["rejected"]
    log = caplog.text
    assert "LLER" not in log and "HANS" not in log and "refused a file (sha256" in log


def test_a_good_file_with_a_latin1_name_is_stored(tmp_path: Path, session_factory, sample_path: Path) -> None:
    w = watcher(tmp_path, session_factory)
    with open(os.fsencode(w.watch_dir) + b"/" + PHI_NAME, "wb") as f:
        f.write(ecg_bytes(sample_path))
    w.poll()
    [taken] = w.poll()
    assert taken.result == "accepted" and os.listdir(os.fsencode(w.done_dir)) == [PHI_NAME]


def test_an_unexpected_error_does_not_stop_the_folder(
    tmp_path: Path, session_factory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = watcher(tmp_path, session_factory)
    stop = threading.Event()
    calls = []

    def poll(_stop: threading.Event | None = None) -> list:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("M\xdcLLER^HANS_1970.dcm: something odd")
        stop.set()
        return []

    monkeypatch.setattr(w, "poll", poll)
    monkeypatch.setattr(w.ingest, "poll_interval_s", 0.01)
    caplog.set_level(logging.INFO)
    w.run(stop)
    assert len(calls) == 2
    assert "unexpected ValueError; looking again" in caplog.text and "LLER" not in caplog.text


def test_the_reason_file_is_not_written_through_a_planted_link(tmp_path: Path) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    folder = tmp_path / "failed"
    folder.mkdir()
    (folder / ".a.dcm.reason.txt.tmp").symlink_to(target)
    with pytest.raises(OSError):
        write_new_file(folder / "a.dcm.reason.txt", b"file: a.dcm\n")
    assert target.read_text() == "keep me"
    write_new_file(folder / "b.dcm.reason.txt", b"file: b.dcm\n")  # the usual case
    assert (folder / "b.dcm.reason.txt").read_bytes() == b"file: b.dcm\n"


def _on_another_file_system(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``os.link`` into ``folder`` from outside it fails as across file systems (EXDEV)."""
    import errno

    real_link = os.link

    def link(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(dst).parent == folder and Path(src).parent != folder:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)


def test_a_refused_link_is_never_followed_into_a_failed_dir_elsewhere(
    tmp_path: Path, session_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """failed_dir on another file system: a refused symbolic link was moved by copying
    what it points to (open() follows links), so /etc/passwd's bytes (or any file the
    gateway may read) landed in failed_dir; a link to a folder or a loop raised out of
    every look, a FIFO hung the folder in open().  Now each is recreated as what it is."""
    w = watcher(tmp_path, session_factory)
    _on_another_file_system(monkeypatch, w.failed_dir)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:secret\n")
    (w.watch_dir / "passwd.dcm").symlink_to(secret)
    (w.watch_dir / "folder.dcm").symlink_to(tmp_path)
    (w.watch_dir / "loop.dcm").symlink_to("loop.dcm")
    os.mkfifo(w.watch_dir / "pipe.dcm")
    assert w.poll() == []
    done: list = []
    looking = threading.Thread(target=lambda: done.extend(w.poll()), daemon=True)
    looking.start()
    looking.join(10)
    assert not looking.is_alive(), "the look hangs (a FIFO opened?)"
    assert sorted((t.name, t.result) for t in done) == [
        ("folder.dcm", "refused"),
        ("loop.dcm", "refused"),
        ("passwd.dcm", "refused"),
        ("pipe.dcm", "refused"),
    ]
    assert os.listdir(w.watch_dir) == []
    failed = w.failed_dir
    assert os.readlink(failed / "passwd.dcm") == str(secret)
    assert os.readlink(failed / "folder.dcm") == str(tmp_path)
    assert os.readlink(failed / "loop.dcm") == "loop.dcm"
    assert stat.S_ISFIFO(os.lstat(failed / "pipe.dcm").st_mode)
    for entry in failed.iterdir():  # no copy of the secret, no temporary left
        assert not entry.name.startswith(".")
        if entry.is_file() and not entry.is_symlink():
            assert b"secret" not in entry.read_bytes()
    assert "symbolic link" in (failed / "passwd.dcm.reason.txt").read_text()


def test_a_name_that_fills_name_max_does_not_stop_the_folder(tmp_path: Path, session_factory) -> None:
    """A refused file named with 250 bytes left no room for ``.reason.txt``: ENAMETOOLONG
    at every look, and the files after it were never taken.  Now it is moved under a
    shortened name (its reason file names it whole) and the others are taken."""
    w = watcher(tmp_path, session_factory)
    long_name = "Z" * 246 + ".xml"
    (w.watch_dir / long_name).write_bytes(b"not an ECG " * 20)
    (w.watch_dir / "other.dcm").write_bytes(b"not an ECG either " * 20)
    w.poll()
    taken = {t.name: t for t in w.poll()}
    assert set(taken) == {long_name, "other.dcm"} and os.listdir(w.watch_dir) == []
    moved = taken[long_name].moved_to
    assert moved is not None and moved.suffix == ".xml" and len(os.fsencode(moved.name)) <= 223
    reason = moved.with_name(moved.name + REASON_SUFFIX).read_text()
    assert reason.startswith(f"file: {long_name}\n")


def test_an_error_with_one_file_does_not_stop_the_others(
    tmp_path: Path, session_factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One entry that raises is logged (no file name) and left for the next look; the
    other files of the same look are taken (the error ended the look before)."""
    from gateway.receive import watch

    w = watcher(tmp_path, session_factory)
    real = watch.recognise

    def recognise(raw: bytes, max_bytes: int):  # type: ignore[no-untyped-def]
        if raw.startswith(b"BOOM"):
            raise OSError(5, "Input/output error", "PATIENT_NAME.dcm")
        return real(raw, max_bytes)

    monkeypatch.setattr(watch, "recognise", recognise)
    for n in range(3):
        (w.watch_dir / f"good{n}.dcm").write_bytes(b"not an ECG " * 20)
    (w.watch_dir / "PATIENT_NAME.dcm").write_bytes(b"BOOM")
    w.poll()
    with caplog.at_level(logging.ERROR, logger="gateway.receive"):
        taken = w.poll()
    assert sorted(t.name for t in taken) == ["good0.dcm", "good1.dcm", "good2.dcm"]
    assert os.listdir(w.watch_dir) == ["PATIENT_NAME.dcm"]
    assert "Input/output error" in caplog.text and "PATIENT" not in caplog.text


def test_a_name_with_line_breaks_stays_on_the_reason_files_file_line(tmp_path: Path, session_factory) -> None:
    """A name holding LF (or CR, NEL, U+2028, ESC) wrote lines of its own into the reason
    file ("refused:", "status:" a reader or script would take for the gateway's); now the
    name is one escaped line and the file has exactly the six lines the gateway writes."""
    w = watcher(tmp_path, session_factory)
    name = "a.dcm\nrefused: nothing, stored fine\rstatus: 0x0000\x85\u2028\x1b[2J"
    (w.watch_dir / name).write_bytes(b"not an ECG " * 20)
    w.poll()
    [taken] = w.poll()
    assert taken.result == "refused" and taken.moved_to is not None
    text = taken.moved_to.with_name(taken.moved_to.name + REASON_SUFFIX).read_text()
    lines = text.split("\n")[:-1]
    assert [line.split(":")[0] for line in lines] == ["file", "refused", "status", "ecg id", "sha256", "at"]
    assert lines[0] == "file: a.dcm\\nrefused: nothing, stored fine\\rstatus: 0x0000\\x85\\u2028\\x1b[2J"
    assert all(line.isprintable() for line in lines)


@pytest.mark.parametrize("elsewhere", [False, True], ids=["same-fs", "other-fs"])
@pytest.mark.parametrize("kind", ["stored", "refused"])
def test_a_file_replaced_while_stored_is_not_moved_unread(
    tmp_path: Path, session_factory, sample_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, elsewhere: bool
) -> None:
    """A writer replaces the file (rename over it) after it was read, while it is being
    stored: the move took the new file to done_dir/failed_dir unread, so it was lost.
    Now only the file that was read is moved; the new one stays and is taken next."""
    from gateway.receive import watch

    w = watcher(tmp_path, session_factory)
    if elsewhere:
        _on_another_file_system(monkeypatch, w.done_dir if kind == "stored" else w.failed_dir)
    path = w.watch_dir / "a.dcm"
    first = ecg_bytes(sample_path) if kind == "stored" else b"not an ECG " * 20
    path.write_bytes(first)
    second = b"the second file " * 20
    real = watch.store_instance

    def store_then_replace(incoming, ctx):  # type: ignore[no-untyped-def]
        outcome = real(incoming, ctx)
        (w.watch_dir / ".a.dcm.part").write_bytes(second)
        os.replace(w.watch_dir / ".a.dcm.part", path)
        return outcome

    monkeypatch.setattr(watch, "store_instance", store_then_replace)
    w.poll()
    [taken] = w.poll()
    assert taken.result == ("accepted" if kind == "stored" else "refused") and taken.moved_to is None
    assert path.read_bytes() == second
    assert os.listdir(w.done_dir) == [] and os.listdir(w.failed_dir) == []
    monkeypatch.setattr(watch, "store_instance", real)
    w.poll()
    [again] = w.poll()
    assert again.result == "refused" and again.moved_to == w.failed_dir / "a.dcm"
    assert (w.failed_dir / "a.dcm").read_bytes() == second and os.listdir(w.watch_dir) == []


@pytest.mark.parametrize("swapped", ["sorted", "sorted/done", "sorted/failed"])
@pytest.mark.parametrize("kind", ["stored", "refused"])
def test_a_destination_swapped_for_a_link_is_not_written_through(
    tmp_path: Path, session_factory, sample_path: Path, swapped: str, kind: str
) -> None:
    """done_dir/failed_dir may be sub-folders of the watched folder, whose writers can
    rename one (or a folder above it) away and put a link to any folder the gateway may
    write in its place: the files (a name and bytes of the writer's choosing) and reason
    files were written there.  Now the folders below the watched folder are opened
    O_NOFOLLOW: nothing is written through the link, the file waits in the watched
    folder (logged) and is moved once the folder is back; nothing is lost."""
    from gateway.config import IngestConfig
    from gateway.receive.spool import StoreContext
    from gateway.receive.watch import WatchFolder
    from gateway.store.spool import Spool

    inbox = tmp_path / "in"
    ingest = IngestConfig(
        watch_dir=str(inbox), done_dir=str(inbox / "sorted/done"), failed_dir=str(inbox / "sorted/failed")
    )
    w = WatchFolder(ingest, StoreContext(session_factory, Spool(tmp_path / "spool")))
    w.prepare()
    victim = tmp_path / "victim"
    (victim / "done").mkdir(parents=True)
    (victim / "failed").mkdir()
    (inbox / swapped).rename(tmp_path / "kept")
    (inbox / swapped).symlink_to(victim / Path(swapped).name if swapped != "sorted" else victim)
    raw = ecg_bytes(sample_path) if kind == "stored" else b"ssh-ed25519 AAAA evil"
    (inbox / "authorized_keys").write_bytes(raw)
    destination = "done" if kind == "stored" else "failed"
    w.poll()
    w.poll()
    assert [p for p in victim.rglob("*") if p.is_file()] == []
    if swapped in ("sorted", f"sorted/{destination}"):  # its way goes through the link: it waits
        assert (inbox / "authorized_keys").read_bytes() == raw
        (inbox / swapped).unlink()
        (tmp_path / "kept").rename(inbox / swapped)
        w.poll()
        w.poll()
    dest = inbox / "sorted" / destination / "authorized_keys"
    assert dest.read_bytes() == raw and not (inbox / "authorized_keys").exists()


def test_a_destination_the_operator_made_a_link_is_followed(tmp_path: Path, session_factory) -> None:
    """Outside the watched folder a link is the configuration's own (failed_dir on a
    bigger disk through /srv/failed -> /mnt/big/failed): followed as before."""
    from gateway.config import IngestConfig
    from gateway.receive.spool import StoreContext
    from gateway.receive.watch import WatchFolder
    from gateway.store.spool import Spool

    real = tmp_path / "big" / "failed"
    real.mkdir(parents=True)
    (tmp_path / "failed").symlink_to(real)
    ingest = IngestConfig(
        watch_dir=str(tmp_path / "in"), done_dir=str(tmp_path / "done"), failed_dir=str(tmp_path / "failed")
    )
    w = WatchFolder(ingest, StoreContext(session_factory, Spool(tmp_path / "spool")))
    w.prepare()
    (w.watch_dir / "a.txt").write_bytes(b"not an ECG " * 20)
    w.poll()
    [taken] = w.poll()
    assert taken.result == "refused" and sorted(os.listdir(real)) == ["a.txt", "a.txt" + REASON_SUFFIX]


_NAMES = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\x00" not in b and not b.startswith(b".")
)


@pytest.mark.parametrize(
    "examples", [pytest.param(15, id="smoke"), pytest.param(300, id="full", marks=pytest.mark.slow)]
)
def test_any_name_is_refused_into_failed_dir_with_its_reason(tmp_path: Path, session_factory, examples: int) -> None:
    """Property: whatever bytes a name holds (up to NAME_MAX; not UTF-8, controls, a
    255-byte name), a refused file leaves the watched folder, lands in failed_dir with
    exactly one reason file beside it whose first line names it (escaped), nothing else."""
    from gateway.receive.watch import shown_name

    runs = iter(range(10**6))

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None)
    @given(name=_NAMES)
    def check(name: bytes) -> None:
        w = watcher(tmp_path / str(next(runs)), session_factory)
        if name.lower().endswith(tuple(s.lower().encode() for s in w.ingest.ignored_suffixes if s)):
            return
        with open(os.fsencode(w.watch_dir) + b"/" + name, "wb") as f:
            f.write(b"not an ECG " * 10)
        w.poll()
        [taken] = w.poll()
        assert taken.result == "refused" and taken.moved_to is not None
        assert os.listdir(w.watch_dir) == []
        moved = os.fsencode(taken.moved_to)
        with open(moved + REASON_SUFFIX.encode(), "rb") as f:
            first = f.read().split(b"\n")[0]
        assert first == b"file: " + shown_name(os.fsdecode(name)).encode("utf-8", "surrogateescape")
        kept = sorted(os.listdir(os.fsencode(w.failed_dir)))
        assert kept == sorted([os.path.basename(moved), os.path.basename(moved) + REASON_SUFFIX.encode()])

    check()


def test_a_file_that_cannot_be_opened_is_said_once_and_taken_later(
    tmp_path: Path, session_factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Permission denied (a copy made by another user, mode 600): the file stays and is
    tried at every look, but the warning was logged at every look too (every 2 s,
    forever); now once while the file is unchanged, and the file is taken once readable."""
    real_open = os.open

    def denied(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fsdecode(path).endswith("locked.dcm"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    w = watcher(tmp_path, session_factory)
    (w.watch_dir / "locked.dcm").write_bytes(b"not an ECG " * 20)
    monkeypatch.setattr(os, "open", denied)
    with caplog.at_level(logging.WARNING, logger="gateway.receive"):
        for _ in range(6):
            w.poll()
    assert caplog.text.count("cannot open a file: Permission denied") == 1 and "locked" not in caplog.text
    assert os.listdir(w.watch_dir) == ["locked.dcm"]
    monkeypatch.setattr(os, "open", real_open)
    [taken] = w.poll()
    assert taken.result == "refused" and os.listdir(w.watch_dir) == []
