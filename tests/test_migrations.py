"""Migrations apply to an empty database of each kind, agree with the models, and downgrade."""

from datetime import UTC, datetime

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
        return EcgInstance(
            sop_instance_uid="1.2.3",
            version=version,
            sop_class_uid="1.2",
            spool_path="x",
            sha256="0" * 64,
            size_bytes=1,
        )

    with session_factory() as s:
        s.add_all([row(1), row(2)])
        s.commit()
    with session_factory() as s, pytest.raises(IntegrityError):
        s.add(row(1))
        s.commit()


T0 = datetime(2026, 1, 31, tzinfo=UTC)


def _paths_at_0008(url: str, rows: dict[str, str]) -> dict[str, int]:
    """One ``ecg_instances`` row per (name, spool_path), as the 0008 code wrote them."""
    import sqlalchemy as sa

    engine = db.make_engine(url)
    table = sa.Table("ecg_instances", sa.MetaData(), autoload_with=engine)
    ids = {}
    with engine.begin() as conn:
        for n, (name, path) in enumerate(rows.items(), start=1):
            ids[name] = conn.execute(
                table.insert().returning(table.c.id),
                dict(
                    sop_instance_uid=f"1.2.3.{n}",
                    version=1,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.1",
                    spool_path=path,
                    sha256="0" * 64,
                    size_bytes=1,
                    status="processed",
                    flags=[],
                    attempts=1,
                    received_at=T0,
                    updated_at=T0,
                ),
            ).scalar_one()
    engine.dispose()
    return ids


def _spool_paths(url: str) -> dict[int, str]:
    import sqlalchemy as sa

    engine = db.make_engine(url)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT id, spool_path FROM ecg_instances")).all())
    engine.dispose()
    return rows


def test_0009_makes_spool_paths_relative_and_back(empty_db_url, tmp_path):
    """Absolute paths under the configured spool (as the 0008 writer stored them,
    resolved; or through a symbolic link to it) become relative; one outside
    the spool and one already relative stay; the downgrade makes them absolute
    under the spool again.  A file named like the spool's prefix but beside
    it (``spool-old``) is not taken for a file in it."""
    real = tmp_path / "real-spool"
    real.mkdir()
    (tmp_path / "spool").symlink_to(real)  # the configured spool is a link to the real folder
    db.upgrade(empty_db_url, "0008_cart_measurements")
    ids = _paths_at_0008(
        empty_db_url,
        {
            "resolved": f"{real}/2026/01/31/1.2.3.1_abcdef012345.dcm",
            "linked": f"{tmp_path}/spool/rejected/{'a' * 64}.dcm",
            "outside": "/elsewhere/2026/01/31/x.dcm",
            "beside": f"{real}-old/2026/01/31/y.dcm",
            "relative": "2025/12/31/z.dcm",
        },
    )
    db.upgrade(empty_db_url, spool_dir=tmp_path / "spool")
    paths = _spool_paths(empty_db_url)
    assert {name: paths[i] for name, i in ids.items()} == {
        "resolved": "2026/01/31/1.2.3.1_abcdef012345.dcm",
        "linked": f"rejected/{'a' * 64}.dcm",
        "outside": "/elsewhere/2026/01/31/x.dcm",
        "beside": f"{real}-old/2026/01/31/y.dcm",
        "relative": "2025/12/31/z.dcm",
    }
    db.downgrade(empty_db_url, "0008_cart_measurements", spool_dir=tmp_path / "spool")
    paths = _spool_paths(empty_db_url)
    assert {name: paths[i] for name, i in ids.items()} == {
        "resolved": f"{real}/2026/01/31/1.2.3.1_abcdef012345.dcm",
        "linked": f"{real}/rejected/{'a' * 64}.dcm",
        "outside": "/elsewhere/2026/01/31/x.dcm",
        "beside": f"{real}-old/2026/01/31/y.dcm",
        "relative": f"{real}/2025/12/31/z.dcm",
    }


def test_0009_without_a_spool_given_reads_the_configuration(empty_db_url, tmp_path, monkeypatch):
    """A bare upgrade (``alembic upgrade``, or a caller that does not pass the
    spool) reads the spool from the configuration, as the gateway does."""
    spool = tmp_path / "spool"
    (tmp_path / "gateway.toml").write_text("[storage]\nretention_days = 0\n")
    monkeypatch.setenv("ECG_GATEWAY_CONFIG", str(tmp_path / "gateway.toml"))
    monkeypatch.setenv("ECG_GATEWAY_STORAGE__SPOOL_DIR", str(spool))
    db.upgrade(empty_db_url, "0008_cart_measurements")
    [ecg_id] = _paths_at_0008(empty_db_url, {"a": f"{spool.resolve()}/2026/01/31/a.dcm"}).values()
    db.upgrade(empty_db_url)
    assert _spool_paths(empty_db_url) == {ecg_id: "2026/01/31/a.dcm"}
