"""The spool: the folder that holds every received DICOM file, and its layout.

One owner for what a row's ``spool_path`` means.  Rows store paths relative to
the spool root (``2026/01/31/<uid>_<sha256[:12]>.dcm``, ``rejected/<sha256>.dcm``),
so every process that mounts the spool (at whatever path) reads the same rows.
Rows written before migration 0009 held absolute paths; those under the
configured spool were made relative by it, and any left absolute (a spool
moved before the upgrade) are still read as they are.

Layout::

    <root>/YYYY/MM/DD/<sop instance uid>_<sha256[:12]>.dcm   accepted instances (.xml: Philips XML, HL7 aECG,
                                                            kept byte for byte as received)
    <root>/rejected/<sha256>.dcm                            refused data sets kept for the admin (or .xml)
    <root>/.incoming/                                       files still being written (never acknowledged)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gateway.store.models import EcgInstance

if TYPE_CHECKING:
    from gateway.config import StorageConfig

#: Files still being written (temporary names; removed at start, never rows).
INCOMING_DIR = ".incoming"
#: Refused data sets kept for the admin, named by content.
REJECTED_DIR = "rejected"
#: Names of files still being written: not spool files to :meth:`Spool.check`.
_PARTIAL_SUFFIXES = (".tmp", ".part")
#: The temporary files of writes in progress in :data:`INCOMING_DIR`.
INCOMING_GLOB = "incoming-*.tmp"


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` durable (a rename or unlink in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """``mkdir -p`` whose new entries are durable (each new folder's parent
    is fsynced), so a file renamed into it survives a power cut."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


def _fsync_if_there(path: Path) -> None:
    try:
        fsync_dir(path)
    except FileNotFoundError:
        pass


@dataclass
class SpoolReport:
    """What ``db check-spool`` (and the start-up check) found."""

    files_without_row: list[str] = field(default_factory=list)
    rows_without_file: list[int] = field(default_factory=list)
    #: Rows a retention prune marked and has not finished (their file may be gone
    #: already); consistent, and the next prune removes them.
    mid_prune: list[int] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.files_without_row or self.rows_without_file)


@dataclass(frozen=True)
class Spool:
    """The spool folder at ``root`` (made absolute and resolved on creation)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @classmethod
    def from_config(cls, storage: StorageConfig) -> Spool:
        """The spool ``[storage] spool_dir`` names."""
        return cls(Path(storage.spool_dir))

    @property
    def incoming(self) -> Path:
        """Where files are written before they are renamed into place."""
        return self.root / INCOMING_DIR

    @property
    def rejected(self) -> Path:
        """Where refused data sets are kept for the admin."""
        return self.root / REJECTED_DIR

    # -- paths ---------------------------------------------------------------------------------

    def new_file(self, sop_instance_uid: str, sha256: str, received: datetime, suffix: str = ".dcm") -> Path:
        """``<root>/YYYY/MM/DD/<uid>_<sha256[:12]>.dcm`` (or ``suffix``) for an
        accepted instance; ``sop_instance_uid`` must be a valid UID (it becomes
        a file name).  The content hash in the name means two versions of one
        UID never share a file, even when they race."""
        return self.root / received.strftime("%Y/%m/%d") / f"{sop_instance_uid}_{sha256[:12]}{suffix}"

    def rejected_file(self, sha256: str, suffix: str = ".dcm") -> Path:
        """``<root>/rejected/<sha256>.dcm`` (or ``suffix``): a refused data set, named by content, never by a UID."""
        return self.rejected / f"{sha256}{suffix}"

    def stored(self, path: Path) -> str:
        """What a row stores for ``path``, a file in the spool: its path relative
        to the root, with ``/`` separators.  Raises ValueError outside the spool."""
        return PurePosixPath(Path(path).relative_to(self.root)).as_posix()

    def resolve(self, stored: str) -> Path:
        """The file a row's ``spool_path`` names: relative to the root, or an
        absolute path from before migration 0009 (read as it is)."""
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    def contains(self, path: Path) -> bool:
        """True when ``path`` (symbolic links followed) is inside the spool."""
        return self.root in Path(path).resolve().parents

    def stored_forms(self, stored: str) -> tuple[str, ...]:
        """Every way a row may name the file ``stored`` names (relative, and
        absolute under the root for rows from before migration 0009)."""
        path = self.resolve(stored)
        try:
            return (self.stored(path), str(path))
        except ValueError:  # an absolute path outside the spool: only itself
            return (stored,)

    # -- housekeeping ------------------------------------------------------------------------

    def remove_stale_temp_files(self) -> int:
        """Delete temp files left by a crash mid-write (never acknowledged)."""
        count = 0
        if self.incoming.is_dir():
            for tmp in self.incoming.glob(INCOMING_GLOB):
                tmp.unlink(missing_ok=True)
                count += 1
        return count

    def remove_file(self, path: Path) -> int:
        """Delete one spool file; returns its size (0 when it was already gone)."""
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def remove_files(self, paths: Iterable[Path]) -> tuple[int, int]:
        """Delete spool files durably (their folders fsynced), then the date
        folders left empty; returns (files removed, their bytes).  A file
        already gone counts as nothing."""
        count = size = 0
        dirs: set[Path] = set()
        for path in paths:
            dirs.add(path.parent)
            removed = self.remove_file(path)
            if removed:
                count, size = count + 1, size + removed
        for d in dirs:
            _fsync_if_there(d)  # the deletions are durable before the caller deletes the rows
        self._remove_empty_dirs(dirs)
        return count, size

    def _remove_empty_dirs(self, dirs: Iterable[Path]) -> None:
        """Remove date folders (YYYY/MM/DD) left empty, up to the root (the root,
        ``rejected`` and ``.incoming`` stay); a folder that gained a file
        meanwhile stays (rmdir refuses)."""
        keep = {self.root, self.rejected, self.incoming}
        for d in sorted((Path(d).resolve() for d in dirs), key=lambda p: len(p.parts), reverse=True):
            while d not in keep and self.root in d.parents:
                try:
                    d.rmdir()
                except OSError:
                    break
                _fsync_if_there(d.parent)
                d = d.parent

    def files(self) -> Iterator[Path]:
        """Every stored file (writes in progress and dot-names excluded)."""
        if not self.root.is_dir():
            return
        for f in sorted(self.root.rglob("*")):
            if f.is_file() and not f.name.startswith(".") and not f.name.endswith(_PARTIAL_SUFFIXES):
                yield f

    def check(self, session_factory: sessionmaker[Session]) -> SpoolReport:
        """Compare the spool folder with the rows that point into it (``db check-spool``)."""
        with session_factory() as session:
            rows = session.execute(select(EcgInstance.id, EcgInstance.spool_path, EcgInstance.pruning_since)).all()
        expected = {self.resolve(p).resolve(): ecg_id for ecg_id, p, _ in rows}
        report = SpoolReport(mid_prune=sorted(ecg_id for ecg_id, _, marked in rows if marked is not None))
        pruning = set(report.mid_prune)
        for path, ecg_id in expected.items():
            if ecg_id not in pruning and not path.is_file():
                report.rows_without_file.append(ecg_id)
        report.files_without_row = [str(f) for f in self.files() if f.resolve() not in expected]
        report.rows_without_file.sort()
        return report
