"""``model fetch``: download the published archive, check it, extract the weights.

The archive is downloaded to ``<dir>/model.zip.part``.  An interrupted
transfer is resumed with an HTTP Range request (a server that ignores Range
answers 200 and the download restarts from zero); a failed run leaves the
``.part`` file so the next run resumes.  The whole archive is checked against
the published md5 before anything is extracted; a mismatch deletes it.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from gateway.infer.manifest import record_files

log = logging.getLogger("gateway.infer.fetch")

ARCHIVE_NAME = "model.zip"
#: Archive member -> path under the models directory.
MAIN_MEMBER = ("model/model.hdf5", "model.hdf5")
SEED_MEMBERS = tuple((f"other_seeds/model_{i}.hdf5", f"other_seeds/model_{i}.hdf5") for i in range(1, 11))
CHUNK = 1 << 16


class FetchError(Exception):
    """The download or the archive is unusable; the message says what to do."""


#: The two ways on when the published archive cannot be reached.
WAYS_ON = (
    "set [model] url (ECG_GATEWAY_MODEL__URL) to a mirror of model.zip (file:///path/to/model.zip works too), "
    "or try the pipeline without it: ecg-gateway demo"
)


def _resumable(url: str) -> bool:
    """HTTP(S) servers may honour Range; file:// and others are read whole."""
    return url.lower().startswith(("http://", "https://"))


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _progress_bar(console: Any) -> Any:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class _LazyBar:
    """A progress bar shown from the first byte on: a download that cannot
    even connect prints its one error line and nothing else."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.shown = False

    def __enter__(self) -> _LazyBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            self.progress.stop()

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return int(self.progress.add_task(*args, **kwargs))

    def update(self, *args: Any, **kwargs: Any) -> None:
        if not self.shown:
            self.progress.start()
            self.shown = True
        self.progress.update(*args, **kwargs)


class _NullBar:
    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _total_from(resp: http.client.HTTPResponse, offset: int) -> int | None:
    """Full archive size from Content-Range (206) or Content-Length (200)."""
    content_range = resp.headers.get("Content-Range", "")
    m = re.match(r"bytes \d+-\d+/(\d+)", content_range)
    if m:
        return int(m.group(1))
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


class _Unreachable(Exception):
    """No connection could be made (offline, DNS, refused, no such file)."""


def _download_once(url: str, part: Path, timeout: float, bar: Any, task: int) -> None:
    """One HTTP request continuing ``part``; raises OSError subclasses when cut."""
    if part.exists() and not _resumable(url):
        part.unlink()  # a file:// mirror ignores Range: read it whole
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "ecg-gateway"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The partial file is not a prefix the server knows: start over.
            log.warning("server refused to resume at byte %d; restarting the download", offset)
            part.unlink()
            raise ConnectionResetError("range not satisfiable; restarting") from None
        raise FetchError(f"download failed: HTTP {exc.code} {exc.reason} from {url}") from None
    except urllib.error.URLError as exc:
        raise _Unreachable(exc.reason) from None
    with resp:
        if offset and resp.status == 200:
            log.info("server ignored the Range request; restarting the download from zero")
            offset = 0
        mode = "ab" if offset else "wb"
        total = _total_from(resp, offset)
        bar.update(task, total=total, completed=offset)
        received = offset
        with open(part, mode) as out:
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(task, completed=received)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and received < total:
            raise http.client.IncompleteRead(b"", total - received)


def download(
    url: str,
    dest: Path,
    *,
    attempts: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
    console: Any = None,
    retry_delay_s: float = 1.0,
    again: str = "ecg-gateway model fetch",
) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``), resuming after cuts.

    Returns ``dest``.  After ``attempts`` failed transfers the ``.part`` file
    stays for the next run to resume and :class:`FetchError` is raised,
    naming ``again``, the command that resumes.  When
    no connection can be made at all (offline, a wrong mirror path) it fails
    at once, naming the two ways on (a mirror, or the demo).
    """
    part = dest.with_name(dest.name + ".part")
    bar = _LazyBar(_progress_bar(console)) if progress else _NullBar()
    with bar:
        task = bar.add_task(f"{dest.name}", total=None)
        for attempt in range(1, attempts + 1):
            try:
                _download_once(url, part, timeout, bar, task)
                break
            except _Unreachable as exc:
                if attempt == 1 or not part.exists():
                    raise FetchError(f"cannot download {url}: {exc}; {WAYS_ON}") from None
                # the connection went away after part of the file: retried below like a cut
                have = part.stat().st_size
                log.warning("download interrupted (attempt %d/%d) at %d bytes: %s", attempt, attempts, have, exc)
                if attempt == attempts:
                    raise FetchError(
                        f"download of {url} interrupted {attempts} times ({exc}); {have} bytes kept in {part}: "
                        f"run `{again}` again to resume once it is reachable"
                    ) from None
                time.sleep(retry_delay_s)
            except (OSError, http.client.HTTPException) as exc:
                have = part.stat().st_size if part.exists() else 0
                log.warning("download interrupted (attempt %d/%d) at %d bytes: %s", attempt, attempts, have, exc)
                if attempt == attempts:
                    raise FetchError(
                        f"download of {url} interrupted {attempts} times ({exc}); "
                        f"{have} bytes kept in {part}: run `{again}` again to resume"
                    ) from None
                time.sleep(retry_delay_s)
    os.replace(part, dest)
    return dest


def _extract(archive: Path, members: tuple[tuple[str, str], ...], dest_dir: Path) -> list[Path]:
    out = []
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            missing = [m for m, _ in members if m not in names]
            if missing:
                raise FetchError(f"{archive}: not the published model archive: no {', '.join(missing)}")
            for member, rel in members:
                out.append(extract_member(zf, member, dest_dir / rel))
    except zipfile.BadZipFile as exc:
        archive.unlink(missing_ok=True)
        raise FetchError(f"{archive}: not a zip archive ({exc}); deleted it") from None
    return out


def extract_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo | str, target: Path) -> Path:
    """Extract one archive member durably: temp file, fsync, atomic rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with zf.open(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    return target


def fetch_archive(
    url: str,
    archive: Path,
    expected_md5: str,
    *,
    settings: str,
    progress: bool = True,
    console: Any = None,
    attempts: int = 5,
    timeout: float = 60.0,
    retry_delay_s: float = 1.0,
    again: str = "ecg-gateway model fetch",
) -> str:
    """Make ``archive`` the download of ``url`` and return its md5 (``again``:
    the command that resumes a cut download, for :func:`download`'s error).

    An archive already there is kept when it matches ``expected_md5`` (a
    lowercase hex digest; empty: nothing to check against, kept as it is)
    and downloaded again otherwise.  A download that does not match is
    deleted and :class:`FetchError` names ``settings`` (e.g. "model.url and
    model.md5") as the place to look."""
    got = _md5(archive) if archive.exists() else ""
    if got and expected_md5 and got != expected_md5:
        log.info("%s does not match md5 %s; downloading again", archive, expected_md5)
        archive.unlink()
        got = ""
    if not got:
        download(
            url,
            archive,
            attempts=attempts,
            timeout=timeout,
            progress=progress,
            console=console,
            retry_delay_s=retry_delay_s,
            again=again,
        )
        got = _md5(archive)
        if expected_md5 and got != expected_md5:
            archive.unlink()
            raise FetchError(
                f"checksum mismatch for {url}: md5 {got}, expected {expected_md5}; "
                f"the download was deleted (check {settings})"
            )
    return got


def fetch_model(
    url: str,
    md5: str,
    dest_dir: str | os.PathLike[str],
    include_seeds: bool = False,
    progress: bool = True,
    *,
    keep_archive: bool = False,
    attempts: int = 5,
    timeout: float = 60.0,
    console: Any = None,
    retry_delay_s: float = 1.0,
) -> list[Path]:
    """Download the model archive, check its md5, extract the weights.

    Extracts ``model/model.hdf5`` to ``<dest_dir>/model.hdf5`` and, with
    ``include_seeds``, ``other_seeds/model_1..10.hdf5`` to
    ``<dest_dir>/other_seeds/``; records each file's sha256 in
    ``<dest_dir>/manifest.json``.  Returns the extracted paths.

    Raises :class:`FetchError`; on an md5 mismatch the download is deleted.
    An archive already downloaded and matching ``md5`` is not downloaded again.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / ARCHIVE_NAME
    expected = md5.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", expected):
        raise FetchError(f"model.md5 is not an md5 digest: {md5!r}")
    fetch_archive(
        url,
        archive,
        expected,
        settings="model.url and model.md5",
        progress=progress,
        console=console,
        attempts=attempts,
        timeout=timeout,
        retry_delay_s=retry_delay_s,
    )
    members = (MAIN_MEMBER, *SEED_MEMBERS) if include_seeds else (MAIN_MEMBER,)
    files = _extract(archive, members, dest)
    for (member, _), path in zip(members, files, strict=True):
        record_files(dest, [path], source_url=url, archive_md5=expected, member=member)
    if not keep_archive:
        archive.unlink()
    return files


def fetch_plan(missing: list[str], models_dir: str | os.PathLike[str]) -> bool | None:
    """Whether ``model fetch`` installs every one of the ``missing`` model
    files: None when one of them is not a file of the published archive (a
    site's own model), else whether the ten seed models are needed too."""
    provided = {
        (Path(models_dir) / rel).resolve(): member.startswith("other_seeds/")
        for member, rel in (MAIN_MEMBER, *SEED_MEMBERS)
    }
    wanted = [Path(f).resolve() for f in missing]
    if not wanted or any(p not in provided for p in wanted):
        return None
    return any(provided[p] for p in wanted)
