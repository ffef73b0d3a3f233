"""Shared fixtures.

Database tests run on SQLite always, and on PostgreSQL too when
``ECG_GATEWAY_TEST_DATABASE_URL`` is set (CI sets it).  Each PostgreSQL test
gets a database of its own, created from the server named by that URL and
dropped afterwards, so test runs never see each other's rows.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("ECG_GATEWAY_TEST_DATABASE_URL", "")
DB_KINDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(scope="session")
def sample_path() -> Path:
    """pydicom's real Mortara 12-lead ECG (1000 Hz, 1.25 uV, SCPECG codes)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("waveform_ecg.dcm"))


def _pg_database(base_url: str) -> Iterator[str]:
    url = make_url(base_url)
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=DB_KINDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database, once per supported kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        yield from _pg_database(PG_URL)


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """URL of a database migrated to head."""
    from gateway.store.db import upgrade

    upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
def session_factory(db_url: str):  # type: ignore[no-untyped-def]
    from gateway.store.db import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained same-architecture model file (seeded), shared by the session."""
    from gateway.infer.demo import write_demo_model

    return Path(write_demo_model(tmp_path_factory.mktemp("model") / "demo.hdf5", seed=0))


@pytest.fixture(scope="session")
def demo_ensemble(demo_model: Path):  # type: ignore[no-untyped-def]
    from gateway.infer.runner import load_ensemble

    return load_ensemble([str(demo_model)], batch_size=8)
