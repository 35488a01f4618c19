"""Retention and destruction (파기): the daily purge of the SQL records and of Redis.

What goes (cutoffs from `gateway.domain.retention.plan_purge`, whole Seoul days):

- SQL: `calls` by `ended_at` (calls' retention); `messages` by `received_at` and
  `thread_events` by `at` (messages' retention); `sends` by `updated_at` (sends' retention).
  The roll-ups (`answer_daily`, `ring_daily`) hold no personal data and are kept, so a
  report over years still works after the raw rows are gone.
- Redis: what has no TTL there (`gateway.records.redispurge`).

Each kind's purge is itself recorded as one `purges` row (when, which kind, which store, how
many, the cutoff), written as soon as that kind is done: the record of a destruction is never
lost to a failure of the next kind. A dry run counts with the same conditions, deletes nothing
and records nothing.

SQL rows are deleted in chunks (`CHUNK` rows per transaction, chosen through the time column's
index), with a short pause between chunks: SQLite has one writer at a time, and the records
writer (intake's facts) must get its turn while a large purge runs; PostgreSQL keeps row locks
and WAL per transaction small the same way.

`PurgeScheduler` runs the purge daily at `records.purge_at` (Seoul), under a Redis lock so that
of several workers only one purges; `cmd_purge` is `gateway records purge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

from redis.exceptions import RedisError
from sqlalchemy import Column, Table, delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain.records import SEOUL, seoul_day
from gateway.domain.retention import Cutoffs, PurgeCount, Retention, next_purge_at, plan_purge
from gateway.errors import GatewayError
from gateway.infra import redisurl
from gateway.infra.config import GatewayConfig
from gateway.infra.rediskeys import PURGE_LOCK
from gateway.records import auditchain
from gateway.records.redispurge import purge_redis
from gateway.records.schema import calls, messages, purges, sends, thread_events

log = logging.getLogger(__name__)

CHUNK = 5000  # rows per delete transaction
PAUSE_S = 0.02  # between chunks at least: a waiting SQLite writer (busy handler polling) gets the lock
LOCK_S = 3600  # the purge lock's lifetime: a crashed holder blocks no later than the next day

# (kind, table, time column, retention kind): the SQL kinds, in the order they are purged.
SQL_KINDS: tuple[tuple[str, Table, str, str], ...] = (
    ("calls", calls, "ended_at", "calls"),
    ("messages", messages, "received_at", "messages"),
    ("thread_events", thread_events, "at", "messages"),
    ("sends", sends, "updated_at", "sends"),
)

# (kind, chain, retention kind): the access-record chains, purged after the SQL kinds.
AUDIT_KINDS: tuple[tuple[str, str, str], ...] = (
    ("access_log", "access", "access"),
    ("accounts_log", "accounts", "accounts"),
)

# Release the lock only if it is still ours (it may have expired and been taken by another).
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def retention_of(config: GatewayConfig) -> Retention:
    """The configuration's `records.retention_days` as a `Retention`."""
    return Retention.from_days(dict(config.records.retention_days))


def _writing(engine: AsyncEngine) -> AsyncEngine:
    """The engine for the purge's write transactions. On SQLite the store begins those with
    BEGIN IMMEDIATE (the write lock taken at BEGIN, queueing on busy_timeout behind the records
    writer) rather than upgrading a read lock mid-transaction, which fails at once when another
    writer committed meanwhile (`gateway.records.store._sqlite_begin`)."""
    from gateway.records.store import _WRITE_OPTION

    return engine.execution_options(**{_WRITE_OPTION: True})


async def _delete_chunks(
    engine: AsyncEngine, table: Table, column: Column[Any], cutoff: float, *, chunk: int, pause_s: float
) -> tuple[int, int]:
    """Delete the rows before `cutoff`, `chunk` at a time, each chunk its own transaction:
    (rows, chunks). The oldest go first, so an interrupted purge leaves a clean boundary.

    On SQLite, `secure_delete` overwrites the deleted rows' bytes with zeros: destroyed means
    gone from the file too, not left in its free pages (PostgreSQL: autovacuum reclaims the
    space; the values were keyed hashes and sealed texts to begin with)."""
    ids = select(table.c.id).where(column < cutoff).order_by(column).limit(chunk)
    statement = delete(table).where(table.c.id.in_(ids))
    sqlite = engine.dialect.name == "sqlite"
    total = chunks = 0
    while True:
        began = time.monotonic()
        async with _writing(engine).begin() as conn:
            if sqlite:
                await conn.exec_driver_sql("PRAGMA secure_delete = ON")
            deleted = (await conn.execute(statement)).rowcount
        total += deleted
        chunks += deleted > 0
        if deleted < chunk:
            return total, chunks
        # Rest as long as the chunk took (at least `pause_s`): the purge takes at most half of a
        # core and of the disk, whatever the host's speed, and intake on the same host keeps its
        # latency; a day's purge takes twice as long, seconds.
        await asyncio.sleep(max(pause_s, time.monotonic() - began))


async def _count(engine: AsyncEngine, table: Table, column: Column[Any], cutoff: float) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(column < cutoff))).scalar_one())


async def _record(engine: AsyncEngine, done: PurgeCount) -> None:
    async with _writing(engine).begin() as conn:
        await conn.execute(
            insert(purges).values(
                at=time.time(),
                kind=done.kind,
                store=done.store,
                count=done.count,
                cutoff=done.cutoff,
                detail=done.detail[:200],
            )
        )


async def purge_sql(
    engine: AsyncEngine, cutoffs: Cutoffs, *, dry_run: bool, chunk: int = CHUNK, pause_s: float = PAUSE_S
) -> list[PurgeCount]:
    """Each SQL kind purged (or counted) and, unless a dry run, recorded."""
    done = []
    for kind, table, name, retention_kind in SQL_KINDS:
        cutoff = float(getattr(cutoffs, retention_kind))
        column = table.c[name]
        if dry_run:
            result = PurgeCount(kind, "sql", cutoff, await _count(engine, table, column, cutoff))
        else:
            rows, chunks = await _delete_chunks(engine, table, column, cutoff, chunk=chunk, pause_s=pause_s)
            result = PurgeCount(kind, "sql", cutoff, rows, f"{chunks} chunk(s) of up to {chunk:,}")
            await _record(engine, result)
        done.append(result)
    # The access-record chains (접속기록 2 years, account changes 3 years): oldest end only,
    # the chain's anchor moved in the same transaction (`gateway.records.auditchain`).
    for kind, chain, retention_kind in AUDIT_KINDS:
        cutoff = float(getattr(cutoffs, retention_kind))
        if dry_run:
            result = PurgeCount(kind, "sql", cutoff, await auditchain.count_due(engine, chain, cutoff))
        else:
            result = PurgeCount(kind, "sql", cutoff, await auditchain.purge_chain(engine, chain, cutoff, chunk=chunk))
            await _record(engine, result)
        done.append(result)
    if not dry_run and engine.dialect.name == "sqlite":
        await _checkpoint(engine)
    return done


async def _checkpoint(engine: AsyncEngine) -> None:
    """SQLite: copy the write-ahead log into the database and empty it, so that the deleted rows'
    earlier versions do not linger in the -wal file. Best effort: a reader still on an old
    snapshot makes it partial (the next automatic checkpoint finishes the job)."""
    async with engine.connect() as conn:
        await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


async def run_purge(
    engine: AsyncEngine,
    redis: Any | None,
    retention: Retention,
    now: float,
    *,
    dry_run: bool = False,
    chunk: int = CHUNK,
    pause_s: float = PAUSE_S,
    done: list[PurgeCount] | None = None,
) -> list[PurgeCount]:
    """The whole purge as of `now`: SQL, then Redis (when a client is given), each kind recorded
    in `purges` as it is done (none in a dry run). `done`, when given, receives each kind as it
    is done: what was destroyed before a failure can still be reported."""
    cutoffs = plan_purge(retention, now)
    done = [] if done is None else done
    done.extend(await purge_sql(engine, cutoffs, dry_run=dry_run, chunk=chunk, pause_s=pause_s))
    if redis is not None:
        async for result in purge_redis(redis, cutoffs, dry_run=dry_run):
            if not dry_run:
                await _record(engine, result)
            done.append(result)
    for result in done:
        if result.count and not dry_run:
            log.info("purged %d %s (%s) before %s", result.count, result.kind, result.store, seoul_day(result.cutoff))
    return done


# ------------------------------------------------------------------ the daily schedule


class PurgeScheduler:
    """The daily purge at `purge_at` (Seoul "HH:MM"), as an asyncio task in the worker.

    Several workers may run one each: the purge takes a Redis lock (SET NX EX) first, and a
    worker that finds it taken skips that day's run (the holder is purging). Without Redis (a
    single-process SQLite setup) it runs without a lock. `status()` is for /health.

    `engine`: the records store's (`RecordsStore.engine`: its SQLite transactions begin as the
    store's do). `redis`: a redis-py asyncio client with patient timeouts (seconds, like the
    worker's actors' pool), not the real-time path's 0.25 s: an XTRIM of a year's inbox stream
    or a batch of thread deletions may take longer than a lettering's round trip."""

    def __init__(
        self,
        engine: AsyncEngine,
        redis: Any | None,
        retention: Retention,
        purge_at: str,
        *,
        clock: Callable[[], float] = time.time,
        chunk: int = CHUNK,
        lock_s: int = LOCK_S,
    ) -> None:
        next_purge_at(0.0, purge_at)  # (a bad "HH:MM" fails here, at startup)
        self.engine, self.redis, self.retention, self.purge_at = engine, redis, retention, purge_at
        self.clock, self.chunk, self.lock_s = clock, chunk, lock_s
        self.last_run_at: float | None = None
        self.last_counts: dict[str, int] = {}
        self.last_error = ""
        self.skipped = 0  # runs skipped because another worker held the lock
        self.runs = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: GatewayConfig, engine: AsyncEngine, redis: Any | None) -> PurgeScheduler:
        """The worker's scheduler: `records.retention_days` and `records.purge_at`."""
        return cls(engine, redis, retention_of(config), config.records.purge_at)

    async def run_once(self, now: float | None = None) -> list[PurgeCount] | None:
        """Purge now unless another worker is purging: the counts, or None when skipped."""
        token = secrets.token_hex(8)
        if self.redis is not None and not await self.redis.set(PURGE_LOCK, token, nx=True, ex=self.lock_s):
            self.skipped += 1
            log.info("records purge skipped: another worker holds the lock")
            return None
        try:
            done = await run_purge(
                self.engine, self.redis, self.retention, self.clock() if now is None else now, chunk=self.chunk
            )
        finally:
            if self.redis is not None:
                with contextlib.suppress(RedisError):
                    await self.redis.eval(_UNLOCK, 1, PURGE_LOCK, token)
        self.runs += 1
        self.last_run_at = self.clock()
        self.last_counts = {f"{d.store}:{d.kind}": d.count for d in done}
        self.last_error = ""
        return done

    def next_at(self) -> float:
        return next_purge_at(self.clock(), self.purge_at)

    async def run(self) -> None:
        """Forever: wait for the next `purge_at`, purge. A failed purge is logged and kept for
        /health; the next day's run tries again (what it missed is still past its cutoff)."""
        while True:
            due = self.next_at()
            # Sleep in steps: a clock set forward or back (NTP) is noticed within a minute.
            while True:
                left = due - self.clock()
                if left <= 0:
                    break
                await asyncio.sleep(min(left, 60.0))
            try:
                await self.run_once()
            except (GatewayError, SQLAlchemyError, RedisError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("records purge failed: %s", self.last_error)

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="records-purge")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def status(self) -> dict[str, Any]:
        """For /health: when it last ran, what it removed, when it runs next, any error."""
        return {
            "purge_at": self.purge_at,
            "next_at": round(self.next_at(), 3),
            "last_run_at": None if self.last_run_at is None else round(self.last_run_at, 3),
            "last_counts": dict(self.last_counts),
            "last_error": self.last_error,
            "runs": self.runs,
            "skipped_locked": self.skipped,
        }


# ------------------------------------------------------------------ gateway records purge


def parse_now(text: str | None) -> float:
    """`--now`: an ISO time (Asia/Seoul when it has no zone), or None for the clock."""
    if text is None:
        return time.time()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--now: not an ISO date or time: {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=SEOUL)).timestamp()


def _table(done: Sequence[PurgeCount], out: TextIO) -> None:
    out.write(f"{'kind':<14} {'store':<6} {'before':<10} {'count':>12}\n")
    for d in done:
        out.write(f"{d.kind:<14} {d.store:<6} {seoul_day(d.cutoff).isoformat():<10} {d.count:>12,}\n")


async def _purge(
    config: GatewayConfig, url: str, redis_url: str, *, dry_run: bool, now: float, done: list[PurgeCount]
) -> None:
    from gateway.records.store import open_store

    store = open_store(url)
    redis = redisurl.async_client(redis_url, socket_timeout=10.0, socket_connect_timeout=5.0) if redis_url else None
    try:
        await store.ready()
        await run_purge(store.engine, redis, retention_of(config), now, dry_run=dry_run, done=done)
    finally:
        if redis is not None:
            await redis.aclose()
        await store.close()


def cmd_purge(config: GatewayConfig, url: str, *, dry_run: bool, now: str | None, out: TextIO) -> int:
    """`gateway records purge [--dry-run] [--now ISO]`: a table of kind, store, cutoff day
    ("before": records from before that Seoul day) and count. 0 done, 1 failed, 2 bad --now."""
    try:
        moment = parse_now(now)
        retention_of(config)
    except ValueError as exc:
        print(f"gateway records purge: {exc}", file=sys.stderr)
        return 2
    redis_url = config.resolved_redis_url(os.environ)
    done: list[PurgeCount] = []
    failed = ""
    try:
        asyncio.run(_purge(config, url, redis_url, dry_run=dry_run, now=moment, done=done))
    except (GatewayError, SQLAlchemyError, RedisError, OSError) as exc:
        failed = f"{type(exc).__name__}: {exc}"
    when = datetime.fromtimestamp(moment, SEOUL).strftime("%Y-%m-%d %H:%M")
    title = "would be destroyed (dry run: nothing deleted, nothing recorded)" if dry_run else "destroyed and recorded"
    out.write(f"records purge as of {when} Asia/Seoul: {title}\n")
    if not redis_url:
        out.write("Redis: not configured (no redis_url or its environment variable): SQL only\n")
    _table(done, out)
    out.write("roll-ups (answer_daily, ring_daily, answer_monthly, ring_monthly) are kept: no personal data\n")
    if failed:
        # What was done above is done (and recorded); the rest is tried again by the next purge.
        print(f"gateway records purge: failed after {len(done)} kind(s): {failed}", file=sys.stderr)
        return 1
    return 0
