"""``ecg-gateway model``: fetch, list, verify and demo model files."""

from __future__ import annotations

import typer

app = typer.Typer(help="Model files: fetch the published weights, list, verify, or write a demo model.", no_args_is_help=True)


@app.command()
def fetch(ctx: typer.Context) -> None:
    """Download the published model (Zenodo) into models/."""
    typer.echo("model fetch: not implemented yet", err=True)
    raise typer.Exit(1)
