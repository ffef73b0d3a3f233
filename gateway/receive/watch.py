"""The watched folder (``[ingest] watch_dir``): files dropped there (DICOM,
Philips Sierra XML, HL7 aECG: recognised by content, whatever their name)
are stored like a C-STORE, then moved to ``done_dir`` (stored or duplicate) or
``failed_dir`` (refused, with ``<name>.reason.txt`` beside it; a name too long
for that is shortened: :func:`fitting_name`).

A file is taken only once it has stopped growing: its size, modification
time and inode are the same at two consecutive looks (``poll_interval_s``
apart), and again after it was read.  Dotfiles and names a writer uses while
copying (``ignored_suffixes``: ``.part``, ``.tmp``, ...) are never taken, so a
writer that copies under such a name and renames at the end is never seen
half-way.  Only regular files directly in the folder are looked at;
sub-folders are left alone (``done_dir``/``failed_dir`` may live inside it).

Order, for a crash at any point: the bytes are stored durably (spool file
fsynced, row committed; :func:`~gateway.receive.spool.store_instance`) *then*
the file is moved (hard link in the destination, unlink, both folders
fsynced).  A crash between the two leaves the file in the folder: it is taken
again at the next start and recognised as a duplicate (same UID, same bytes),
then moved to ``done_dir``.  A refusal is recorded as the C-STORE path
records it (a ``rejected`` row with the reason; the same bytes again reuse
it).  "Out of resources" (disk below the watermark, database unavailable)
is not a refusal of the file: it stays in the folder and is tried again.

Bounded: a file larger than ``[dicom] max_dataset_mb`` is not read (refused
by its size); one file's bytes are in memory at a time.  Log lines name the
file's SHA-256 (and the SOP Instance UID / ecg id, from the storage path),
never the file name, which may carry a patient's name or id; the name is in
the reason file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.dicomio.limits import DatasetTooLarge, check_size
from gateway.quoting import printable
from gateway.receive.door import Refusal, incoming_from_bytes
from gateway.receive.spool import (
    DATA_SET_TOO_LARGE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    IncomingInstance,
    StoreContext,
    StoreOutcome,
    store_instance,
)
from gateway.store.spool import ensure_dir, fsync_dir
from gateway.timeutil import utcnow

if TYPE_CHECKING:
    from gateway.config import IngestConfig

log = logging.getLogger("gateway.receive")

#: ``peer_address`` of the rows the watched folder stores ("ingest" for the command).
WATCH_SOURCE = "watch"
#: Beside each refused file in ``failed_dir``: ``<name>.reason.txt``.
REASON_SUFFIX = ".reason.txt"
#: Copies of one name in a destination folder before giving up (``a.dcm``, ``a.1.dcm``, ...).
_MAX_COPIES = 10000


def recognise(raw: bytes, max_bytes: int) -> IncomingInstance | Refusal:
    """One file's bytes as the storage path takes them, whatever the format
    (DICOM, Philips XML, HL7 aECG: :func:`~gateway.receive.door.incoming_from_bytes`),
    stored with ``peer_address`` = ``watch``."""
    return incoming_from_bytes(raw, WATCH_SOURCE, max_bytes=max_bytes)


@dataclass(frozen=True)
class Look:
    """What one look at a file saw: equal at two looks = it stopped growing."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Look:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class Taken:
    """What happened to one file: ``accepted``, ``duplicate``, ``refused``
    (moved to ``failed_dir``), or ``retry`` (left in the folder: out of
    resources, or it changed while being read)."""

    name: str
    result: str
    status: int | None = None
    reason: str | None = None
    ecg_id: int | None = None
    moved_to: Path | None = None


@dataclass
class WatchFolder:
    """One watched folder: :meth:`poll` looks once, :meth:`run` loops until stopped.

    ``on_stored(ecg_id)`` is called after each new instance is committed
    (never for duplicates or refusals); it must return quickly.
    """

    ingest: IngestConfig
    ctx: StoreContext
    on_stored: Callable[[int], None] | None = None
    #: name -> what the previous look saw
    _seen: dict[str, Look] = field(default_factory=dict, init=False, repr=False)
    #: name -> the look at which it could not be opened (said once, not at every look)
    _unreadable: dict[str, Look] = field(default_factory=dict, init=False, repr=False)

    @property
    def watch_dir(self) -> Path:
        return Path(self.ingest.watch_dir)

    @property
    def done_dir(self) -> Path:
        return Path(self.ingest.done_dir)

    @property
    def failed_dir(self) -> Path:
        return Path(self.ingest.failed_dir)

    def prepare(self) -> None:
        """Create the three folders (durably); raises OSError naming the one that failed."""
        for folder in (self.watch_dir, self.done_dir, self.failed_dir):
            ensure_dir(folder)

    def run(self, stop: threading.Event) -> None:
        """Look every ``poll_interval_s`` until ``stop`` is set (a file being
        stored is finished first)."""
        self.prepare()
        log.info(
            "watching folder %s (every %g s; done: %s, failed: %s)",
            self.watch_dir,
            self.ingest.poll_interval_s,
            self.done_dir,
            self.failed_dir,
        )
        while not stop.is_set():
            try:
                self.poll(stop)
            except OSError as exc:  # the folder went away or is unreadable: say so, keep trying
                log.error("watched folder %s: %s", self.watch_dir, exc.strerror or exc)
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the folder for good
                # the type only: an exception's text may quote a file name (PHI)
                log.error("watched folder %s: unexpected %s; looking again", self.watch_dir, type(exc).__name__)
            stop.wait(self.ingest.poll_interval_s)

    def poll(self, stop: threading.Event | None = None) -> list[Taken]:
        """One look at the folder: take every file that has not changed since
        the previous look; returns what happened to each file taken."""
        looks = dict(self._candidates())
        self._seen = {name: look for name, look in self._seen.items() if name in looks}
        self._unreadable = {name: look for name, look in self._unreadable.items() if name in looks}
        done: list[Taken] = []
        for name, look in looks.items():
            if stop is not None and stop.is_set():
                break
            if self._seen.get(name) != look:
                self._seen[name] = look  # new or still changing: look again next time
                continue
            try:
                taken = self._take(name, look)
            except Exception as exc:  # noqa: BLE001 - one entry must not stop the others (it was: every look)
                # the type and errno text only: an exception's text may quote the file name (PHI)
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                log.error("watched folder: a file could not be taken (%s); tried again at the next look", detail)
                self._seen.pop(name, None)
                continue
            if taken is None:
                continue
            if taken.result != "retry":
                self._seen.pop(name, None)
            done.append(taken)
        return done

    def _candidates(self) -> Iterator[tuple[str, Look]]:
        suffixes = tuple(s.lower() for s in self.ingest.ignored_suffixes if s)
        with os.scandir(self.watch_dir) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name.lower().endswith(suffixes):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue  # sub-folders are not watched (done_dir/failed_dir may be here)
                yield name, Look.of(st)

    def _take(self, name: str, look: Look) -> Taken | None:
        path = self.watch_dir / name
        read = self._read(path, look)
        if read is None:
            return None  # gone (taken by another process?)
        if isinstance(read, Taken):
            return read if read.result == "retry" else self._refuse(path, read, inode=look.inode)
        raw = read
        sha256 = hashlib.sha256(raw).hexdigest()
        recognised = recognise(raw, self.ctx.max_dataset_bytes)
        if isinstance(recognised, Refusal):
            return self._refuse(
                path, Taken(name, "refused", recognised.status, recognised.reason), sha256, inode=look.inode
            )
        try:
            outcome = store_instance(recognised, self.ctx)
        except Exception:  # noqa: BLE001 - never let a bug look like success; the file goes aside
            log.exception("watched folder: storing the file with sha256 %s failed unexpectedly", sha256[:12])
            outcome = StoreOutcome(PROCESSING_FAILURE, None, False, "unexpected error in the gateway (see its log)")
        if outcome.status == OUT_OF_RESOURCES:
            log.warning(
                "watched folder: file with sha256 %s left in place, tried again later: %s", sha256[:12], outcome.reason
            )
            return Taken(name, "retry", outcome.status, outcome.reason)
        if outcome.status != SUCCESS:
            refused = Taken(name, "refused", outcome.status, outcome.reason, outcome.ecg_id)
            return self._refuse(path, refused, sha256, inode=look.inode)
        taken = Taken(name, "duplicate" if outcome.duplicate else "accepted", SUCCESS, outcome.reason, outcome.ecg_id)
        if not outcome.duplicate and outcome.ecg_id is not None and self.on_stored is not None:
            try:
                self.on_stored(outcome.ecg_id)
            except Exception:  # noqa: BLE001 - the instance is stored; the worker also polls
                log.exception("on_stored(%d) failed", outcome.ecg_id)
        taken.moved_to = move_unique(path, self.done_dir, inode=look.inode)
        log.info(
            "watched folder: file with sha256 %s %s as ecg id %s; %s",
            sha256[:12],
            "was a duplicate of" if outcome.duplicate else "stored",
            outcome.ecg_id,
            "moved to done_dir" if taken.moved_to else "not moved: the name holds another file now (taken next)",
        )
        return taken

    def _read(self, path: Path, look: Look) -> bytes | Taken | None:
        """The file's bytes when it is still what the looks saw; a ``Taken``
        when it is refused by its kind or size, or changed (retry)."""
        name = path.name
        max_bytes = self.ctx.max_dataset_bytes
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                return Taken(name, "refused", None, f"{kind}, not a file to store (never followed or read)")
            check_size(st.st_size, max_bytes)
            # O_NOFOLLOW: the name was a regular file a moment ago; never read through a link put there since
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except DatasetTooLarge as exc:
            return Taken(name, "refused", DATA_SET_TOO_LARGE, str(exc))
        except OSError as exc:
            if self._unreadable.get(name) != look:  # once per file as it is (was at every look: 1,800 lines an hour)
                self._unreadable[name] = look
                log.warning("watched folder: cannot open a file: %s; tried again at every look", exc.strerror or exc)
            return Taken(name, "retry", None, f"cannot read: {exc.strerror or exc}")
        with os.fdopen(fd, "rb") as f:
            raw = f.read(max_bytes + 1)
            after = os.fstat(f.fileno())
        if Look.of(after) != look or len(raw) != look.size:
            self._seen.pop(name, None)  # still being written: wait for two equal looks again
            return Taken(name, "retry", None, "changed while being read")
        return raw

    def _refuse(self, path: Path, taken: Taken, sha256: str | None = None, *, inode: int | None = None) -> Taken:
        """Move a refused file (the one of ``inode``) to ``failed_dir`` with its reason beside it."""
        moved = move_unique(path, self.failed_dir, reserve_suffix=REASON_SUFFIX, inode=inode)
        taken.moved_to = moved
        if moved is not None:
            status = f"0x{taken.status:04X}" if taken.status is not None else "-"
            lines = [
                f"file: {shown_name(path.name)}",
                f"refused: {taken.reason}",
                f"status: {status}",
                f"ecg id: {taken.ecg_id if taken.ecg_id is not None else '- (no row)'}",
                f"sha256: {sha256 or '-'}",
                f"at: {utcnow().isoformat()}",
            ]
            # surrogateescape: a name that is not UTF-8 (a Latin-1 "M\xdcLLER.dcm" from a share) is
            # written back as its own bytes (it raised UnicodeEncodeError and stopped the folder)
            write_new_file(
                moved.with_name(moved.name + REASON_SUFFIX),
                ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"),
                self.watch_dir,
            )
        log.warning(
            "watched folder: refused a file (sha256 %s, ecg id %s) with status %s: %s; %s",
            (sha256 or "-")[:12],
            taken.ecg_id,
            f"0x{taken.status:04X}" if taken.status is not None else "-",
            taken.reason,
            "moved to failed_dir" if moved else "not moved: gone, or the name holds another file now",
        )
        return taken


#: Longest file name kept as it is in done_dir/failed_dir: room under NAME_MAX (255 bytes on
#: Linux file systems) for a copy number (``.9999``), ``.reason.txt`` and its temporary ``.<name>.tmp``.
_MAX_NAME_BYTES = 255 - 32


def fitting_name(name: str) -> str:
    """``name``, or when it is longer than :data:`_MAX_NAME_BYTES` (as bytes), its
    start, ``~``, 16 hex digits of its SHA-256 and its extension: a name that
    fills NAME_MAX left no room for ``.reason.txt`` (ENAMETOOLONG, raised at
    every look, which stopped the folder).  The reason file keeps the whole name."""
    raw = os.fsencode(name)
    if len(raw) <= _MAX_NAME_BYTES:
        return name
    tag = b"~" + hashlib.sha256(raw).hexdigest()[:16].encode("ascii")
    stem, dot, ext = raw.rpartition(b".")
    suffix = dot + ext if dot and stem and 0 < len(ext) <= 16 and b"~" not in ext else b""
    return os.fsdecode(raw[: _MAX_NAME_BYTES - len(tag) - len(suffix)] + tag + suffix)


def shown_name(name: str) -> str:
    """A file name as the reason file writes it: on one line (a name may hold a line feed:
    ``a\nrefused: ...`` forged lines in the reason file), control and other unprintable
    characters escaped (``\n``, ``\x1b``: :func:`gateway.quoting.printable`); bytes that
    are not UTF-8 (surrogate escapes) are kept, written back as the name's own bytes."""
    return "".join(ch if ch.isprintable() or "\udc80" <= ch <= "\udcff" else printable(ch) for ch in name)


def _numbered(name: str, n: int) -> str:
    """``a.dcm`` -> ``a.1.dcm``; ``IM0001`` -> ``IM0001.1`` (a name too long shortened first)."""
    name = fitting_name(name)
    if n == 0:
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.{n}.{suffix}" if dot and stem else f"{name}.{n}"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def open_folder(folder: Path, within: Path | None = None) -> int:
    """A file descriptor of ``folder`` (created when missing) that every later step
    of a move goes through (``dir_fd``), so the folder cannot be swapped between
    the steps.  ``done_dir``/``failed_dir`` may be sub-folders of the watched
    folder ``within``, whose writers could rename one away and put a symbolic link
    to any folder the gateway may write in its place: the components below
    ``within`` are opened one by one with O_NOFOLLOW (ELOOP for a link: nothing is
    moved or written where it points).  ``within`` itself and any folder outside
    it are the configuration's: a link there is the operator's choice, followed."""
    base, below = Path(os.path.abspath(folder)), None
    if within is not None:
        try:
            below = base.relative_to(os.path.abspath(within)).parts
        except ValueError:
            below = None
    if within is None or not below:
        ensure_dir(folder)
        return os.open(folder, _DIR_FLAGS)
    fd = os.open(within, _DIR_FLAGS)
    try:
        for part in below:
            try:
                step = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, dir_fd=fd)
                os.fsync(fd)
                step = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def _exists(name: str, folder_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=folder_fd)
    except FileNotFoundError:
        return False
    return True


def move_unique(src: Path, folder: Path, *, reserve_suffix: str = "", inode: int | None = None) -> Path | None:
    """Move ``src`` into ``folder`` under its name, or ``name.1``, ``name.2``
    ... when taken (never over an existing file; with ``reserve_suffix``,
    also where ``<name><suffix>`` exists).  Durable: the destination and the
    source folder are fsynced.  Returns the new path, or None when ``src``
    is gone (another process moved it), or, with ``inode`` (the file that was
    read), when the name holds another file now: a writer replaced it after
    it was read, and the new one stays for the next look (moved unread, it
    was lost).  Across file systems the bytes are copied (and fsynced) first.
    ``folder`` is used through one descriptor (:func:`open_folder`, ``within``
    the watched folder ``src`` is in): OSError (ELOOP) when a writer of the
    watched folder put a symbolic link in its way."""
    folder_fd = open_folder(folder, src.parent)
    staged: str | None = None
    try:
        for n in range(_MAX_COPIES):
            name = _numbered(src.name, n)
            if reserve_suffix and _exists(name + reserve_suffix, folder_fd):
                continue
            try:
                if staged is None:
                    os.link(src, name, dst_dir_fd=folder_fd, follow_symlinks=False)
                    if inode is not None and os.lstat(name, dir_fd=folder_fd).st_ino != inode:
                        os.unlink(name, dir_fd=folder_fd)  # the link is to whatever held the name: not the file read
                        return None
                else:
                    os.link(staged, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd, follow_symlinks=False)
            except FileExistsError:
                continue
            except FileNotFoundError:
                if staged is None:
                    return None
                raise
            except OSError as exc:
                if exc.errno != errno.EXDEV or staged is not None:
                    raise
                try:
                    staged = _copy_into(src, folder_fd, inode)
                except FileNotFoundError:
                    return None  # gone meanwhile (another process moved it)
                except _Replaced:
                    return None
                try:
                    os.link(staged, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd, follow_symlinks=False)
                except FileExistsError:
                    continue
            os.fsync(folder_fd)
            try:
                if inode is None or os.lstat(src).st_ino == inode:  # not a file put there since
                    src.unlink()
            except FileNotFoundError:
                pass
            fsync_dir(src.parent)
            return folder / name
        raise FileExistsError(errno.EEXIST, f"{_MAX_COPIES} files named like this already in {folder}")
    finally:
        try:
            if staged is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staged, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)


class _Replaced(Exception):
    """The name holds another file than the one read."""


def _copy_into(src: Path, folder_fd: int, inode: int | None = None) -> str:
    """A durable copy of the directory entry ``src`` in the folder of ``folder_fd``
    under a dotted temporary name (returned): a regular file's bytes; a symbolic
    link as a link to the same target (never followed: a refused link to
    /etc/passwd must not put that file's bytes in ``failed_dir``); a FIFO or
    socket as a new one (never opened: opening a FIFO waits for a writer).
    Raises OSError when ``src`` changed kind meanwhile (taken again at the next
    look), :class:`_Replaced` when it is not the file of ``inode``."""
    st = os.lstat(src)
    if inode is not None and st.st_ino != inode:
        raise _Replaced
    tmp = f".moving-{secrets.token_hex(8)}"  # each made exclusively below (EEXIST otherwise)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), tmp, dir_fd=folder_fd)
        return tmp
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        os.mknod(tmp, stat.S_IFMT(st.st_mode) | 0o600, dir_fd=folder_fd)
        return tmp
    # O_NOFOLLOW and O_NONBLOCK: the entry may have become a link or a FIFO since the lstat
    source = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(source, "rb") as f:
        opened = os.fstat(f.fileno())
        if inode is not None and opened.st_ino != inode:
            raise _Replaced
        if not stat.S_ISREG(opened.st_mode):
            raise OSError(errno.EINVAL, "not a regular file, a link, a FIFO or a socket")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder_fd)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(f, out)
            out.flush()
            os.fsync(out.fileno())
    return tmp


def write_new_file(path: Path, data: bytes, within: Path | None = None) -> None:
    """Write ``path`` durably; an existing file of that name is replaced.  Its folder
    is used through one descriptor (:func:`open_folder`: never through a link below
    ``within``)."""
    folder_fd = open_folder(path.parent, within)
    try:
        tmp = f".{path.name}.tmp"
        # O_NOFOLLOW: a link planted under the temporary name must not redirect the write elsewhere
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder_fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
