"""``ecg-gateway pacs``: the outbound PACS queue (list, resend)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from gateway.cliconfig import config_from

app = typer.Typer(help="Results back to PACS (Encapsulated PDF, Comprehensive SR): list, resend.",
                  no_args_is_help=True)

STATUSES = ("pending", "delivered", "failed")


def _factory(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from gateway.store.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(config_from(ctx).storage.database_url))


@app.command("list")
def list_objects(
    ctx: typer.Context,
    status: Annotated[Optional[str], typer.Option("--status", "-s", help=f"Only this status: {', '.join(STATUSES)}.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many, newest first.")] = 50,
) -> None:
    """List objects for PACS: id, ECG, kind, status, attempts, SOP Instance UID, last error."""
    from sqlalchemy import select

    from gateway.store.models import PacsMessage

    if status is not None and status not in STATUSES:
        typer.echo(f"unknown status {status!r}; use one of: {', '.join(STATUSES)}", err=True)
        raise typer.Exit(2)
    with _factory(ctx)() as session:
        stmt = select(PacsMessage).order_by(PacsMessage.id.desc()).limit(limit)
        if status:
            stmt = stmt.where(PacsMessage.status == status)
        rows = session.scalars(stmt).all()
    typer.echo(f"{'ID':>6}  {'ECG':>6}  {'KIND':<4}  {'STATUS':<10}  {'TRIES':>5}  {'SOP INSTANCE UID':<64}  LAST ERROR")
    for m in rows:
        error = (m.last_error or "").replace("\n", " ")[:80]
        typer.echo(f"{m.id:>6}  {m.ecg_id:>6}  {m.kind:<4}  {m.status:<10}  {m.attempts:>5}  {m.sop_instance_uid:<64}  {error}")
    if not rows:
        typer.echo("(no objects)", err=True)


@app.command("resend")
def resend_object(
    ctx: typer.Context,
    message_id: Annotated[int, typer.Argument(metavar="ID", help="Object id (from `pacs list`).")],
    actor: Annotated[str, typer.Option(help="Who asks (audit log); default cli:<user>.")] = "",
) -> None:
    """Queue the object again, under the same SOP Instance UID (PACS keeps one copy; audit-logged)."""
    from gateway.deliver.cli import _default_actor
    from gateway.deliver.pacs import resend

    with _factory(ctx)() as session:
        try:
            with session.begin():
                row = resend(session, message_id, actor or _default_actor())
                uid = row.sop_instance_uid
        except LookupError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
    typer.echo(f"queued PACS object {message_id} (SOP Instance UID {uid}) again")
