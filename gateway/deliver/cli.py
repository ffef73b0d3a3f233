"""``ecg-gateway hl7``: the outbound ORU^R01 queue (list, show, resend); ``ecg-gateway pacs``: the
outbound PACS queue (list, resend)."""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cliconfig import config_from

if TYPE_CHECKING:  # SQLAlchemy is loaded by the commands that use it (light --help)
    from sqlalchemy.orm import Session, sessionmaker

    from gateway.config import Config

app = typer.Typer(help="Outbound HL7 results: list, show, resend.", no_args_is_help=True)

STATUSES = ("pending", "delivered", "failed", "superseded")


def _session(ctx: typer.Context) -> tuple[Config, sessionmaker[Session]]:
    from gateway.store.db import make_engine, make_sessionmaker

    cfg = config_from(ctx)
    return cfg, make_sessionmaker(make_engine(cfg.storage.database_url))


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


@app.command("list")
def list_messages(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option("--status", "-s", help=f"Only this status: {', '.join(STATUSES)}.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many, newest first.")] = 50,
) -> None:
    """List outbound messages: id, ECG, status, attempts, control id, last error."""
    from sqlalchemy import select

    from gateway.store.models import Hl7Message

    if status is not None and status not in STATUSES:
        typer.echo(f"unknown status {status!r}; use one of: {', '.join(STATUSES)}", err=True)
        raise typer.Exit(2)
    _cfg, factory = _session(ctx)
    with factory() as session:
        stmt = select(Hl7Message).order_by(Hl7Message.id.desc()).limit(limit)
        if status:
            stmt = stmt.where(Hl7Message.status == status)
        rows = session.scalars(stmt).all()
    typer.echo(
        f"{'ID':>6}  {'ECG':>6}  {'STATUS':<10}  {'TRIES':>5}  {'CONTROL ID':<20}  {'CREATED (UTC)':<19}  LAST ERROR"
    )
    for m in rows:
        created = m.created_at.strftime("%Y-%m-%d %H:%M:%S") if m.created_at else ""
        error = (m.last_error or "").replace("\n", " ")[:80]
        typer.echo(
            f"{m.id:>6}  {m.ecg_id:>6}  {m.status:<10}  {m.attempts:>5}  {m.control_id:<20}  {created:<19}  {error}"
        )
    if not rows:
        typer.echo("(no messages)", err=True)


@app.command("show")
def show_message(
    ctx: typer.Context,
    message_id: Annotated[int, typer.Argument(metavar="ID", help="Message id (from `hl7 list`).")],
    actor: Annotated[str, typer.Option(help="Who looks (audit log).")] = "",
) -> None:
    """Show one message: status, attempts, the ER7 sent and the ACK received (audit-logged: PHI)."""
    from gateway.store.audit import audit
    from gateway.store.models import Hl7Message

    _cfg, factory = _session(ctx)
    with factory() as session, session.begin():
        m = session.get(Hl7Message, message_id)
        if m is None:
            typer.echo(f"no HL7 message with id {message_id}", err=True)
            raise typer.Exit(1)
        audit(session, actor or _default_actor(), "hl7_show", f"hl7_message:{m.id}", ecg_id=m.ecg_id)
        fields = [
            ("id", m.id),
            ("ecg", m.ecg_id),
            ("status", m.status),
            ("control id", m.control_id),
            ("order key", m.order_key),
            ("attempts", m.attempts),
            ("last attempt", m.last_attempt_at),
            ("next attempt", m.next_attempt_at if m.status == "pending" else None),
            ("delivered", m.delivered_at),
            ("created", m.created_at),
            ("resend of", m.resend_of),
            ("last error", m.last_error),
        ]
        for label, value in fields:
            if value is not None:
                typer.echo(f"{label + ':':<14}{value}")
        typer.echo("\nmessage:")
        typer.echo(m.payload.replace("\r", "\n").rstrip("\n") or "(none: it could not be built)")
        typer.echo("\nack:")
        typer.echo((m.ack or "(none)").replace("\r", "\n").rstrip("\n"))


@app.command("resend")
def resend_message(
    ctx: typer.Context,
    message_id: Annotated[int, typer.Argument(metavar="ID", help="Message id (from `hl7 list`).")],
    actor: Annotated[str, typer.Option(help="Who asks (audit log); default cli:<user>.")] = "",
) -> None:
    """Queue the message again with a new control id (rebuilt from the stored result; audit-logged)."""
    from gateway.deliver.oru import OruBuildError
    from gateway.deliver.outbox import resend

    cfg, factory = _session(ctx)
    with factory() as session:
        try:
            with session.begin():
                new = resend(session, message_id, actor or _default_actor(), cfg.hl7)
        except LookupError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
        except OruBuildError as exc:
            typer.echo(f"cannot rebuild message {message_id}: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"queued message {new.id} (control id {new.control_id}) as a resend of {message_id}")


# --- ecg-gateway pacs -----------------------------------------------------------------------------

pacs_app = typer.Typer(
    help="Results back to PACS (Encapsulated PDF, Comprehensive SR): list, resend.", no_args_is_help=True
)

PACS_STATUSES = ("pending", "delivered", "failed")


def _pacs_factory(ctx: typer.Context) -> sessionmaker[Session]:
    from gateway.store.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(config_from(ctx).storage.database_url))


@pacs_app.command("list")
def list_objects(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option("--status", "-s", help=f"Only this status: {', '.join(PACS_STATUSES)}.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many, newest first.")] = 50,
) -> None:
    """List objects for PACS: id, ECG, kind, status, attempts, SOP Instance UID, last error."""
    from sqlalchemy import select

    from gateway.store.models import PacsMessage

    if status is not None and status not in PACS_STATUSES:
        typer.echo(f"unknown status {status!r}; use one of: {', '.join(PACS_STATUSES)}", err=True)
        raise typer.Exit(2)
    with _pacs_factory(ctx)() as session:
        stmt = select(PacsMessage).order_by(PacsMessage.id.desc()).limit(limit)
        if status:
            stmt = stmt.where(PacsMessage.status == status)
        rows = session.scalars(stmt).all()
    typer.echo(
        f"{'ID':>6}  {'ECG':>6}  {'KIND':<4}  {'STATUS':<10}  {'TRIES':>5}  {'SOP INSTANCE UID':<64}  LAST ERROR"
    )
    for m in rows:
        error = (m.last_error or "").replace("\n", " ")[:80]
        typer.echo(
            f"{m.id:>6}  {m.ecg_id:>6}  {m.kind:<4}  {m.status:<10}  {m.attempts:>5}  {m.sop_instance_uid:<64}  {error}"
        )
    if not rows:
        typer.echo("(no objects)", err=True)


@pacs_app.command("resend")
def resend_object(
    ctx: typer.Context,
    message_id: Annotated[int, typer.Argument(metavar="ID", help="Object id (from `pacs list`).")],
    actor: Annotated[str, typer.Option(help="Who asks (audit log); default cli:<user>.")] = "",
) -> None:
    """Queue the object again, under the same SOP Instance UID (PACS keeps one copy; audit-logged)."""
    from gateway.deliver.pacs import resend

    with _pacs_factory(ctx)() as session:
        try:
            with session.begin():
                row = resend(session, message_id, actor or _default_actor())
                uid = row.sop_instance_uid
        except LookupError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
    typer.echo(f"queued PACS object {message_id} (SOP Instance UID {uid}) again")
