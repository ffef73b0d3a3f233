"""``ecg-gateway ingest``: archive backfill through the SCP's storage path
(DICOM, Philips Sierra XML, HL7 aECG, recognised by content)."""

from __future__ import annotations

from pathlib import Path

import typer

from gateway.cliconfig import config_from

#: How ``ingest`` names each format.
FORMAT_NAMES = {"dicom": "DICOM", "philips": "Philips XML", "aecg": "HL7 aECG"}
#: Media Storage Directory (DICOMDIR): an index of a CD's files, not an instance.
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def _raw_data_set_uids(path: Path) -> tuple[str, str] | None:
    """(SOP Class, SOP Instance UID) when ``path`` parses as a data set
    without preamble, else None."""
    import warnings

    from pydicom import dcmread

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path, force=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except Exception:  # noqa: BLE001 - any parse failure means "not DICOM"
        return None
    cls, uid = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")
    return (str(cls), str(uid)) if cls and uid else None


def dicom_file_problem(path: Path, max_bytes: int | None = None) -> str | None:
    """Why a file found in a folder is not a DICOM instance to ingest, or
    None when it is one: recognised by content (128-byte preamble + "DICM",
    or a data set that parses without one), never by its name.  A file over
    ``max_bytes`` is not parsed: one starting like a data set (group 0002 or
    0008) is taken, for the size limit to refuse with its reason."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if len(head) == 132 and head[128:] == b"DICM":
        from pydicom.filereader import read_file_meta_info

        try:
            meta = read_file_meta_info(path)
        except Exception:  # noqa: BLE001 - a damaged DICOM file: the storage path refuses it with the reason
            return None
        if str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
            return "DICOMDIR (an index of the other files, not an ECG)"
        return None
    if max_bytes is not None and size > max_bytes:
        return (
            None
            if head[:2] in (b"\x02\x00", b"\x08\x00")
            else (f"not DICOM (no DICM prefix, and {size} bytes that do not start like a data set)")
        )
    if _raw_data_set_uids(path) is not None:
        return None
    return "not DICOM (no DICM prefix, and no data set with a SOP Class and Instance UID)"


def ecg_file_problem(path: Path, max_bytes: int | None = None) -> str | None:
    """Why a file found in a folder is not an ECG to ingest, or None when it
    is one: a Philips Sierra XML or HL7 aECG document (its root element, in
    the encoding its first bytes say), or DICOM (:func:`dicom_file_problem`)."""
    from gateway.formats.sniff import SNIFF_BYTES, sniff

    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if sniff(head) in ("philips", "aecg"):
        return None
    problem = dicom_file_problem(path, max_bytes)
    if problem is not None and problem.startswith("not DICOM"):
        return "not DICOM, Philips XML or HL7 aECG" + problem[len("not DICOM") :]
    return problem


def collect_files(paths: list[Path], max_bytes: int | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files named on the command line (taken as given), plus every ECG file
    under folders whatever its name (``IM0001``, ``1.2.840...``, ``x.dcm``,
    ``ECG.XML``); returns (files, [(skipped file, why)])."""
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        for p in sorted(p for p in path.rglob("*") if p.is_file()):
            problem = ecg_file_problem(p, max_bytes)
            if problem is None:
                files.append(p)
            else:
                skipped.append((p, problem))
    return files, skipped


def ingest(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(
        ...,
        help="ECG files or folders: DICOM, Philips Sierra XML, HL7 aECG (every such file inside a folder, "
        "recognised by content, whatever its name).",
    ),
) -> None:
    """Store ECG files or folders (DICOM, Philips Sierra XML, HL7 aECG) as if a cart had sent them.

    Each file is recognised by its content, whatever its name, and gets the
    same checks, duplicate handling and durability as a C-STORE, and the same
    size limit ([dicom] max_dataset_mb; a larger file is not read at all).
    Prints one line per file (accepted, duplicate, or refused with the
    reason; in folders, other files are listed as skipped with the reason)
    and a summary; exits 1 when any file was refused.
    """
    from collections import Counter

    from rich.console import Console
    from rich.progress import Progress

    from gateway.dicomio.limits import MIB, DatasetTooLarge, check_size
    from gateway.logs import setup_logging
    from gateway.receive.door import Refusal, incoming_from_bytes
    from gateway.receive.spool import (
        DATA_SET_TOO_LARGE,
        SUCCESS,
        StoreContext,
        StoreOutcome,
        store_instance,
    )
    from gateway.store.db import make_engine, make_sessionmaker, upgrade

    cfg = config_from(ctx)
    setup_logging("WARNING")
    missing = [p for p in paths if not p.exists()]
    if missing:
        typer.echo(f"ingest: no such file or folder: {missing[0]}", err=True)
        raise typer.Exit(2)
    max_bytes = cfg.dicom.max_dataset_mb * MIB
    files, skipped = collect_files(paths, max_bytes)
    upgrade(cfg.storage.database_url, spool_dir=cfg.storage.spool_dir)
    engine = make_engine(cfg.storage.database_url)
    store = StoreContext.from_config(cfg.dicom, cfg.storage, make_sessionmaker(engine))
    counts: Counter[str] = Counter()
    refused: list[tuple[Path, StoreOutcome | None, str]] = []
    stored: list[str] = []
    console = Console(stderr=True)
    try:
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("ingest", total=len(files))
            for path in files:
                try:
                    check_size(path.stat().st_size, max_bytes)
                    raw = path.read_bytes()
                except DatasetTooLarge as exc:
                    counts["rejected"] += 1
                    refused.append((path, StoreOutcome(DATA_SET_TOO_LARGE, None, False, str(exc)), str(exc)))
                    progress.advance(task)
                    continue
                except OSError as exc:
                    counts["unreadable"] += 1
                    refused.append((path, None, f"cannot read: {exc.strerror}"))
                    progress.advance(task)
                    continue
                incoming = incoming_from_bytes(raw, "ingest", max_bytes=max_bytes)
                if isinstance(incoming, Refusal):
                    counts["rejected"] += 1
                    refused.append((path, StoreOutcome(incoming.status, None, False, incoming.reason), incoming.reason))
                    progress.advance(task)
                    continue
                outcome = store_instance(incoming, store)
                if outcome.status == SUCCESS:
                    kind = "duplicate" if outcome.duplicate else "accepted"
                    counts[kind] += 1
                    stored.append(f"{kind} {path} ({FORMAT_NAMES[incoming.source_format]}, ecg id {outcome.ecg_id})")
                else:
                    counts["rejected"] += 1
                    refused.append((path, outcome, outcome.reason or ""))
                progress.advance(task)
    finally:
        engine.dispose()
    for line in stored:
        typer.echo(line)
    for path, why in skipped:
        typer.echo(f"skipped {path}: {why}")
    for path, refusal, reason in refused:
        status = f"0x{refusal.status:04X}" if refusal else "-"
        typer.echo(f"refused {path}: {status} {reason}")
    typer.echo(
        f"{len(files)} files: {counts['accepted']} accepted, {counts['duplicate']} duplicate, "
        f"{counts['rejected'] + counts['unreadable']} refused" + (f"; {len(skipped)} skipped" if skipped else "")
    )
    if refused:
        raise typer.Exit(1)
