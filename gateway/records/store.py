"""The records store: one SQL database (SQLite file or PostgreSQL) behind one URL.

`RecordsStore.write` takes a batch of facts and stores it in one transaction, idempotently:
every insert is `ON CONFLICT DO NOTHING ... RETURNING id`, so the store knows which facts are
new and only those move the roll-ups (`answer_daily`, `ring_daily`, and their monthly sums
`answer_monthly`, `ring_monthly`) and the message rows. A batch redelivered after a crash is
therefore counted once.

The schema is owned by the alembic migrations in `gateway/records/migrations`; `ready()` is
what the gateway and the worker call at start: it creates an empty database and refuses one
whose schema is behind (or ahead of) this release.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from sqlalchemy import Table, and_, bindparam, event, func, or_, select, text, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.domain.records import CallFact, Fact, SendFact, ThreadEventKind, ThreadFact, seoul_day
from gateway.errors import GatewayError
from gateway.records import schema
from gateway.records.rollups import month_of
from gateway.records.schema import RING_CAP_S

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a statement waits for a SQLite write lock held by another process (the gateway's
# writer and `gateway records purge` may overlap) before failing.
SQLITE_BUSY_TIMEOUT_MS = 5000
# How long a PostgreSQL connection attempt may take before the store reports it unreachable.
PG_CONNECT_TIMEOUT_S = 10.0


class RecordsError(GatewayError):
    """The records database cannot be used: a bad URL, unreachable, refused, or a failed write.

    The message names the database by its masked URL (never the password)."""


class RecordsSchemaMismatch(RecordsError):
    """The records database's schema is not this release's: behind (run `gateway records
    migrate`) or ahead (a newer release migrated it)."""


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where the database's schema stands against this release's migrations."""

    current: str | None  # the database's alembic revision (None: never migrated)
    head: str  # this release's newest revision
    state: str  # 'empty' | 'behind' | 'current' | 'ahead'


@dataclass(frozen=True, slots=True)
class WriteCounts:
    """What one `write` stored: new calls, new thread events, sends inserted or advanced, and
    facts that changed nothing (already stored, or an older send state)."""

    calls: int = 0
    events: int = 0
    sends: int = 0
    duplicates: int = 0


_PASSWORD = re.compile(r"(?P<head>://[^/@:]*:)[^@/]*@")


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***` (for logs and error messages)."""
    return _PASSWORD.sub(lambda m: f"{m.group('head')}***@", url)


def engine_url(url: str) -> tuple[str, str]:
    """(SQLAlchemy async URL, dialect name) for a records URL; `RecordsError` when unsupported.

    `sqlite:///relative/or/abs` (four slashes: absolute) → aiosqlite, the file's directory is
    created; `postgresql://` or `postgres://` → asyncpg."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise RecordsError(f"records URL {mask_url(url)!r} has no scheme: use sqlite:///FILE or postgresql://...")
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:" or "mode=memory" in path:
            raise RecordsError(f"records URL {url!r}: an in-memory SQLite database is not supported, name a file")
        Path(path.split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{path}", "sqlite"
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        return f"postgresql+asyncpg://{rest}", "postgresql"
    raise RecordsError(
        f"records URL {mask_url(url)!r}: unsupported scheme {scheme!r} (use sqlite:///FILE or postgresql://...)"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers (reports) do not block the writer; busy_timeout: a concurrent writer (the
    # purge, another process's writer) makes us wait instead of failing at once; NORMAL sync
    # is durable enough in WAL.
    cursor = dbapi_connection.cursor()
    # busy_timeout first: switching a new file to WAL takes an exclusive lock, and processes
    # starting together on it failed at once ("database is locked") without the wait.
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    # The driver's own transaction handling begins only before DML (DDL would autocommit, a
    # half-made schema) and defers the write lock (two writers upgrading their locks at once
    # fail at once, busy_timeout or not): `_sqlite_begin` emits BEGIN itself instead.
    dbapi_connection.isolation_level = None


def _wal_once(path: str) -> None:
    """Put the file in WAL mode before any pooled connection opens it. Switching a new file to
    WAL takes an exclusive lock: several processes (a gateway and its workers) opening a new
    file together each tried it on connect, and one failed ("database is locked") whenever
    another held a lock past the busy timeout. Once the file is in WAL mode, the connections'
    own PRAGMA is a no-op. Bounded: after 30 s the connection's own attempt reports the error."""
    import sqlite3

    deadline = time.monotonic() + 30.0
    while True:
        try:
            with contextlib.closing(sqlite3.connect(path.split("?", 1)[0], timeout=5.0)) as raw:
                raw.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)


def _sqlite_begin(conn: Connection) -> None:
    # Writers (and migrations) take the write lock at BEGIN, so they queue on busy_timeout;
    # readers begin a deferred transaction and never block a writer (WAL).
    immediate = conn.get_execution_options().get(_WRITE_OPTION)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# Execution option marking the store's writing transactions (SQLite: BEGIN IMMEDIATE).
_WRITE_OPTION = "records_write"
# PostgreSQL: migrations of one database by several processes at once (a gateway and its
# workers starting together) run one after the other; the later ones find it current.
_PG_MIGRATION_LOCK = 150_015


def _lengths(table: Table) -> dict[str, int]:
    return {c.name: int(length) for c in table.columns if (length := getattr(c.type, "length", None))}


_LENGTHS = {t.name: _lengths(t) for t in schema.metadata.sorted_tables}


def _fit(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """Cut text to the column's length: PostgreSQL rejects a longer value (and with it the whole
    batch), SQLite would keep it; a provider's overlong detail must not stop the archive."""
    for name, length in _LENGTHS[table.name].items():
        value = row.get(name)
        if isinstance(value, str) and len(value) > length:
            row[name] = value[:length]
    return row


def _day(epoch: float) -> str:
    return seoul_day(epoch).isoformat()


class RecordsStore:
    """The SQL archive behind one URL (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.masked_url = mask_url(url)
        sa_url, self.dialect = engine_url(url)
        if self.dialect == "sqlite":
            self.engine: AsyncEngine = create_async_engine(sa_url)
            # Before the first connection (not at construction: a store made but never used,
            # such as a gateway's staff store in a test, leaves no file behind).
            path = sa_url.removeprefix("sqlite+aiosqlite:///")
            event.listen(self.engine.sync_engine, "do_connect", lambda *_: _wal_once(path), once=True)
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        else:
            self.engine = create_async_engine(
                sa_url, pool_pre_ping=True, connect_args={"timeout": PG_CONNECT_TIMEOUT_S}
            )
        # The same pool; its transactions are writes (see _sqlite_begin).
        self._writer: AsyncEngine = self.engine.execution_options(**{_WRITE_OPTION: True})
        self._ins: Any = sqlite_dialect.insert if self.dialect == "sqlite" else pg_dialect.insert

    # -- errors ---------------------------------------------------------------------------

    async def _guard(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op`, turning driver and connection errors into a `RecordsError` that names the
        masked URL (a wrong password or a down server is an operator's message, not a trace)."""
        try:
            return await op()
        except GatewayError:
            raise
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            raise RecordsError(f"records database {self.masked_url}: {what} failed: {_brief(exc)}") from exc
        except Exception as exc:  # asyncpg's own errors (e.g. InvalidPasswordError at connect)
            if type(exc).__module__.startswith(("asyncpg", "aiosqlite", "sqlite3")):
                raise RecordsError(f"records database {self.masked_url}: {what} failed: {_brief(exc)}") from exc
            raise

    # -- schema ---------------------------------------------------------------------------

    async def status(self) -> SchemaStatus:
        from gateway.records import migrate as mig

        async def op() -> SchemaStatus:
            async with self.engine.connect() as conn:
                current = await conn.run_sync(mig.current_revision)
                tables = await conn.run_sync(mig.has_tables)
            return SchemaStatus(current, mig.head(), mig.state_of(current, tables))

        return await self._guard("reading the schema revision", op)

    async def migrate(self) -> SchemaStatus:
        """Upgrade the schema to this release's head (creating it in an empty database)."""
        before = await self.status()
        if before.state == "ahead":
            raise RecordsSchemaMismatch(_ahead_message(self.masked_url, before))
        if before.state != "current":
            await self.migrate_to("head")
        return await self.status()

    async def migrate_to(self, revision: str) -> SchemaStatus:
        """Upgrade to `revision` in one transaction (DDL is transactional on both databases),
        serialised against other processes migrating the same database: the later ones find
        it done (alembic upgrades from where the database is). Tests build a previous
        release's database with it."""
        from gateway.records import migrate as mig

        async def op() -> None:
            async with self._writer.begin() as conn:
                if self.dialect == "postgresql":
                    await conn.execute(text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
                await conn.run_sync(mig.upgrade, revision)

        await self._guard("migrating", op)
        return await self.status()

    async def ready(self, *, create_if_empty: bool = True) -> None:
        """Fit for writing: migrate an empty database (when allowed), refuse any other mismatch."""
        st = await self.status()
        if st.state == "current":
            return
        if st.state == "empty" and create_if_empty:
            log.info("records database %s is empty: creating the schema (%s)", self.masked_url, st.head)
            await self.migrate()
            return
        if st.state == "ahead":
            raise RecordsSchemaMismatch(_ahead_message(self.masked_url, st))
        if st.current is None:  # tables, but not made by a release's migrations
            raise RecordsSchemaMismatch(
                f"records database {self.masked_url} has records tables but no schema revision (not made by "
                f"`gateway records migrate`): move them away, then run `gateway records migrate`"
            )
        raise RecordsSchemaMismatch(
            f"records database {self.masked_url} is at revision {st.current}, this release needs {st.head}: "
            "run `gateway records migrate`"
        )

    # -- writing --------------------------------------------------------------------------

    async def write(self, facts: Sequence[Fact]) -> WriteCounts:
        """Store a batch in one transaction; facts already stored change nothing."""
        if not facts:
            return WriteCounts()

        async def op() -> WriteCounts:
            async with self._writer.begin() as conn:
                calls = [f for f in facts if isinstance(f, CallFact)]
                threads = [f for f in facts if isinstance(f, ThreadFact)]
                sends = [f for f in facts if isinstance(f, SendFact)]
                n_calls = await self._write_calls(conn, calls) if calls else 0
                n_events = await self._write_threads(conn, threads) if threads else 0
                n_sends = await self._write_sends(conn, sends) if sends else 0
            return WriteCounts(n_calls, n_events, n_sends, len(facts) - n_calls - n_events - n_sends)

        return await self._guard("writing records", op)

    async def _insert_new(self, conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> set[str]:
        """Insert the rows that are not stored yet; the ids of those inserted."""
        stmt = self._ins(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)
        result = await conn.execute(stmt, rows)
        return {str(r[0]) for r in result}

    async def _write_calls(self, conn: AsyncConnection, facts: list[CallFact]) -> int:
        rows = [_fit(schema.calls, _call_row(f)) for f in facts]
        new = await self._insert_new(conn, schema.calls, rows)
        answers: dict[tuple[str, str, str, str], list[int]] = {}
        rings: dict[tuple[str, str, str, int], int] = {}
        seen: set[str] = set()
        for f, row in zip(facts, rows, strict=True):
            key = row["id"]
            if key not in new or key in seen or f.direction != "outbound" or f.party_kind != "mobile":
                continue
            seen.add(key)  # the same call twice in one batch is inserted (and counted) once
            reason = f.lettering_reason if f.lettering == "skipped" else ""
            k = _fit_key(row["day"], row["department"], row["lettering"], reason)
            agg = answers.setdefault(k, [0, 0])
            agg[0] += 1
            if f.disposition == "answered":
                agg[1] += 1
                rk = (k[0], k[1], k[2], min(max(int(f.ring_seconds), 0), RING_CAP_S))
                rings[rk] = rings.get(rk, 0) + 1
        await self._add_rollups(conn, "day", answers, rings)
        await self._add_monthly(conn, answers, rings)
        return len(new)

    async def _add_monthly(
        self,
        conn: AsyncConnection,
        answers: dict[tuple[str, str, str, str], list[int]],
        rings: dict[tuple[str, str, str, int], int],
    ) -> None:
        """Add the batch's daily increments to the monthly roll-ups (the same new calls, the
        same transaction: the monthly tables stay the daily ones summed per month)."""
        months: dict[tuple[str, str, str, str], list[int]] = {}
        for (d, dep, let, why), (c, a) in answers.items():
            agg = months.setdefault((month_of(d), dep, let, why), [0, 0])
            agg[0] += c
            agg[1] += a
        ring_months: dict[tuple[str, str, str, int], int] = {}
        for (d, dep, let, s), n in rings.items():
            rk = (month_of(d), dep, let, s)
            ring_months[rk] = ring_months.get(rk, 0) + n
        await self._add_rollups(conn, "month", months, ring_months)

    async def _add_rollups(
        self,
        conn: AsyncConnection,
        period: str,
        answers: dict[tuple[str, str, str, str], list[int]],
        rings: dict[tuple[str, str, str, int], int],
    ) -> None:
        """Add a batch's counts to the daily (`period` "day") or monthly ("month") roll-ups:
        calls and answers per (period, department, lettering, reason), answers per ring second."""
        daily = period == "day"
        answer_t = schema.answer_daily if daily else schema.answer_monthly
        ring_t = schema.ring_daily if daily else schema.ring_monthly
        if answers:
            stmt = self._ins(answer_t)
            stmt = stmt.on_conflict_do_update(
                index_elements=[period, "department", "lettering", "reason"],
                set_={
                    "calls": answer_t.c.calls + stmt.excluded.calls,
                    "answered": answer_t.c.answered + stmt.excluded.answered,
                },
            )
            await conn.execute(
                stmt,
                [
                    {period: p, "department": dep, "lettering": let, "reason": why, "calls": c, "answered": a}
                    for (p, dep, let, why), (c, a) in answers.items()
                ],
            )
        if rings:
            rstmt = self._ins(ring_t)
            rstmt = rstmt.on_conflict_do_update(
                index_elements=[period, "department", "lettering", "ring_s"],
                set_={"answered": ring_t.c.answered + rstmt.excluded.answered},
            )
            await conn.execute(
                rstmt,
                [
                    {period: p, "department": dep, "lettering": let, "ring_s": sec, "answered": n}
                    for (p, dep, let, sec), n in rings.items()
                ],
            )

    async def _write_threads(self, conn: AsyncConnection, facts: list[ThreadFact]) -> int:
        rows = [_fit(schema.thread_events, _event_row(f)) for f in facts]
        new = await self._insert_new(conn, schema.thread_events, rows)
        fresh: list[ThreadFact] = []
        seen: set[str] = set()
        for f, row in zip(facts, rows, strict=True):
            if row["id"] in new and row["id"] not in seen:
                seen.add(row["id"])
                fresh.append(f)
        # Messages first, then the updates in the batch's order. The updates' conditions are on
        # times (an answer counts for the messages received before it), so a RECEIVED that
        # arrives in the same batch after a step of its thread is still matched correctly.
        received = [_fit(schema.messages, _message_row(f)) for f in fresh if f.kind == ThreadEventKind.RECEIVED]
        if received:
            stmt = self._ins(schema.messages).on_conflict_do_nothing(index_elements=["id"])
            await conn.execute(stmt, received)
        for kind, group in _runs(f for f in fresh if f.kind != ThreadEventKind.RECEIVED):
            stmt_u = _UPDATES.get(kind)
            if stmt_u is not None:
                await conn.execute(stmt_u, [_update_params(kind, f) for f in group])
        return len(fresh)

    async def _write_sends(self, conn: AsyncConnection, facts: list[SendFact]) -> int:
        merged = _merge_sends(facts)
        sd = schema.sends
        stmt = self._ins(sd)
        ex = stmt.excluded
        # A late report of an older state does not overwrite a newer one; the same state
        # redelivered changes nothing (and is counted as a duplicate).
        newer = or_(
            ex.updated_at > sd.c.updated_at,
            and_(ex.updated_at == sd.c.updated_at, ex.state != sd.c.state),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "state": ex.state,
                "updated_at": ex.updated_at,
                "reference": func.coalesce(func.nullif(ex.reference, ""), sd.c.reference),
                "detail": ex.detail,
                "fallback_used": ex.fallback_used,
            },
            where=newer,
        ).returning(sd.c.id)
        result = await conn.execute(stmt, [_fit(sd, r) for r in merged])
        # Counted per send (row inserted or advanced); the facts folded into it, and those that
        # changed nothing, are the batch's duplicates.
        return len(list(result))

    # -- reading (small helpers for the CLI and tests) ------------------------------------

    async def counts(self) -> dict[str, int]:
        """Rows per table (status, tests)."""

        async def op() -> dict[str, int]:
            out: dict[str, int] = {}
            async with self.engine.connect() as conn:
                for table in schema.metadata.sorted_tables:
                    out[table.name] = int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
            return out

        return await self._guard("counting rows", op)

    async def day_range(self) -> tuple[str | None, str | None]:
        """The oldest and newest day of the stored calls and messages."""

        async def op() -> tuple[str | None, str | None]:
            days: list[str] = []
            async with self.engine.connect() as conn:
                for table in (schema.calls, schema.messages, schema.answer_daily):
                    lo, hi = (await conn.execute(select(func.min(table.c.day), func.max(table.c.day)))).one()
                    days += [d for d in (lo, hi) if d]
            return (min(days), max(days)) if days else (None, None)

        return await self._guard("reading days", op)

    async def close(self) -> None:
        await self.engine.dispose()


def open_store(url: str) -> RecordsStore:
    return RecordsStore(url)


async def check_ready(url: str) -> None:
    """At a process's start: the records database is usable by this release (an empty one is
    created), else `RecordsSchemaMismatch`/`RecordsError` (a GatewayError: the CLI exits 2)."""
    store = RecordsStore(url)
    try:
        await store.ready()
    finally:
        await store.close()


# -- rows -----------------------------------------------------------------------------------


def _call_row(f: CallFact) -> dict[str, Any]:
    return {
        "id": f.key,
        "pbx": f.pbx,
        "call_id": f.call_id,
        "direction": f.direction,
        "extension": f.extension,
        "department": f.department,
        "party_hash": f.party_hash,
        "party_kind": f.party_kind,
        "disposition": f.disposition,
        "cause": f.cause,
        "started_at": f.started_at,
        "answered_at": f.answered_at,
        "ended_at": f.ended_at,
        "day": _day(f.started_at),
        "ring_seconds": f.ring_seconds,
        "talk_seconds": f.talk_seconds,
        "lettering": f.lettering,
        "lettering_reason": f.lettering_reason,
        "call_notice": f.call_notice,
        "postcall": f.postcall,
        "transfers": f.transfers,
        "recovered": f.recovered,
    }


def _fit_key(day: str, department: str, lettering: str, reason: str) -> tuple[str, str, str, str]:
    lens = _LENGTHS["answer_daily"]
    return day, department[: lens["department"]], lettering[: lens["lettering"]], reason[: lens["reason"]]


def _event_row(f: ThreadFact) -> dict[str, Any]:
    return {
        "id": f.key,
        "thread": f.thread,
        "kind": f.kind,
        "at": f.at,
        "day": _day(f.at),
        "queue": f.queue,
        "staff": f.staff,
        "detail": f.detail,
        "sealed_text": f.sealed_text,
    }


def _message_row(f: ThreadFact) -> dict[str, Any]:
    return {
        "id": f.message or f.ref,
        "thread": f.thread,
        "queue": f.queue,
        "rule": f.rule,
        "tags": ",".join(f.tags),
        "received_at": f.at,
        "day": _day(f.at),
        "day_type": f.day_type,
        "after_hours": f.after_hours,
        "party_hash": f.party_hash,
        "sealed_text": f.sealed_text,
        "auto_replied_at": None,
        "auto_reply": "",
        "first_response_at": None,
        "closed_at": None,
    }


_m = schema.messages
# Executed many at once (one parameter set per fact). The first response and the close of a
# message are the earliest after its receipt, whatever order the steps arrive in.
_UPDATES: dict[str, Any] = {
    ThreadEventKind.AUTO_REPLIED: update(_m)
    .where(_m.c.id == bindparam("b_id"), _m.c.auto_replied_at.is_(None))
    .values(auto_replied_at=bindparam("b_at"), auto_reply=bindparam("b_detail")),
    ThreadEventKind.ANSWERED: update(_m)
    .where(
        _m.c.thread == bindparam("b_thread"),
        _m.c.received_at <= bindparam("b_at"),
        or_(_m.c.first_response_at.is_(None), _m.c.first_response_at > bindparam("b_at")),
    )
    .values(first_response_at=bindparam("b_at")),
    ThreadEventKind.CLOSED: update(_m)
    .where(
        _m.c.thread == bindparam("b_thread"),
        _m.c.received_at <= bindparam("b_at"),
        or_(_m.c.closed_at.is_(None), _m.c.closed_at > bindparam("b_at")),
    )
    .values(closed_at=bindparam("b_at")),
}


def _update_params(kind: str, f: ThreadFact) -> dict[str, Any]:
    if kind == ThreadEventKind.AUTO_REPLIED:
        return {"b_id": f.message or f.ref, "b_at": f.at, "b_detail": f.detail[: _LENGTHS["messages"]["auto_reply"]]}
    return {"b_thread": f.thread, "b_at": f.at}


def _runs(facts: Iterable[ThreadFact]) -> list[tuple[str, list[ThreadFact]]]:
    """Consecutive facts of the same kind, in order (each run is one executemany)."""
    out: list[tuple[str, list[ThreadFact]]] = []
    for f in facts:
        if out and out[-1][0] == f.kind:
            out[-1][1].append(f)
        else:
            out.append((f.kind, [f]))
    return out


def _merge_sends(facts: list[SendFact]) -> list[dict[str, Any]]:
    """One row per send key: PostgreSQL refuses an upsert touching the same row twice in one
    statement. The latest state wins (ties: the later in the batch), the first time is the
    earliest, a reference once known is kept."""
    rows: dict[str, dict[str, Any]] = {}
    for f in facts:
        row = rows.get(f.key)
        if row is None:
            rows[f.key] = {
                "id": f.key,
                "purpose": f.purpose,
                "channel": f.channel,
                "provider": f.provider,
                "state": f.state,
                "first_at": f.at,
                "updated_at": f.at,
                "day": _day(f.at),
                "party_hash": f.party_hash,
                "reference": f.reference,
                "detail": f.detail,
                "fallback_used": f.fallback_used,
            }
            continue
        if f.at < row["first_at"]:
            row["first_at"], row["day"] = f.at, _day(f.at)
        if f.at >= row["updated_at"]:
            row.update(
                state=f.state,
                updated_at=f.at,
                detail=f.detail,
                fallback_used=f.fallback_used,
                channel=f.channel or row["channel"],  # a delivery report does not know it
                provider=f.provider or row["provider"],
            )
            if f.reference:
                row["reference"] = f.reference
        elif not row["reference"] and f.reference:
            row["reference"] = f.reference
    return list(rows.values())


def _brief(exc: BaseException) -> str:
    """The error's first line, without SQL or parameters (they may be long, or personal)."""
    orig = getattr(exc, "orig", None)
    base = orig if isinstance(orig, BaseException) else exc
    text = str(base).strip().splitlines()[0] if str(base).strip() else type(base).__name__
    return f"{type(base).__name__}: {text[:300]}"


def _ahead_message(masked: str, st: SchemaStatus) -> str:
    return (
        f"records database {masked} is at revision {st.current}, newer than this release "
        f"(which knows up to {st.head}): run a newer gateway, or restore the database"
    )


# -- CLI ------------------------------------------------------------------------------------


def cmd_migrate(url: str, out: TextIO) -> int:
    """`gateway records migrate`: 0 when the schema is current afterwards."""

    async def run() -> int:
        store = RecordsStore(url)
        try:
            before = await store.status()
            after = await store.migrate()
        finally:
            await store.close()
        if before.current == after.current:
            print(f"records database {store.masked_url}: already at {after.current} (current)", file=out)
        else:
            print(
                f"records database {store.masked_url}: migrated {before.current or 'empty'} -> {after.current}",
                file=out,
            )
        return 0 if after.state == "current" else 1

    try:
        return asyncio.run(run())
    except RecordsError as exc:
        print(f"error: {exc}", file=out)
        return 1


def cmd_status(url: str, out: TextIO) -> int:
    """`gateway records status`: revision, state, rows per table, days; 0 only when current."""

    async def run() -> int:
        store = RecordsStore(url)
        try:
            st = await store.status()
            print(f"records database: {store.masked_url}", file=out)
            print(f"revision: {st.current or '-'} (this release: {st.head})", file=out)
            print(f"state: {st.state}", file=out)
            if st.state == "empty":
                print("run `gateway records migrate` to create the schema", file=out)
                return 1
            if st.state == "behind":
                print("run `gateway records migrate` to bring it to this release", file=out)
            if st.state != "ahead":
                counts = await store.counts() if st.state == "current" else await _present_counts(store)
                for name, n in counts.items():
                    print(f"  {name:<14} {n:>12,d} rows", file=out)
                if st.state == "current":
                    lo, hi = await store.day_range()
                    print(f"days: {lo or '-'} .. {hi or '-'}", file=out)
            return 0 if st.state == "current" else 1
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except RecordsError as exc:
        print(f"error: {exc}", file=out)
        return 1


async def _present_counts(store: RecordsStore) -> dict[str, int]:
    """Rows per table of the tables that exist (a database behind lacks the newer ones)."""
    from sqlalchemy import inspect

    def names(sync: Connection) -> set[str]:
        return set(inspect(sync).get_table_names())

    async with store.engine.connect() as conn:
        present = await conn.run_sync(names)
        out: dict[str, int] = {}
        for table in schema.metadata.sorted_tables:
            if table.name in present:
                out[table.name] = int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
    return out
