"""``ecg-gateway ingest``: archive backfill through the SCP's storage path."""

from __future__ import annotations

from pathlib import Path

import typer


def ingest(ctx: typer.Context, paths: list[Path] = typer.Argument(..., help="DICOM files or folders.")) -> None:
    """Store DICOM ECG files or folders as if a cart had sent them."""
    typer.echo("ingest: not implemented yet", err=True)
    raise typer.Exit(1)
