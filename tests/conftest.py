"""Shared fixtures, and the two test tiers.

Tiers (markers are declared in pyproject.toml; ``--strict-markers`` is on):

- ``./dev test`` runs the FAST tier: ``-m "not slow and not postgresql"``.
  Unit tests on SQLite plus one end-to-end test (``test_e2e.py::
  test_cart_to_ehr[sqlite]``); it must stay under 4 minutes on 2 cores.
- ``./dev test --all`` (what CI runs, with PostgreSQL) runs everything.
  Plain ``pytest`` with no ``-m`` runs everything too.
- ``./dev`` runs three pytest-xdist workers (2 cores; many tests wait), a module's tests in one worker
  (``--dist loadscope``): session fixtures (model, database templates) are
  made once per worker, module fixtures once; tests must not share files
  or ports outside ``tmp_path`` / ``free_port()``.  Modules are handed out
  heavy first (``HEAVY_MODULES``): a module that grows long belongs there.

Where a new test goes:

- ``@pytest.mark.slow``: the test starts ``ecg-gateway serve`` or a browser,
  kills a process, waits out timeouts, or takes more than ~3 s (big fuzz
  counts, soak).  A short CLI subprocess (exit codes, "does not import
  TensorFlow") may stay in the fast tier.  Test behaviour in-process where
  it can be (``start_scp``, ``Worker``, ``run_sender`` in a thread); the
  fast tier's one end-to-end test covers the process as a whole.  A fuzz
  test runs a small count in the fast tier and its full count under
  ``slow`` (a ``smoke``/``full`` parameter).  The end of every run names
  the unmarked tests that took over ``FAST_TEST_BUDGET_S``.
- ``postgresql``: added here to every test that runs on PostgreSQL (the
  ``postgresql`` parameter of ``db_url``/``empty_db_url``/``DB_KINDS``, and
  any test using ``pg_db_url``); never written by hand.
- A process-starting test runs on ONE database unless what it proves is
  database-specific (claims/SKIP LOCKED, concurrency, SQL, migrations):
  ``@pytest.mark.one_db`` keeps only its SQLite item (``one_db("postgresql",
  "sqlite")``: PostgreSQL when configured, else SQLite); a test the kind
  does not matter to at all can take ``sqlite_db_url`` instead of
  ``db_url``.  ``@pytest.mark.every_db`` undoes a module's ``one_db`` for
  one test.

Databases: ``db_url`` is a database migrated to head, on SQLite always and on
PostgreSQL too when ``ECG_GATEWAY_TEST_DATABASE_URL`` is set (CI sets it).
Migrations run once per session into a template (a SQLite file; a PostgreSQL
database) that each test gets a copy of (file copy; ``CREATE DATABASE ...
TEMPLATE``, made ahead and dropped afterwards by a background thread).  Each
PostgreSQL test gets a database of its own, so test runs never see each
other's rows.  ``empty_db_url`` is an unmigrated database, for tests of the
migrations themselves (tests/test_migrations.py runs real upgrades and
downgrades on it).  For a database in a fixture of wider scope, or a kind of
your choosing: :func:`migrated_database`.
"""

from __future__ import annotations

import functools
import os
import queue
import shutil
import socket
import sqlite3
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# Fixtures shared from helper modules (so a test module does not import a
# fixture only to have its name shadowed by the test's parameter).
pytest_plugins = ["admin_helpers"]

PG_URL = os.environ.get("ECG_GATEWAY_TEST_DATABASE_URL", "")
#: Parameters for a fixture that runs once per database kind; the PostgreSQL one is marked ``postgresql``.
DB_KINDS = [pytest.param("sqlite", id="sqlite")] + (
    [pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql)] if PG_URL else []
)
#: A test outside ``slow`` that takes longer than this (call phase) is named in the run's summary.
FAST_TEST_BUDGET_S = 5.0


@pytest.fixture(scope="session")
def sample_path() -> Path:
    """pydicom's real Mortara 12-lead ECG (1000 Hz, 1.25 uV, SCPECG codes)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("waveform_ecg.dcm"))


# -- databases -------------------------------------------------------------------------------------


def _pg_database(base_url: str, template: str | None = None) -> Iterator[str]:
    """Yield the URL of a new PostgreSQL database (a copy of ``template`` if given); dropped afterwards."""
    url = make_url(base_url)
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; tests get copies."""
    from gateway.store.db import upgrade

    path = tmp_path_factory.mktemp("db-template") / "gateway.db"
    upgrade(f"sqlite:///{path}")
    conn = sqlite3.connect(path)  # fold the WAL into the file so the file alone is the whole database
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path


class _PgDatabases:
    """Copies of the template made ahead of need, and used ones dropped, by one
    background thread: neither CREATE nor DROP DATABASE waits in a test."""

    def __init__(self, base_url: str, template: str, ahead: int = 2) -> None:
        self.url = make_url(base_url)
        self.template = template
        self.admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        self.ready: queue.Queue[str | BaseException] = queue.Queue()
        self.jobs: queue.Queue[str | None] = queue.Queue()  # "" = create one, a name = drop it, None = stop
        self.thread = threading.Thread(target=self._run, name="pg-test-databases", daemon=True)
        self.thread.start()
        for _ in range(ahead):
            self.jobs.put("")

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                if job:
                    self._execute(f'DROP DATABASE IF EXISTS "{job}" WITH (FORCE)')
                else:
                    name = f"gw_test_{uuid.uuid4().hex[:12]}"
                    self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
                    self.ready.put(name)
            except BaseException as exc:  # handed to the test waiting for a database
                self.ready.put(exc)

    def _execute(self, sql: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(sql))

    def take(self) -> str:
        """URL of a new migrated database (the caller gives its name back with :meth:`drop`)."""
        self.jobs.put("")  # the next test's copy
        got = self.ready.get(timeout=300)
        if isinstance(got, BaseException):
            raise got
        return self.url.set(database=got).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        self.jobs.put(make_url(url).database or "")

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()
        while not self.ready.empty():
            if isinstance(name := self.ready.get(), str):
                self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[_PgDatabases]:
    """Migrated PostgreSQL databases: migrations run once per session into a
    template database; each test gets a ``CREATE DATABASE ... TEMPLATE`` copy.
    Nothing stays connected to the template (the copy needs that)."""
    if not PG_URL:
        pytest.skip("needs PostgreSQL (set ECG_GATEWAY_TEST_DATABASE_URL)")
    from gateway.store.db import upgrade

    template = _pg_database(PG_URL)
    url = next(template)
    upgrade(url)
    databases = _PgDatabases(PG_URL, make_url(url).database or "")
    yield databases
    databases.close()
    next(template, None)


def migrated_database(request: pytest.FixtureRequest, kind: str, folder: Path) -> Iterator[str]:
    """Yield the URL of a new database of ``kind`` migrated to head: a copy
    of the session's template (SQLite: ``folder/gateway.db``); a PostgreSQL
    one is dropped afterwards.  For fixtures of any scope."""
    if kind == "sqlite":
        dest = folder / "gateway.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), dest)
        yield f"sqlite:///{dest}"
    else:
        databases = request.getfixturevalue("pg_databases")
        url = databases.take()
        try:
            yield url
        finally:
            databases.drop(url)


@pytest.fixture(params=DB_KINDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty (unmigrated) database, once per supported kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        yield from _pg_database(PG_URL)


@pytest.fixture(params=DB_KINDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a database migrated to head, once per supported kind."""
    yield from migrated_database(request, request.param, tmp_path)


@pytest.fixture
def sqlite_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a migrated SQLite database (``tmp_path/gateway.db``): for tests
    that prove the same thing on any database."""
    yield from migrated_database(request, "sqlite", tmp_path)


@pytest.fixture
def pg_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a migrated PostgreSQL database; the test is skipped without one."""
    if not PG_URL:
        pytest.skip("needs PostgreSQL (set ECG_GATEWAY_TEST_DATABASE_URL)")
    yield from migrated_database(request, "postgresql", tmp_path)


@pytest.fixture(autouse=True)
def _no_serve_outlives_its_test() -> Iterator[None]:
    """A test that failed before stopping its ``serve`` (e2e_helpers.start_serve)
    does not leave it running past the test (nor past CI); a gateway started
    before the test (by a module fixture, set up first) is left to its fixture."""
    helpers = sys.modules.get("e2e_helpers")  # not imported: nothing was started
    before = frozenset(id(p) for p in helpers.STARTED) if helpers is not None else frozenset()
    yield
    helpers = sys.modules.get("e2e_helpers")
    if helpers is not None:
        helpers.kill_leftover_serves(keep=before)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """No gateway outlives the run (a module fixture that failed to stop its own)."""
    helpers = sys.modules.get("e2e_helpers")
    if helpers is not None:
        helpers.kill_leftover_serves()


@pytest.fixture
def session_factory(db_url: str):  # type: ignore[no-untyped-def]
    from gateway.store.db import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _db_kind(item: pytest.Item) -> str | None:
    """The database kind a DB-parametrized test item runs on (None: not parametrized by kind)."""
    if item.get_closest_marker("postgresql"):
        return "postgresql"
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "sqlite" if any(isinstance(v, str) and v == "sqlite" for v in params.values()) else None


#: Modules run first, longest first (the others follow, most tests first): xdist
#: runs a module whole in one worker and hands the next module to whichever
#: worker runs out first, so starting the long ones first keeps both workers
#: busy to the end (longest-processing-time order).  Seconds per module (setup,
#: call, teardown; ``./dev test --all --junitxml=...``, 2026-11-30, loaded machine)
#: in the comments; a module that grows heavy belongs here.
HEAVY_MODULES = (
    "test_faults.py",  # 156
    "test_e2e.py",  # 133
    "test_fuzz_receive.py",  # 110
    "test_pacs.py",  # 106
    "test_retention.py",  # 86
    "test_bomb.py",  # 76
    "test_soak.py",  # 75
    "test_admin_browser.py",  # 67
    "test_admin_api.py",  # 63
    "test_overread_browser.py",  # 57
    "test_redteam_routes.py",  # 57
    "test_fuzz_normalise.py",  # 56
    "test_claims.py",  # 54
    "test_monitor.py",  # 54
    "test_dicomio.py",  # 54
    "test_formats_e2e.py",  # 53
    "test_deliver_oru_properties.py",  # 46
    "test_security.py",  # 45
    "test_demo.py",  # 38
    "test_deliver.py",  # 37
    "test_identity_e2e.py",  # 37
    "test_infer_fetch.py",  # 34
    "test_validate_roundtrip.py",  # 32
    "test_arrive_e2e.py",  # 31
    "test_backup.py",  # 29
    "test_deliver_boundary.py",  # 28
    "test_report_pdf.py",  # 28
    "test_db_lean.py",  # 24
    "test_stow.py",  # 23
    "test_receive_crash.py",  # 22
)


def pytest_configure(config: pytest.Config) -> None:
    """``--dist loadscope`` hands out modules in collection order (see
    :func:`_heavy_modules_first`), not xdist's by-test-count order: that
    order started the one end-to-end test (one test, the longest module)
    among the last.  typer's ``CliRunner.invoke`` builds the app's click
    command tree once per app, not on every call (about 40 ms of the 50 ms
    an ``ecg-gateway ... --help`` invoke takes; the tree does not change
    during a run)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    import typer.testing

    if not hasattr(typer.testing._get_command, "cache_info"):
        typer.testing._get_command = functools.cache(typer.testing._get_command)


def _heavy_modules_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` whole modules at a time: :data:`HEAVY_MODULES` in
    that order, then the others by number of tests (most first); a module's
    own order is kept."""
    count = Counter(item.path.name for item in items)

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        return (HEAVY_MODULES.index(name) if name in HEAVY_MODULES else len(HEAVY_MODULES)), -count[name]

    items.sort(key=rank)  # stable: modules stay contiguous and in their own order


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs PostgreSQL is marked ``postgresql``; ``one_db``
    tests keep only the item of the first configured kind of the marker;
    heavy modules first (:func:`_heavy_modules_first`)."""
    configured = {"sqlite"} | ({"postgresql"} if PG_URL else set())
    keep, dropped = [], []
    for item in items:
        if "pg_db_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgresql)
        marker = next((m for m in item.iter_markers() if m.name in ("one_db", "every_db")), None)
        kind = _db_kind(item)
        if marker and marker.name == "one_db" and kind:
            wanted = next((k for k in (marker.args or ("sqlite",)) if k in configured), None)
            if kind != wanted:
                dropped.append(item)
                continue
        keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    _heavy_modules_first(items)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    """Name fast-tier tests that took longer than the budget: mark them slow or make them faster."""
    over = []
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        if report.when == "call" and report.duration > FAST_TEST_BUDGET_S and "slow" not in report.keywords:
            over.append((report.duration, report.nodeid))
    if over:
        terminalreporter.section("fast-tier tests over budget")
        terminalreporter.write_line(
            f"not marked slow, yet over {FAST_TEST_BUDGET_S:.0f} s (mark them @pytest.mark.slow or make them faster):"
        )
        for duration, nodeid in sorted(over, reverse=True):
            terminalreporter.write_line(f"  {duration:6.1f}s {nodeid}")


# -- other shared fixtures -------------------------------------------------------------------------


#: Ports :func:`free_port` handed out in this process.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process: the kernel
    may give the same port to two binds in a row, and a test that asked for
    two ports (DICOM and DICOM TLS) got one twice (a config error, not the
    refusal it tested)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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
    """The demo model loaded, not warmed up: a batch size is traced when a
    test first runs it (warming all four took about 2 s of CPU per worker,
    and most tests run one or two sizes)."""
    from gateway.infer.runner import load_ensemble

    return load_ensemble([str(demo_model)], batch_size=8, warm_up=False)
