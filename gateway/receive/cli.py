"""``ecg-gateway ingest``: archive backfill through the SCP's storage path."""

from __future__ import annotations

from pathlib import Path

import typer


def collect_files(paths: list[Path]) -> list[Path]:
    """Files named on the command line, plus every ``*.dcm`` under folders."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".dcm"))
        else:
            files.append(path)
    return files


def ingest(ctx: typer.Context, paths: list[Path] = typer.Argument(..., help="DICOM files or folders (*.dcm inside).")) -> None:
    """Store DICOM ECG files or folders as if a cart had sent them.

    Each file gets the same checks, duplicate handling and durability as a
    C-STORE, and the same size limit ([dicom] max_dataset_mb; a larger file is
    not read at all). Prints a summary; exits 1 when any file was refused.
    """
    from collections import Counter

    from rich.console import Console
    from rich.progress import Progress

    from gateway.cli import config_from
    from gateway.logs import setup_logging
    from gateway.receive.limits import MIB, DatasetTooLarge, check_size
    from gateway.receive.spool import DATA_SET_TOO_LARGE, SUCCESS, StoreOutcome, store_instance
    from gateway.store.db import make_engine, make_sessionmaker, upgrade

    cfg = config_from(ctx)
    setup_logging("WARNING")
    missing = [p for p in paths if not p.exists()]
    if missing:
        typer.echo(f"ingest: no such file or folder: {missing[0]}", err=True)
        raise typer.Exit(2)
    files = collect_files(paths)
    upgrade(cfg.storage.database_url)
    engine = make_engine(cfg.storage.database_url)
    session_factory = make_sessionmaker(engine)
    max_bytes = cfg.dicom.max_dataset_mb * MIB
    counts: Counter[str] = Counter()
    refused: list[tuple[Path, StoreOutcome | None, str]] = []
    console = Console(stderr=True)
    try:
        with Progress(console=console, transient=True) as progress:
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
                outcome = store_instance(
                    raw,
                    session_factory=session_factory,
                    spool_dir=Path(cfg.storage.spool_dir),
                    min_free_disk_mb=cfg.dicom.min_free_disk_mb,
                    transfer_syntax_uid="",
                    calling_ae=None,
                    peer_address="ingest",
                    max_dataset_bytes=max_bytes,
                )
                if outcome.status == SUCCESS:
                    counts["duplicate" if outcome.duplicate else "accepted"] += 1
                else:
                    counts["rejected"] += 1
                    refused.append((path, outcome, outcome.reason or ""))
                progress.advance(task)
    finally:
        engine.dispose()
    for path, outcome, reason in refused:
        status = f"0x{outcome.status:04X}" if outcome else "-"
        typer.echo(f"refused {path}: {status} {reason}")
    typer.echo(
        f"{len(files)} files: {counts['accepted']} accepted, {counts['duplicate']} duplicate, "
        f"{counts['rejected'] + counts['unreadable']} refused"
    )
    if refused:
        raise typer.Exit(1)
