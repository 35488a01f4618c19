"""Records-store fixtures: a private PostgreSQL per test session, a fresh database per test.

`records_url` runs a test on both databases (params "sqlite" and "postgresql"), its schema
migrated to this release; `empty_records_url` is the same without a schema (migration tests);
`sqlite_records_url` is SQLite only. Registered for every tier but tests/unit (tests/conftest.py);
tests/unit/conftest.py refuses them.

When PostgreSQL is not installed the PostgreSQL fixtures FAIL (never skip): run ops/bootstrap.sh.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.records.store import RecordsStore
from gateway.sim.pgproc import BOOTSTRAP_HINT, PostgresProcess, PostgresUnavailable, pg_bindir

_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresProcess]:
    """The session's private PostgreSQL server."""
    if pg_bindir() is None:
        pytest.fail(BOOTSTRAP_HINT)
    try:
        proc = PostgresProcess().start()
    except PostgresUnavailable as exc:
        pytest.fail(f"could not start the test PostgreSQL: {exc}")
    try:
        yield proc
    finally:
        proc.cleanup()


def _fresh_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite3'}"
    pg: PostgresProcess = request.getfixturevalue("pg_server")
    return pg.create_database(f"t{os.getpid()}_{next(_names)}")


def migrated(url: str) -> str:
    """Bring the database at `url` to this release's schema; the URL."""

    async def run() -> None:
        store = RecordsStore(url)
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(run())
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_records_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty records database (no schema), on each database."""
    return _fresh_url(str(request.param), request, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def records_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh records database at this release's schema, on each database."""
    return migrated(_fresh_url(str(request.param), request, tmp_path))


@pytest.fixture
def sqlite_records_url(tmp_path: Path) -> str:
    """A fresh records database at this release's schema, SQLite only (a tmp file)."""
    return migrated(f"sqlite:///{tmp_path / 'records.sqlite3'}")
