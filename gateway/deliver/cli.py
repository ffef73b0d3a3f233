"""``ecg-gateway hl7``: the outbound ORU^R01 queue."""

from __future__ import annotations

import typer

app = typer.Typer(help="Outbound HL7 results: list, show, resend.", no_args_is_help=True)


@app.command("list")
def list_messages(ctx: typer.Context) -> None:
    """List outbound messages."""
    typer.echo("hl7 list: not implemented yet", err=True)
    raise typer.Exit(1)
