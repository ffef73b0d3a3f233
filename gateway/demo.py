"""``ecg-gateway demo``: try the pipeline end to end on this machine."""

from __future__ import annotations

import typer

app = typer.Typer(help="Try the pipeline: send a sample ECG to a running gateway.", no_args_is_help=True)


@app.command()
def send(ctx: typer.Context) -> None:
    """Send pydicom's sample 12-lead ECG (new UIDs) to the configured SCP."""
    typer.echo("demo send: not implemented yet", err=True)
    raise typer.Exit(1)
