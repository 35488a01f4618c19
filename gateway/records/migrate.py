"""Alembic, run from code: no alembic.ini, the migrations ship inside the package.

Every function here takes a synchronous `Connection` and is called through
`AsyncConnection.run_sync` (alembic's "connection sharing with asyncio" recipe): the
connection reaches `migrations/env.py` in `Config.attributes["connection"]`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from gateway.records import schema

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"


def config(connection: Connection | None = None) -> Config:
    """An alembic configuration for the packaged migrations (and a connection to run them on)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    rev = script().get_current_head()
    assert rev is not None, "the records migrations have no head"
    return rev


def current_revision(connection: Connection) -> str | None:
    """The database's revision; None when never migrated."""
    return MigrationContext.configure(connection).get_current_revision()


def has_tables(connection: Connection) -> bool:
    """Whether any of the store's tables exist (a database made without the migrations)."""
    names = set(inspect(connection).get_table_names())
    return bool(names & set(schema.metadata.tables))


def is_known(revision: str) -> bool:
    try:
        return script().get_revision(revision) is not None
    except CommandError:
        return False


def state_of(current: str | None, tables: bool) -> str:
    """'empty' | 'behind' | 'current' | 'ahead' for a database at `current`."""
    if current is None:
        # Tables without a revision: made by hand or by metadata.create_all, not by a release;
        # it needs an operator (counted as behind: it is not this release's schema).
        return "behind" if tables else "empty"
    if current == head():
        return "current"
    return "behind" if is_known(current) else "ahead"


def upgrade(connection: Connection, revision: str = "head") -> None:
    command.upgrade(config(connection), revision)
