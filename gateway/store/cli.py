"""``ecg-gateway db``: schema migrations."""

from __future__ import annotations

import typer

app = typer.Typer(help="Database schema: apply, inspect or roll back migrations.", no_args_is_help=True)


@app.command()
def upgrade(ctx: typer.Context, revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: the latest). Safe to repeat."""
    from gateway.cli import config_from
    from gateway.store.db import current_revision
    from gateway.store.db import upgrade as do_upgrade

    url = config_from(ctx).storage.database_url
    do_upgrade(url, revision)
    typer.echo(f"database at revision {current_revision(url)}")


@app.command()
def downgrade(ctx: typer.Context, revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Roll migrations back to REVISION (``base`` drops every table)."""
    from gateway.cli import config_from
    from gateway.store.db import current_revision
    from gateway.store.db import downgrade as do_downgrade

    url = config_from(ctx).storage.database_url
    do_downgrade(url, revision)
    typer.echo(f"database at revision {current_revision(url) or 'base'}")


@app.command()
def current(ctx: typer.Context) -> None:
    """Print the database's migration revision."""
    from gateway.cli import config_from
    from gateway.store.db import current_revision

    typer.echo(current_revision(config_from(ctx).storage.database_url) or "base (empty database)")
