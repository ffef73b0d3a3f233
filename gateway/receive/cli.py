"""``ecg-gateway ingest``: archive backfill through the SCP's storage path."""

from __future__ import annotations

from pathlib import Path

import typer

from gateway.cliconfig import config_from

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
        return None if head[:2] in (b"\x02\x00", b"\x08\x00") else (
            f"not DICOM (no DICM prefix, and {size} bytes that do not start like a data set)")
    if _raw_data_set_uids(path) is not None:
        return None
    return "not DICOM (no DICM prefix, and no data set with a SOP Class and Instance UID)"


def collect_files(paths: list[Path], max_bytes: int | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files named on the command line (taken as given), plus every DICOM
    file under folders whatever its name (``IM0001``, ``1.2.840...``,
    ``x.dcm``); returns (files, [(skipped file, why)])."""
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        for p in sorted(p for p in path.rglob("*") if p.is_file()):
            problem = dicom_file_problem(p, max_bytes)
            if problem is None:
                files.append(p)
            else:
                skipped.append((p, problem))
    return files, skipped


def as_part10(raw: bytes) -> bytes:
    """A DICOM file as the storage path takes it (preamble, "DICM", file
    meta): files without a preamble get one, and a bare data set also gets
    file meta for the transfer syntax it is written in.  The data set's own
    bytes are kept unchanged."""
    import io

    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if raw[128:132] == b"DICM":
        return raw
    preamble = b"\0" * 128 + b"DICM"
    if raw[:2] == b"\x02\x00":  # file meta present, preamble missing
        return preamble + raw
    try:
        ds = dcmread(io.BytesIO(raw), force=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        implicit, little = ds.original_encoding
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    except Exception:  # noqa: BLE001 - not a data set: the storage path refuses it with its reason
        return raw
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else (
        ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    out = DicomBytesIO()
    write_file_meta_info(out, meta, enforce_standard=True)
    return preamble + out.getvalue() + raw


def ingest(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(
        ..., help="DICOM files or folders (every DICOM file inside, recognised by content, whatever its name)."
    ),
) -> None:
    """Store DICOM ECG files or folders as if a cart had sent them.

    Each file gets the same checks, duplicate handling and durability as a
    C-STORE, and the same size limit ([dicom] max_dataset_mb; a larger file is
    not read at all). In folders, DICOM files are recognised by content
    (preamble and "DICM", or a data set without preamble), not by name; other
    files are listed as skipped with the reason. Prints a summary; exits 1
    when any file was refused.
    """
    from collections import Counter

    from rich.console import Console
    from rich.progress import Progress

    from gateway.logs import setup_logging
    from gateway.receive.limits import MIB, DatasetTooLarge, check_size
    from gateway.receive.spool import (
        DATA_SET_TOO_LARGE,
        SUCCESS,
        IncomingInstance,
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
    console = Console(stderr=True)
    try:
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("ingest", total=len(files))
            for path in files:
                try:
                    check_size(path.stat().st_size, max_bytes)
                    raw = as_part10(path.read_bytes())
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
                outcome = store_instance(IncomingInstance.from_file(raw, peer_address="ingest"), store)
                if outcome.status == SUCCESS:
                    counts["duplicate" if outcome.duplicate else "accepted"] += 1
                else:
                    counts["rejected"] += 1
                    refused.append((path, outcome, outcome.reason or ""))
                progress.advance(task)
    finally:
        engine.dispose()
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
