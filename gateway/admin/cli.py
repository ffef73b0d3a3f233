"""``ecg-gateway results`` and ``ecg-gateway ecg``: look up what arrived and what the model said."""

from __future__ import annotations

import typer

results_app = typer.Typer(help="Query received ECGs and their results.", no_args_is_help=True)
ecg_app = typer.Typer(help="Export one ECG: the model's input array or the stored DICOM file.", no_args_is_help=True)


@results_app.command("list")
def list_results(ctx: typer.Context) -> None:
    """List ECGs with their status and findings."""
    typer.echo("results list: not implemented yet", err=True)
    raise typer.Exit(1)


@ecg_app.command("export-dicom")
def export_dicom(ctx: typer.Context) -> None:
    """Write the stored original DICOM file."""
    typer.echo("ecg export-dicom: not implemented yet", err=True)
    raise typer.Exit(1)
