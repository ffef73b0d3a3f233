"""models/manifest.json: which model files are installed, with sha256 and size.

``model fetch`` and ``model demo`` record files here; ``model list`` and
``model verify`` read it back.  Paths are stored relative to the models
directory so the directory can be moved or mirrored as a whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.infer.hashing import file_digest
from gateway.timeutil import utcnow

MANIFEST_NAME = "manifest.json"
MODEL_SUFFIXES = (".hdf5", ".h5")


def manifest_path(models_dir: str | os.PathLike[str]) -> Path:
    return Path(models_dir) / MANIFEST_NAME


def read_manifest(models_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest, or an empty one when none was written yet."""
    path = manifest_path(models_dir)
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"files": {}}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid manifest: {exc}") from None
    data.setdefault("files", {})
    return data


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def record_files(models_dir: str | os.PathLike[str], files: list[Path], **source: Any) -> dict[str, Any]:
    """Hash ``files`` (inside ``models_dir``) and merge them into the manifest.

    ``source`` (e.g. url, md5, member, demo) is stored with each entry.
    Returns the new manifest.
    """
    root = Path(models_dir)
    data = read_manifest(root)
    now = utcnow().isoformat(timespec="seconds")
    for file in files:
        rel = Path(file).resolve().relative_to(root.resolve()).as_posix()
        entry = {"sha256": file_digest(file), "size": Path(file).stat().st_size, "recorded_at": now}
        entry.update({k: v for k, v in source.items() if v is not None})
        data["files"][rel] = entry
    _write_json_atomic(manifest_path(root), data)
    return data


@dataclass(frozen=True)
class InstalledFile:
    """One model file on disk, compared with the manifest."""

    path: Path
    size: int | None
    sha256: str | None
    recorded_sha256: str | None
    #: "ok", "changed" (sha256 differs), "missing" or "unrecorded".
    status: str
    demo: bool


def _is_demo(path: Path) -> bool:
    from gateway.infer.demo import is_demo_file

    try:
        return is_demo_file(path)
    except OSError:
        return False


def survey(models_dir: str | os.PathLike[str], extra: Sequence[str] = ()) -> list[InstalledFile]:
    """Every model file of the manifest, under ``models_dir`` or named in
    ``extra`` (the configured files), hashed now and compared."""
    root = Path(models_dir)
    recorded = read_manifest(root)["files"]
    paths: dict[Path, str | None] = {}
    for rel, entry in recorded.items():
        paths[(root / rel).resolve()] = entry.get("sha256")
    if root.is_dir():
        for p in root.rglob("*"):
            if p.suffix in MODEL_SUFFIXES and p.is_file():
                paths.setdefault(p.resolve(), None)
    for name in extra:
        paths.setdefault(Path(name).resolve(), None)
    out = []
    for path in sorted(paths):
        want = paths[path]
        if not path.is_file():
            out.append(InstalledFile(path, None, None, want, "missing", False))
            continue
        have = file_digest(path)
        status = "unrecorded" if want is None else ("ok" if have == want else "changed")
        out.append(InstalledFile(path, path.stat().st_size, have, want, status, _is_demo(path)))
    return out
