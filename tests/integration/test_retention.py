"""Retention and destruction (파기): the purge of the SQL records (both databases) and of Redis
(a real redis-server), each purge recorded; dry runs; the lock; chunks; the CLI; intake and
the records writer keep working while a large purge runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, insert, select

from gateway.domain.records import SEOUL, CallFact, Fact, SendFact, ThreadFact
from gateway.domain.retention import PurgeCount, Retention, plan_purge
from gateway.domain.routing import InboundSms
from gateway.inbox.intake import Intake
from gateway.infra.crypto import Sealer
from gateway.infra.rediskeys import (
    AUDIT_STREAM,
    OPTOUT_AUDIT,
    PURGE_LOCK,
    inbox_key,
    thread_key,
    thread_messages_key,
)
from gateway.infra.wire import Wire
from gateway.outbox.guard import Outbox
from gateway.outbox.store import RedisOutboxStore, connect
from gateway.records import schema
from gateway.records.redispurge import purge_threads
from gateway.records.retention import PurgeScheduler, run_purge
from gateway.records.store import RecordsStore
from gateway.rules.messaging import load_messaging
from tests.conftest import RULES

DAY = 86400.0
NOW = datetime(2026, 12, 3, 3, 30, tzinfo=SEOUL).timestamp()  # the purge's "now" for the SQL tests
CUTOFF = datetime(2025, 12, 3, tzinfo=SEOUL).timestamp()  # 365 days' cutoff for NOW
OLD, YOUNG = NOW - 400 * DAY, NOW - 10 * DAY


def call(n: int, ended_at: float, *, answered: bool = True) -> CallFact:
    return CallFact(
        pbx="city-hall",
        call_id=f"c{n}",
        direction="outbound",
        extension="2001",
        department="civil",
        party_hash=f"{n:032x}",
        party_kind="mobile",
        disposition="answered" if answered else "no_answer",
        cause="16",
        started_at=ended_at - 60,
        answered_at=ended_at - 50 if answered else None,
        ended_at=ended_at,
        ring_seconds=10.0,
        talk_seconds=50.0 if answered else 0.0,
        lettering="delivered",
    )


def received(n: int, at: float) -> ThreadFact:
    return ThreadFact(
        thread=f"t{n:020d}", kind="received", at=at, ref=f"m{n}", message=f"sandbox:m{n}", queue="complaint"
    )


def answered(n: int, at: float) -> ThreadFact:
    return ThreadFact(thread=f"t{n:020d}", kind="answered", at=at, ref=f"r{n}", staff="kim")


def send(n: int, at: float) -> SendFact:
    return SendFact(key=f"sms:t{n}:reply", purpose="reply", channel="sms", provider="sandbox", state="sent", at=at)


async def table_counts(store: RecordsStore) -> dict[str, int]:
    async with store.engine.connect() as conn:
        return {
            t.name: int((await conn.execute(select(func.count()).select_from(t))).scalar_one())
            for t in schema.metadata.sorted_tables
        }


async def purge_rows(store: RecordsStore) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(schema.purges).order_by(schema.purges.c.id))).mappings().all()
    return [dict(r) for r in rows]


@pytest.fixture
async def store(records_url: str) -> AsyncIterator[RecordsStore]:
    s = RecordsStore(records_url)
    yield s
    await s.close()


@pytest.fixture
async def sqlite_store(sqlite_records_url: str) -> AsyncIterator[RecordsStore]:
    s = RecordsStore(sqlite_records_url)
    yield s
    await s.close()


# ------------------------------------------------------------------ SQL


async def test_sql_purge_removes_what_is_past_retention_keeps_the_rest_and_the_rollups(store: RecordsStore) -> None:
    facts: list[Fact] = [
        call(1, OLD),
        call(2, OLD, answered=False),
        call(3, CUTOFF - 1),  # the last second before the cutoff day: goes
        call(4, CUTOFF),  # the cutoff day's first second: stays
        call(5, YOUNG),
        received(1, OLD),
        answered(1, OLD + 3600),
        received(2, YOUNG),
        answered(2, YOUNG + 60),
        send(1, OLD),
        send(2, YOUNG),
    ]
    await store.write(facts)
    before = await table_counts(store)
    assert before["answer_daily"] > 0 and before["ring_daily"] > 0
    async with store.engine.connect() as conn:
        rollups = (await conn.execute(select(schema.answer_daily).order_by(schema.answer_daily.c.day))).all()

    plan = await run_purge(store.engine, None, Retention(), NOW, dry_run=True)
    assert [(p.kind, p.store, p.count) for p in plan] == [
        ("calls", "sql", 3),
        ("messages", "sql", 1),
        ("thread_events", "sql", 2),
        ("sends", "sql", 1),
        ("access_log", "sql", 0),  # the access-record chains (tests/staff/test_audit_chain.py)
        ("accounts_log", "sql", 0),
    ]
    assert await table_counts(store) == before  # a dry run deletes nothing and records nothing

    done = await run_purge(store.engine, None, Retention(), NOW)
    assert [(p.kind, p.count) for p in done] == [(p.kind, p.count) for p in plan]
    after = await table_counts(store)
    assert after["calls"] == 2 and after["messages"] == 1 and after["thread_events"] == 2 and after["sends"] == 1
    async with store.engine.connect() as conn:
        assert sorted((await conn.execute(select(schema.calls.c.call_id))).scalars()) == ["c4", "c5"]
        assert list((await conn.execute(select(schema.messages.c.id))).scalars()) == ["sandbox:m2"]
        assert (await conn.execute(select(schema.answer_daily).order_by(schema.answer_daily.c.day))).all() == rollups
    assert after["ring_daily"] == before["ring_daily"]

    recorded = await purge_rows(store)
    assert [(r["kind"], r["store"], r["count"], r["cutoff"]) for r in recorded][:4] == [
        ("calls", "sql", 3, CUTOFF),
        ("messages", "sql", 1, CUTOFF),
        ("thread_events", "sql", 2, CUTOFF),
        ("sends", "sql", 1, CUTOFF),
    ]
    assert [(r["kind"], r["count"]) for r in recorded][4:] == [("access_log", 0), ("accounts_log", 0)]
    assert all(time.time() - 60 < r["at"] <= time.time() for r in recorded)  # when it ran, not --now

    # Again: nothing more is due, and the run is still recorded (zeros).
    again = await run_purge(store.engine, None, Retention(), NOW)
    assert [p.count for p in again] == [0, 0, 0, 0, 0, 0]
    assert len(await purge_rows(store)) == 12


async def test_each_kind_has_its_own_retention(store: RecordsStore) -> None:
    await store.write([call(1, NOW - 40 * DAY), received(1, NOW - 40 * DAY), send(1, NOW - 40 * DAY)])
    done = await run_purge(store.engine, None, Retention(messages=30, calls=90, sends=365), NOW)
    assert {p.kind: p.count for p in done} == {
        "calls": 0,
        "messages": 1,
        "thread_events": 1,
        "sends": 0,
        "access_log": 0,
        "accounts_log": 0,
    }
    cutoffs = plan_purge(Retention(messages=30, calls=90, sends=365), NOW)
    assert {p.kind: p.cutoff for p in done} == {
        "calls": cutoffs.calls,
        "messages": cutoffs.messages,
        "thread_events": cutoffs.messages,
        "sends": cutoffs.sends,
        "access_log": cutoffs.access,
        "accounts_log": cutoffs.accounts,
    }


def _call_rows(start: int, count: int, ended_at: float) -> list[dict[str, Any]]:
    return [
        {
            "id": f"city-hall:c{n}",
            "pbx": "city-hall",
            "call_id": f"c{n}",
            "direction": "outbound",
            "party_kind": "mobile",
            "disposition": "answered",
            "started_at": ended_at - 60,
            "ended_at": ended_at + n * 0.001,
            "day": "2025-10-29",
            "ring_seconds": 5.0,
            "talk_seconds": 55.0,
            "lettering": "delivered",
        }
        for n in range(start, start + count)
    ]


async def test_a_purge_larger_than_one_chunk_goes_in_chunks(sqlite_store: RecordsStore) -> None:
    async with sqlite_store.engine.begin() as conn:
        await conn.execute(insert(schema.calls), _call_rows(0, 1050, OLD))
        await conn.execute(insert(schema.calls), _call_rows(5000, 7, YOUNG))
    plan = await run_purge(sqlite_store.engine, None, Retention(), NOW, dry_run=True, chunk=100)
    assert plan[0] == PurgeCount("calls", "sql", CUTOFF, 1050)
    done = await run_purge(sqlite_store.engine, None, Retention(), NOW, chunk=100, pause_s=0)
    assert done[0].count == 1050
    assert done[0].detail == "11 chunk(s) of up to 100"
    assert (await table_counts(sqlite_store))["calls"] == 7


async def test_sqlite_purge_leaves_no_bytes_of_what_it_destroyed(sqlite_records_url: str) -> None:
    """파기 means gone from the file too: not left in SQLite's free pages or its write-ahead log."""
    marker = "SEALED-MARKER-" + "q" * 40
    store = RecordsStore(sqlite_records_url)
    old = ThreadFact(thread="t" + "0" * 20, kind="received", at=OLD, ref="m1", message="sandbox:m1", sealed_text=marker)
    await store.write([old, received(2, YOUNG), *(call(n, YOUNG) for n in range(50))])
    path = Path(sqlite_records_url.removeprefix("sqlite:///"))

    def residue() -> bool:
        files = (path, path.with_name(path.name + "-wal"))
        return any(marker.encode() in f.read_bytes() for f in files if f.exists())

    assert residue()
    done = await run_purge(store.engine, None, Retention(), NOW)
    assert {p.kind: p.count for p in done}["messages"] == 1
    assert not residue()
    await store.close()


# ------------------------------------------------------------------ Redis


class Collect:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def decision(self, record: Any) -> None:
        self.records.append(dict(record))


class Inbox:
    """A real `Intake` on the test Redis (no routing rules: everything goes to "complaint")."""

    def __init__(self, redis_url: str) -> None:
        self.client = connect(redis_url, timeout_s=2.0)
        self.wire = Wire.from_url(redis_url, timeout_s=2.0)
        messaging = load_messaging(RULES)
        self.outbox = Outbox(RedisOutboxStore(self.client, self.wire), {}, hash_key=b"k" * 16)
        self.intake = Intake(
            self.client,
            routing=lambda: None,
            messaging=lambda: messaging,
            sealer=Sealer.from_env(Sealer.new_key_spec(), "KEY"),
            hash_key=b"k" * 16,
            outbox=self.outbox,
            enqueuer=None,
            sms_provider="",
            sink=Collect(),
            wire=self.wire,
        )

    async def accept(self, n: int, received_at: float, text: str = "민원 문의입니다") -> str:
        sms = InboundSms(f"m{n}", "sandbox", "+8215880000", f"+8210{n:08d}", text, received_at)
        result = await self.intake.accept(sms)
        assert result.status == "accepted"
        return result.thread

    async def close(self) -> None:
        await self.wire.aclose()
        await self.client.aclose()


@pytest.fixture
async def inbox(redis_url: str) -> AsyncIterator[Inbox]:
    box = Inbox(redis_url)
    yield box
    await box.close()


def _ms(epoch: float) -> str:
    return f"{int(epoch * 1000)}-0"


async def test_redis_purge_threads_inboxes_and_audit_streams(
    inbox: Inbox, redis_url: str, sqlite_store: RecordsStore
) -> None:
    now = time.time()
    r: Any = aioredis.Redis.from_url(redis_url, decode_responses=True)
    # Older entries first (a stream's ids only grow), as the intake and the guard wrote them then.
    queue = inbox_key("complaint")
    for days in (400, 380):
        at = now - days * DAY
        await r.xadd(queue, {"thread": "t-old", "at": f"{at:.3f}", "priority": "normal"}, id=_ms(at))
    for days in (800, 400):
        at = now - days * DAY
        await r.xadd(OPTOUT_AUDIT, {"number": "ab" * 16, "action": "opt_out", "at": f"{at:.3f}"}, id=_ms(at))
        await r.xadd(AUDIT_STREAM, {"key": f"k{days}", "ts": f"{at:.3f}", "verdict": "admitted"}, id=_ms(at))
    await r.xadd(AUDIT_STREAM, {"key": "k-now", "ts": f"{now:.3f}", "verdict": "admitted"})
    await inbox.intake.optouts.set("+821099990000", True, channel="sms", via="sandbox")

    old = await inbox.accept(1, now - 400 * DAY)
    young = await inbox.accept(2, now - 10 * DAY)
    answered_lately = await inbox.accept(3, now - 500 * DAY)
    # A staff reply yesterday (the entry the reply job adds): the thread is active, it stays.
    await r.xadd(
        thread_messages_key(answered_lately),
        {
            "dir": "out",
            "at": f"{now - DAY:.3f}",
            "text": inbox.intake.sealer.seal("답변드립니다", answered_lately.encode()),
            "action": "reply:1",
        },
    )
    closed_lately = await inbox.accept(4, now - 400 * DAY)
    assert await inbox.intake.close(closed_lately, "kim")  # closed by staff today: active, it stays
    assert len({old, young, answered_lately, closed_lately}) == 4
    many = [await inbox.accept(100 + n, now - 366 * DAY) for n in range(450)]

    expected = {"threads": 451, "inbox": 2, "optout_audit": 1, "audit": 1}
    plan = await run_purge(sqlite_store.engine, r, Retention(), now, dry_run=True)
    assert {p.kind: p.count for p in plan if p.store == "redis"} == expected
    assert await r.exists(thread_key(old), thread_messages_key(old)) == 2  # the dry run deleted nothing
    assert await r.xlen(queue) == 2 + 454
    # Small SCAN pages and Lua batches: a thread's two keys in different pages count once.
    cut = plan_purge(Retention(), now).messages
    assert await purge_threads(r, cut, dry_run=True, batch=7, scan_count=10) == expected["threads"]

    done = await run_purge(sqlite_store.engine, r, Retention(), now)
    assert {p.kind: p.count for p in done if p.store == "redis"} == expected
    for tid in (old, *many[:5], many[-1]):
        assert await r.exists(thread_key(tid), thread_messages_key(tid)) == 0
        assert await inbox.intake.thread(tid) is None
    for tid in (young, answered_lately, closed_lately):
        assert await r.exists(thread_key(tid), thread_messages_key(tid)) == 2
        assert (await inbox.intake.thread(tid) or {})["count"] == 1
    assert [m["dir"] for m in (await inbox.intake.thread(answered_lately) or {})["messages"]] == ["in", "out"]
    assert await r.xlen(queue) == 454  # the intake's own entries (added now) stay
    # Consent changes: 730 days by default (the access records' period), not the messages' 365.
    assert (await r.xrange(OPTOUT_AUDIT))[0][1]["at"] == f"{now - 400 * DAY:.3f}"
    assert await r.xlen(OPTOUT_AUDIT) == 2 and await r.xlen(AUDIT_STREAM) == 2
    # An opt-out itself is never purged: the refusal holds.
    assert (await inbox.intake.optouts.status("+821099990000") or {})["channel"] == "sms"

    recorded = [r_ for r_ in await purge_rows(sqlite_store) if r_["store"] == "redis"]
    assert {x["kind"]: x["count"] for x in recorded} == expected
    assert {x["kind"]: x["cutoff"] for x in recorded} == {
        "threads": plan_purge(Retention(), now).messages,
        "inbox": plan_purge(Retention(), now).messages,
        "optout_audit": plan_purge(Retention(), now).access,
        "audit": plan_purge(Retention(), now).access,
    }
    again = await run_purge(sqlite_store.engine, r, Retention(), now)
    assert {p.kind: p.count for p in again if p.store == "redis"} == dict.fromkeys(expected, 0)
    await r.aclose()


# ------------------------------------------------------------------ the lock and the schedule


async def test_two_purges_at_once_one_runs(redis_url: str, sqlite_store: RecordsStore) -> None:
    await sqlite_store.write([call(1, OLD), call(2, YOUNG)])
    clients: list[Any] = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    a, b = (PurgeScheduler(sqlite_store.engine, c, Retention(), "03:30", clock=lambda: NOW) for c in clients)
    results = await asyncio.gather(a.run_once(), b.run_once())
    ran = [x for x in results if x is not None]
    assert len(ran) == 1 and results.count(None) == 1
    assert a.skipped + b.skipped == 1 and a.runs + b.runs == 1
    assert len(await purge_rows(sqlite_store)) == 10  # one purge's records (6 SQL + 4 Redis kinds)
    assert await clients[0].exists(PURGE_LOCK) == 0  # released when done

    # A lock held elsewhere (a worker purging now): skipped, and nothing is touched.
    await sqlite_store.write([call(3, OLD)])
    await clients[0].set(PURGE_LOCK, "other-worker", ex=60)
    assert await a.run_once() is None
    assert (await table_counts(sqlite_store))["calls"] == 2
    assert await clients[0].get(PURGE_LOCK) == b"other-worker"  # not released by one who did not take it
    await clients[0].delete(PURGE_LOCK)
    done = await a.run_once()
    assert done is not None and done[0].count == 1
    status = a.status()
    assert status["last_counts"]["sql:calls"] == 1 and status["last_error"] == ""
    assert status["next_at"] == datetime(2026, 12, 4, 3, 30, tzinfo=SEOUL).timestamp()
    for c in clients:
        await c.aclose()


async def test_the_scheduler_runs_at_purge_at(redis_url: str, sqlite_store: RecordsStore) -> None:
    """A clock just before 03:30: the task waits for it, purges once, and waits for tomorrow."""
    await sqlite_store.write([call(1, OLD)])
    clock = [NOW - 0.2]
    client: Any = aioredis.Redis.from_url(redis_url)

    def tick() -> float:
        return clock[0]

    scheduler = PurgeScheduler(sqlite_store.engine, client, Retention(), "03:30", clock=tick)
    assert scheduler.status()["next_at"] == NOW
    scheduler.start()
    await asyncio.sleep(0.05)
    assert scheduler.runs == 0  # not yet 03:30
    clock[0] = NOW + 1
    for _ in range(100):
        if scheduler.runs:
            break
        await asyncio.sleep(0.05)
    await scheduler.stop()
    assert scheduler.runs == 1 and scheduler.last_counts["sql:calls"] == 1
    assert scheduler.status()["next_at"] == NOW + DAY
    await client.aclose()


# ------------------------------------------------------------------ the CLI


def test_cli_purge_dry_run_then_purge(
    sqlite_records_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.app.cli import main

    async def seed() -> None:
        s = RecordsStore(sqlite_records_url)
        await s.write([call(1, OLD), call(2, YOUNG), received(1, OLD)])
        await s.close()

    asyncio.run(seed())
    monkeypatch.setenv("REDIS_URL", redis_url)
    argv = ["records", "purge", "--records", sqlite_records_url, "--now", "2026-12-03T03:30"]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing deleted" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert lines["calls"] == ["calls", "sql", "2025-12-03", "1"]
    assert lines["messages"][-1] == "1" and lines["threads"][1] == "redis"

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "destroyed and recorded" in out and "calls          sql    2025-12-03" in out

    async def check() -> None:
        s = RecordsStore(sqlite_records_url)
        assert (await table_counts(s))["calls"] == 1
        assert len(await purge_rows(s)) == 10
        await s.close()

    asyncio.run(check())

    # Redis unreachable: the SQL purge is done and shown, the failure said, exit 1.
    async def seed_more() -> None:
        s = RecordsStore(sqlite_records_url)
        await s.write([call(3, OLD)])
        await s.close()

    asyncio.run(seed_more())
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1")
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "calls          sql    2025-12-03            1" in captured.out
    assert "failed after 6 kind(s): ConnectionError" in captured.err

    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setattr("gateway.infra.config.GatewayConfig.resolved_redis_url", lambda self, environ: "")
    assert main([*argv, "--dry-run"]) == 0
    assert "Redis: not configured" in capsys.readouterr().out
    assert main([*argv[:-1], "yesterday"]) == 2
    assert "--now" in capsys.readouterr().err


# ------------------------------------------------------------------ intake during a big purge


async def test_intake_and_the_records_writer_keep_working_during_a_big_purge(
    inbox: Inbox, sqlite_records_url: str
) -> None:
    """50,000 expired calls purged on SQLite while citizens' texts are accepted (Redis) and their
    records written by another connection (as the worker's writer does): every message is
    accepted and stored, and the purge removes exactly the expired rows."""
    purger, writer = RecordsStore(sqlite_records_url), RecordsStore(sqlite_records_url)
    async with purger.engine.begin() as conn:
        for start in range(0, 50_000, 10_000):
            await conn.execute(insert(schema.calls), _call_rows(start, 10_000, OLD))
    now = time.time()
    purge = asyncio.create_task(run_purge(purger.engine, None, Retention(), NOW))
    accepted: list[str] = []
    during = 0
    n = 0
    while not purge.done() or n < 20:
        n += 1
        tid = await inbox.accept(n, now)
        await writer.write([received(n, now)])
        accepted.append(tid)
        during += not purge.done()
    done = await purge
    assert during >= 1  # (functional: some were accepted and written while it ran)
    assert done[0].count == 50_000 and done[0].detail == "10 chunk(s) of up to 5,000"
    counts = await table_counts(writer)
    assert counts["calls"] == 0 and counts["messages"] == n
    for tid in accepted[:3] + accepted[-3:]:
        assert (await inbox.intake.thread(tid) or {})["count"] == 1
    await purger.close()
    await writer.close()
