"""``ecg-gateway db``: schema migrations."""

from __future__ import annotations

import typer

from gateway.cliconfig import config_from

app = typer.Typer(help="Database schema: apply, inspect or roll back migrations.", no_args_is_help=True)


@app.command()
def upgrade(ctx: typer.Context, revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: the latest). Safe to repeat."""
    from gateway.store.db import current_revision
    from gateway.store.db import upgrade as do_upgrade

    cfg = config_from(ctx)
    url = cfg.storage.database_url
    do_upgrade(url, revision, spool_dir=cfg.storage.spool_dir)
    typer.echo(f"database at revision {current_revision(url)}")


@app.command()
def downgrade(ctx: typer.Context, revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Roll migrations back to REVISION (``base`` drops every table)."""
    from gateway.store.db import current_revision
    from gateway.store.db import downgrade as do_downgrade

    cfg = config_from(ctx)
    url = cfg.storage.database_url
    do_downgrade(url, revision, spool_dir=cfg.storage.spool_dir)
    typer.echo(f"database at revision {current_revision(url) or 'base'}")


@app.command()
def current(ctx: typer.Context) -> None:
    """Print the database's migration revision."""
    from gateway.store.db import current_revision

    typer.echo(current_revision(config_from(ctx).storage.database_url) or "base (empty database)")


@app.command()
def compact(ctx: typer.Context) -> None:
    """Return freed space to the disk (SQLite VACUUM; PostgreSQL VACUUM FULL, which locks
    each table while it runs: use a quiet hour).  Useful after `db prune` or the upgrade
    that dropped the stored model inputs (0003)."""
    from sqlalchemy.exc import OperationalError

    from gateway.store.db import compact as do_compact

    try:
        ran = do_compact(config_from(ctx).storage.database_url)
    except OperationalError as exc:
        hint = " (stop the gateway first)" if "locked" in str(exc.orig) else ""
        typer.echo(f"db compact: {exc.orig}{hint}", err=True)
        raise typer.Exit(1) from None
    for statement in ran:
        typer.echo(f"done: {statement}")


@app.command("check-spool")
def check_spool_cmd(ctx: typer.Context) -> None:
    """Compare the spool folder with the database: files without a row, rows without a file.

    Exits 1 when anything is inconsistent.
    """
    from gateway.store.db import make_engine, make_sessionmaker
    from gateway.store.spool import Spool

    cfg = config_from(ctx)
    engine = make_engine(cfg.storage.database_url)
    report = Spool.from_config(cfg.storage).check(make_sessionmaker(engine))
    engine.dispose()
    for path in report.files_without_row:
        typer.echo(f"file without row: {path}")
    for ecg_id in report.rows_without_file:
        typer.echo(f"row without file: ECG id={ecg_id}")
    if report.mid_prune:
        typer.echo(
            f"{len(report.mid_prune)} row(s) marked by an unfinished prune (their files may be gone "
            "already): `ecg-gateway db prune` finishes them"
        )
    typer.echo(
        "spool and database agree"
        if report.clean
        else f"{len(report.files_without_row)} file(s) without row, {len(report.rows_without_file)} row(s) without file"
    )
    raise typer.Exit(0 if report.clean else 1)


@app.command()
def prune(
    ctx: typer.Context,
    older_than: int = typer.Option(
        0,
        "--older-than",
        metavar="DAYS",
        min=0,
        help="Remove finished ECGs received more than DAYS days ago (default: [storage] retention_days).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be removed."),
    list_rows: bool = typer.Option(False, "--list", help="Also print one line per ECG (id, SOP Instance UID, file)."),
) -> None:
    """Remove finished ECGs past the retention limit: their rows, predictions, HL7
    messages, PACS objects and spool files (rejected copies too). The audit log is kept.

    Kept: ECGs still waiting or processing, with an HL7 message or PACS object not yet delivered,
    or with a newer version of the same SOP Instance UID inside the limit.
    Safe to interrupt: a crash leaves no row without a file and no file without a row
    (run it again to finish).
    """
    from gateway.store.audit import cli_actor
    from gateway.store.db import make_engine, make_sessionmaker
    from gateway.store.retention import prune as do_prune

    cfg = config_from(ctx)
    days = older_than or cfg.storage.retention_days
    if days < 1:
        typer.echo("db prune: give --older-than DAYS (at least 1) or set [storage] retention_days", err=True)
        raise typer.Exit(2)
    engine = make_engine(cfg.storage.database_url)
    try:
        result = do_prune(
            make_sessionmaker(engine),
            cfg.storage.spool_dir,
            days,
            dry_run=dry_run,
            actor=cli_actor(),
            list_rows=list_rows,
        )
    finally:
        engine.dispose()
    for line in result.lines:
        typer.echo(line)
    typer.echo(result.summary())
