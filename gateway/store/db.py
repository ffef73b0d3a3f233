"""Engines, sessions and schema migrations."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:  # Alembic is loaded by the commands that migrate
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry


def migrations_dir() -> Path:
    """Alembic's script folder.

    A wheel carries the top-level ``migrations/`` inside the package as
    ``gateway/migrations`` (setup.py maps it); a checkout (editable install or
    ``PYTHONPATH``) has it beside the package.  Looked up through the package
    itself, not ``gateway.migrations``: an editable install's finder would map
    that name to the installed checkout's folder, not this tree's.
    """
    packaged = resources.files("gateway").joinpath("migrations")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "migrations"


MIGRATIONS_DIR = migrations_dir()


SQLITE_PAGE_SIZE = 8192


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cur = dbapi_connection.cursor()
    # 8 KB pages for a new file (a no-op on an existing one; `db compact` converts):
    # an HL7 outbox row is ~2 KB, and 4 KB pages held one such row each.
    # Set before WAL, which fixes the page size.
    cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    # WAL lets the admin read while the SCP writes; FULL sync makes a commit
    # durable before the C-STORE is acknowledged.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _compact_json(value: Any) -> str:
    # No spaces after separators: about a tenth of every JSON column, per row.
    return json.dumps(value, separators=(",", ":"))


def _discard_after_failed_commit(context: ExceptionContext) -> None:
    """A COMMIT or ROLLBACK that failed (the errors without a statement) leaves
    the connection's transaction in an unknown state - SQLite's COMMIT on
    SQLITE_BUSY keeps it open - while SQLAlchemy takes it for ended and the
    pool skips its rollback on return: the next user's commit would keep the
    refused work.  Such a connection is discarded, not pooled."""
    if context.statement is None and context.connection is not None:
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False  # only this connection


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine for ``database_url``; SQLite files get their folder created.
    A connection whose COMMIT failed is discarded (:func:`_discard_after_failed_commit`)."""
    url = make_url(database_url)
    kwargs.setdefault("json_serializer", _compact_json)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(url, **kwargs)
    event.listen(engine, "handle_error", _discard_after_failed_commit)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(database_url: str, spool_dir: str | Path | None = None) -> AlembicConfig:
    """Alembic's configuration for ``database_url``; ``spool_dir`` is handed to
    migrations that need the spool (0003's downgrade rebuilds inputs from its
    files; 0009 makes stored paths relative to it)."""
    from alembic.config import Config as AlembicConfig

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise RuntimeError(f"migrations folder not found at {MIGRATIONS_DIR}")
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if spool_dir is not None:
        cfg.attributes["spool_dir"] = str(spool_dir)
    return cfg


def upgrade(database_url: str, revision: str = "head", spool_dir: str | Path | None = None) -> None:
    """Apply migrations up to ``revision`` (idempotent); ``spool_dir`` is the
    configured spool (``[storage] spool_dir``; without it a migration that
    needs it reads the configuration as the gateway does)."""
    from alembic import command

    make_engine(database_url).dispose()  # creates the SQLite folder
    command.upgrade(alembic_config(database_url, spool_dir), revision)


def downgrade(database_url: str, revision: str, spool_dir: str | Path | None = None) -> None:
    """Roll back to ``revision``; ``spool_dir`` resolves relative spool paths for
    migrations that rebuild data from the spooled originals."""
    from alembic import command

    command.downgrade(alembic_config(database_url, spool_dir), revision)


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def compact(database_url: str) -> list[str]:
    """Give the space of deleted rows and dropped columns back to the file system
    (SQLite: ``VACUUM``; PostgreSQL: ``VACUUM (FULL, ANALYZE)`` of the gateway's
    tables, which locks each table while it is rewritten).  Returns what ran."""
    from gateway.store.models import Base

    engine = make_engine(database_url)
    ran: list[str] = []
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if engine.url.get_backend_name() == "sqlite":
                # The page size changes only by a VACUUM outside WAL mode.
                ran += [
                    "PRAGMA journal_mode=DELETE",
                    f"PRAGMA page_size={SQLITE_PAGE_SIZE}",
                    "VACUUM",
                    "PRAGMA journal_mode=WAL",
                ]
            else:
                ran += [f'VACUUM (FULL, ANALYZE) "{name}"' for name in sorted(Base.metadata.tables)]
            for statement in ran:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()
    return ran
