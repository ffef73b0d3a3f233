"""Migrations apply to an empty database of each kind, agree with the models, and downgrade."""

from alembic import command
from alembic.util.exc import CommandError
from sqlalchemy import inspect

from gateway.store import db

TABLES = {"ecg_instances", "predictions", "hl7_messages", "audit_log", "admin_sessions", "alembic_version"}


def test_upgrade_check_downgrade(empty_db_url):
    db.upgrade(empty_db_url)
    engine = db.make_engine(empty_db_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    # `alembic check`: autogenerate finds nothing to add -> models == migrations
    try:
        command.check(db.alembic_config(empty_db_url))
    except CommandError as exc:  # pragma: no cover - the failure message is the point
        raise AssertionError(f"models and migrations disagree: {exc}") from None
    db.upgrade(empty_db_url)  # idempotent
    db.downgrade(empty_db_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert db.current_revision(empty_db_url) is None
    engine.dispose()


def test_ecg_unique_per_version(session_factory):
    import pytest
    from sqlalchemy.exc import IntegrityError

    from gateway.store.models import EcgInstance

    def row(version: int) -> EcgInstance:
        return EcgInstance(sop_instance_uid="1.2.3", version=version, sop_class_uid="1.2", spool_path="x",
                           sha256="0" * 64, size_bytes=1)

    with session_factory() as s:
        s.add_all([row(1), row(2)])
        s.commit()
    with session_factory() as s, pytest.raises(IntegrityError):
        s.add(row(1))
        s.commit()
