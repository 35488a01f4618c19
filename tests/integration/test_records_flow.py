"""Facts from the flows to SQL, off the hot path: the emitter's bounded buffer and the Redis
stream `gw:records` (Redis killed and restarted loses nothing buffered), the writer's
exactly-once counting across a crash, bad entries and a failing database; replay with
`--records` writing one `calls` row per `call` decision; a delivered post-call as a `sends` row.

Real parts: a private redis-server, a SQLite file migrated by the store itself."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import text

from adapters.sandbox import SandboxCarrier
from adapters.sandbox_messaging import SandboxAlimtalk
from gateway.app.cli import main
from gateway.app.gateway import Overrides
from gateway.app.metrics import records_families
from gateway.app.recordsthread import RecordsThread
from gateway.app.replay import demo_environ, replay
from gateway.app.worker import build_worker
from gateway.domain.models import AlimtalkRequest
from gateway.domain.records import CallFact, Fact
from gateway.infra.config import load_config
from gateway.infra.crypto import Sealer
from gateway.infra.rediskeys import RECORDS_STREAM
from gateway.messaging.jobs import Enqueuer
from gateway.messaging.reports import ReportIntake, sandbox_parser
from gateway.messaging.workers import start_worker, wait_idle
from gateway.outbox.guard import QueuedMessage
from gateway.outbox.store import RedisOutboxStore, connect
from gateway.records.emitter import FIELD, StreamRecordSink
from gateway.records.store import RecordsStore
from gateway.records.writer import GROUP, RecordsWriter, decode
from gateway.sim.amiserver import AmiServer, Transcript
from gateway.sim.redisproc import RedisProcess
from tests.conftest import RULES
from tests.integration.test_pipeline import Collect, _gateway, _until
from tests.support.transcripts import TRANSCRIPTS, expected

KEY = "test-number-key-0123456789"


def call(n: int, *, disposition: str = "answered", department: str = "dept-a") -> CallFact:
    started = 1_790_000_000.0 + n * 60
    answered = started + 5 if disposition == "answered" else None
    return CallFact(
        pbx="city-hall",
        call_id=f"c{n}",
        direction="outbound",
        extension="2001",
        department=department,
        party_hash=f"{n:032x}",
        party_kind="mobile",
        disposition=disposition,
        cause="normal",
        started_at=started,
        answered_at=answered,
        ended_at=started + 30,
        ring_seconds=5.0 if answered else 30.0,
        talk_seconds=25.0 if answered else 0.0,
        lettering="delivered",
    )


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition (the test fails if it never comes; no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    store = RecordsStore(url)
    try:
        async with store.engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql))).all()]
    finally:
        await store.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    c = connect(redis_url, timeout_s=5.0)
    yield c
    await c.aclose()


@pytest.fixture
async def store(sqlite_records_url: str) -> AsyncIterator[RecordsStore]:
    s = RecordsStore(sqlite_records_url)
    yield s
    await s.close()


def stream_ids(redis_url: str) -> list[str]:
    r: Any = redis.Redis.from_url(redis_url)
    try:
        return [msgpack.unpackb(fields[FIELD], raw=False)["call_id"] for _, fields in r.xrange(RECORDS_STREAM)]
    finally:
        r.close()


# ---------------------------------------------------------------------------- the emitter


async def test_emitter_is_bounded_drops_the_oldest_and_counts_them(client: Any, redis_url: str) -> None:
    emitter = StreamRecordSink(client, bound=5, batch_size=2)
    for n in range(8):
        emitter.record(call(n))  # no task yet: everything stays in the buffer, at most 5
    assert emitter.status() == {"recorded": 8, "emitted": 0, "dropped": 3, "pending": 5, "errors": 0}
    emitter.start()
    assert await emitter.flush()
    await emitter.stop()
    assert emitter.emitted == 5 and emitter.pending == 0
    assert stream_ids(redis_url) == ["c3", "c4", "c5", "c6", "c7"]  # the newest, in order


async def test_redis_killed_and_restarted_loses_nothing_buffered(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    proc = RedisProcess(data_dir=tmp_path / "redis").start()
    port = proc.port
    client = connect(proc.url, timeout_s=0.5)
    emitter = StreamRecordSink(client, batch_size=10, backoff_initial_s=0.02, backoff_max_s=0.1)
    emitter.start()
    try:
        proc.kill()
        for n in range(40):
            emitter.record(call(n))  # never raises, never blocks
        await until(lambda: emitter.errors >= 2)
        assert emitter.pending == 40 and emitter.emitted == 0
        proc = RedisProcess(port=port, data_dir=tmp_path / "redis").start()
        assert await emitter.flush(timeout_s=20)
        assert emitter.emitted == 40 and emitter.dropped == 0
        assert stream_ids(proc.url) == [f"c{n}" for n in range(40)]
    finally:
        await emitter.stop()
        await client.aclose()
        proc.cleanup()


# ---------------------------------------------------------------------------- the writer


async def test_writer_drains_the_stream_into_sql(client: Any, store: RecordsStore, sqlite_records_url: str) -> None:
    emitter = StreamRecordSink(client)
    emitter.start()
    for n in range(30):
        emitter.record(call(n, disposition="answered" if n % 3 else "no_answer"))
    assert await emitter.flush()
    await emitter.stop()
    writer = RecordsWriter(client, store, batch_size=7, block_ms=50)
    while await writer.run_once():
        pass
    assert writer.written == 30 and writer.lag == 0 and writer.bad == 0
    assert writer.batches == 5  # 7 + 7 + 7 + 7 + 2
    assert await rows(sqlite_records_url, "select count(*), sum(disposition = 'answered') from calls") == [(30, 20)]
    assert await client.xlen(RECORDS_STREAM) == 0  # written entries are deleted


async def test_writer_crash_between_write_and_ack_counts_once(client: Any, records_url: str) -> None:
    """On both databases (SQLite and PostgreSQL)."""
    store = RecordsStore(records_url)
    try:
        await _crash_between_write_and_ack(client, store, records_url)
    finally:
        await store.close()


async def _crash_between_write_and_ack(client: Any, store: RecordsStore, url: str) -> None:
    emitter = StreamRecordSink(client)
    emitter.start()
    for n in range(10):
        emitter.record(call(n))
    assert await emitter.flush()
    await emitter.stop()
    # The first writer reads a batch and writes it, then "crashes" before its XACK.
    crashed = RecordsWriter(client, store, consumer="writer@host", block_ms=50)
    await crashed.ensure_group()
    entries = await crashed._read(">", block=False)
    facts: list[Fact] = [decode(fields) for _, fields in entries]
    await store.write(facts)
    pending = await client.xpending(RECORDS_STREAM, GROUP)
    assert pending["pending"] == 10
    # Its successor (same consumer name: the same host) re-reads its pending entries first.
    successor = RecordsWriter(client, store, consumer="writer@host", block_ms=50)
    while await successor.run_once():
        pass
    assert successor.written == 0 and successor.duplicates == 10
    assert (await client.xpending(RECORDS_STREAM, GROUP))["pending"] == 0
    assert await client.xlen(RECORDS_STREAM) == 0
    assert await rows(url, "select count(*) from calls") == [(10,)]
    # The roll-up counted each call once, not twice.
    assert await rows(url, "select sum(calls), sum(answered) from answer_daily") == [(10, 10)]


async def test_an_abandoned_consumers_entries_are_claimed(client: Any, store: RecordsStore) -> None:
    emitter = StreamRecordSink(client)
    emitter.start()
    for n in range(4):
        emitter.record(call(n))
    assert await emitter.flush()
    await emitter.stop()
    gone = RecordsWriter(client, store, consumer="writer@old-host", block_ms=50)
    await gone.ensure_group()
    assert len(await gone._read(">", block=False)) == 4  # read, never written: that host died
    other = RecordsWriter(client, store, consumer="writer@new-host", block_ms=50, claim_idle_s=0)
    while await other.run_once():
        pass
    assert other.written == 4 and await client.xlen(RECORDS_STREAM) == 0


async def test_a_running_writer_claims_what_a_writer_that_died_later_left(client: Any, store: RecordsStore) -> None:
    """Two workers: the survivor, already running, takes over the entries the other one read
    and never acknowledged (not only at its own start)."""
    survivor = RecordsWriter(client, store, consumer="writer@host-a", block_ms=50, claim_idle_s=0.2)
    assert await survivor.run_once() == 0  # started: nothing to do yet
    emitter = StreamRecordSink(client)
    emitter.start()
    for n in range(5):
        emitter.record(call(n))
    assert await emitter.flush()
    await emitter.stop()
    dying = RecordsWriter(client, store, consumer="writer@host-b", block_ms=50)
    await dying.ensure_group()
    assert len(await dying._read(">", block=False)) == 5  # read, then its host died
    await asyncio.sleep(0.3)  # idle longer than claim_idle_s
    await survivor.run_once()
    assert survivor.written == 5 and await client.xlen(RECORDS_STREAM) == 0


async def test_bad_entries_are_counted_and_acknowledged(client: Any, store: RecordsStore) -> None:
    await client.xadd(RECORDS_STREAM, {FIELD: b"\xc1not msgpack"})
    await client.xadd(RECORDS_STREAM, {b"other": b"1"})
    await client.xadd(RECORDS_STREAM, {FIELD: msgpack.packb({"t": "unknown-kind"})})
    await client.xadd(RECORDS_STREAM, {FIELD: msgpack.packb({"t": "call", "pbx": "p"})})  # fields missing
    emitter = StreamRecordSink(client)
    emitter.start()
    emitter.record(call(1))
    assert await emitter.flush()
    await emitter.stop()
    writer = RecordsWriter(client, store, block_ms=50)
    while await writer.run_once():
        pass
    assert writer.bad == 4 and writer.written == 1
    assert await client.xlen(RECORDS_STREAM) == 0


async def test_a_failing_database_keeps_entries_until_it_is_back(client: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'later.sqlite3'}"
    unready = RecordsStore(url)  # no schema yet: every write fails
    emitter = StreamRecordSink(client)
    emitter.start()
    for n in range(5):
        emitter.record(call(n))
    assert await emitter.flush()
    await emitter.stop()
    writer = RecordsWriter(client, unready, block_ms=50, backoff_initial_s=0.02, backoff_max_s=0.1)
    writer.start()
    try:
        await until(lambda: writer.errors >= 2)
        assert writer.written == 0
        assert await client.xlen(RECORDS_STREAM) == 5  # nothing acknowledged that is not written
        fixer = RecordsStore(url)
        await fixer.migrate()
        await fixer.close()
        await until(lambda: writer.written == 5)
    finally:
        await writer.stop()
        await unready.close()
    assert await rows(url, "select count(*) from calls") == [(5,)]


# ---------------------------------------------------------------------------- replay --records


async def _replay(files: list[Path], records: str | None) -> list[str]:
    out = io.StringIO()
    rc = await replay(files, load_config(), rules_dir=RULES, out=out, records_url=records)
    assert rc == 0
    return out.getvalue().splitlines()


async def test_replay_with_records_writes_one_calls_row_per_call_decision(
    redis_url: str, sqlite_records_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_NUMBER_KEY", KEY)
    files = [TRANSCRIPTS / f"{name}.ami" for name in sorted(expected())]
    plain = await _replay(files, None)
    redis.Redis.from_url(redis_url).flushall()  # the same citizens, not yet seen (no duplicates)
    recorded = await _replay(files, sqlite_records_url)
    # The decisions are the same lines (their order between calls varies run to run, as before).
    assert sorted(plain) == sorted(recorded)
    decisions = [json.loads(line) for line in recorded]
    calls = [d for d in decisions if d["event"] == "call"]
    want = Counter((c["direction"], c["disposition"]) for c in calls)
    got = await rows(sqlite_records_url, "select direction, disposition, count(*) from calls group by 1, 2")
    assert {(d, s): n for d, s, n in got} == dict(want)
    assert sum(want.values()) == len({(c["pbx"], c["call"]) for c in calls})
    lettered = {(d["pbx"], d["call"]) for d in decisions if d["event"] == "lettering" and d["result"] == "delivered"}
    in_sql = await rows(sqlite_records_url, "select pbx, call_id from calls where lettering = 'delivered'")
    assert set(in_sql) == lettered
    # No number at rest: the citizen is a keyed hash.
    assert await rows(sqlite_records_url, "select count(*) from calls where party_hash like '+%'") == [(0,)]


# ---------------------------------------------------------------------------- worker -> sends


async def test_a_delivered_postcall_ends_as_a_sends_row(
    redis_url: str, client: Any, store: RecordsStore, sqlite_records_url: str
) -> None:
    env = {**os.environ, "GATEWAY_NUMBER_KEY": KEY, "GATEWAY_DATA_KEY": Sealer.new_key_spec()}
    config = load_config()
    emitter = StreamRecordSink(client)  # the worker's facts, as `gateway worker` hands them over
    emitter.start()
    over = Overrides(queue_namespace="t-records", alimtalk={"sbx": SandboxAlimtalk("sbx")})
    broker, runtime = build_worker(config, environ=env, redis_url=redis_url, overrides=over, records=emitter)
    enqueuer = Enqueuer(broker, config.sealer(env))
    worker = start_worker(broker, threads=1, idle_ms=50)
    key = "city-hall:c77:postcall:" + "a" * 32
    alimtalk = AlimtalkRequest(key, "+821012345678", "HB_POSTCALL_01", (("title", "여권 발급 안내"),))
    try:
        assert await enqueuer.enqueue(
            "postcall", QueuedMessage(key, "city-hall", "c77", "postcall", "+821012345678", "sbx", alimtalk=alimtalk)
        )
        assert await wait_idle(broker, runtime, timeout_s=20)
    finally:
        await asyncio.to_thread(worker.stop)
        enqueuer.close()
    assert await emitter.flush()
    # The provider's delivery report, through the gateway's report intake.
    outbox_store = RedisOutboxStore(connect(redis_url, timeout_s=2.0))
    (reference,) = [r[0] for r in await rows_of_stream(redis_url) if r[1]["key"] == key and r[1]["state"] == "sent"]
    reports = ReportIntake({"sbx": sandbox_parser("s", "sbx")}, outbox_store, records=emitter)
    body = {"reports": [{"reference": reference, "status": "delivered", "at": time.time() + 1}]}
    counts = await reports.handle("sbx", {"X-Sandbox-Signature": "s"}, json.dumps(body).encode())
    assert counts["updated"] == 1
    assert await emitter.flush()
    await emitter.stop()
    await outbox_store.aclose()
    writer = RecordsWriter(client, store, block_ms=50)
    while await writer.run_once():
        pass
    got = await rows(
        sqlite_records_url, "select id, purpose, channel, provider, state, reference, party_hash from sends"
    )
    assert len(got) == 1
    sid, purpose, channel, provider, state, ref, party = got[0]
    assert (sid, purpose, channel, provider, state, ref) == (key, "postcall", "alimtalk", "sbx", "delivered", reference)
    assert party and not party.startswith("+")


async def rows_of_stream(redis_url: str) -> list[tuple[str, dict[str, Any]]]:
    """(reference, fact) of the send facts in the stream."""
    r: Any = redis.Redis.from_url(redis_url)
    try:
        out = []
        for _, fields in r.xrange(RECORDS_STREAM):
            data = msgpack.unpackb(fields[FIELD], raw=False)
            if data.get("t") == "send":
                out.append((str(data.get("reference", "")), data))
        return out
    finally:
        r.close()


# ---------------------------------------------------------------------------- the worker's thread


async def test_the_workers_records_thread_writes_and_reports(redis_url: str, sqlite_records_url: str) -> None:
    records = RecordsThread(redis_url, sqlite_records_url, batch_size=8)
    records.start()
    try:
        for n in range(20):  # from another thread than the records' loop, as the actors do
            records.emitter.record(call(n))
        await until(lambda: records.writer is not None and records.writer.written == 20)
        status = records.status()
        assert status["emitter"]["emitted"] == 20 and status["emitter"]["dropped"] == 0
        assert status["writer"]["written"] == 20 and status["error"] == ""

        class Figures(Collector):
            def collect(self) -> Iterator[Metric]:
                st = records.status()
                yield from records_families(st["emitter"], st["writer"])

        registry = CollectorRegistry()
        registry.register(Figures())
        scraped = generate_latest(registry).decode()
        assert 'gateway_records_facts_total{outcome="emitted"} 20.0' in scraped
        assert 'gateway_records_writer_total{outcome="written"} 20.0' in scraped
        assert "gateway_records_writer_lag " in scraped and "gateway_records_pending 0.0" in scraped
    finally:
        assert await asyncio.to_thread(records.stop, 5.0)
    assert await rows(sqlite_records_url, "select count(*) from calls") == [(20,)]


# ---------------------------------------------------------------------------- the gateway's own path


async def test_the_gateways_calls_reach_sql_and_leave_no_notes_behind(
    redis_url: str, client: Any, store: RecordsStore, sqlite_records_url: str
) -> None:
    """A running gateway (real AMI over TCP, its StreamRecordSink) and the writer: one calls row
    per ended call, and the pipeline's per-call notes are gone once each call is recorded."""
    environ = demo_environ(load_config(), os.environ)
    environ["GATEWAY_NUMBER_KEY"] = KEY
    names = ["answered_mobile", "busy", "landline", "internal", "no_answer"]
    server = AmiServer([Transcript.named(n) for n in names], secret=environ["GATEWAY_AMI_SECRET"], speed="fast")
    sink = Collect()
    gw = await _gateway(server, redis_url, environ, sink, SandboxCarrier())
    try:
        await asyncio.wait_for(server.wait_done(), 30)
        await _until(lambda: len(sink.of("call")) >= 5 and not gw.pipeline._notes, timeout=20)
        assert gw.emitter is not None and await gw.emitter.flush()
        scraped = generate_latest(gw.registry).decode()  # the gateway's /metrics
        assert f'gateway_records_facts_total{{outcome="emitted"}} {float(gw.emitter.emitted)}' in scraped
        assert 'gateway_records_facts_total{outcome="dropped"} 0.0' in scraped
        assert (await gw.health())["records"]["emitted"] == gw.emitter.emitted >= 5
    finally:
        await gw.stop()
        await server.stop()
    writer = RecordsWriter(client, store, block_ms=50)
    while await writer.run_once():
        pass
    calls = sink.of("call")
    got = await rows(sqlite_records_url, "select call_id, disposition, lettering, lettering_reason from calls")
    assert sorted((c, d) for c, d, _, _ in got) == sorted((c["call"], c["disposition"]) for c in calls)
    reasons = {c: (lettering, reason) for c, _, lettering, reason in got}
    for skipped in sink.of("skipped"):
        if skipped["call"] in reasons and reasons[skipped["call"]][0] == "skipped":
            assert reasons[skipped["call"]][1] == skipped["reason"]
    assert ("delivered", "") in reasons.values() and ("skipped", "landline") in reasons.values()


def test_cli_replay_records_the_fallback_chain(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway replay --records`: an iPhone without KakaoTalk (lettering unsupported, Alimtalk
    not reachable, SMS/LMS sent by the gateway) in the calls and sends rows."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    messaging = rules / "messaging.yaml"
    text_ = messaging.read_text(encoding="utf-8").replace("provider_resend: true", "provider_resend: false")
    messaging.write_text(text_, encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_NUMBER_KEY", KEY)
    url = f"sqlite:///{tmp_path / 'replay.sqlite3'}"  # empty: the replay creates the schema
    number = "+821012345678"
    rc = main(
        [
            "replay",
            str(TRANSCRIPTS / "answered_mobile.ami"),
            "--rules",
            str(rules),
            "--json",
            "--records",
            url,
            "--outcome",
            f"{number}=unsupported_device",
            "--messaging-outcome",
            f"{number}=not_kakao_user",
        ]
    )
    assert rc == 0
    decisions = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["event"] for d in decisions].count("call") == 1
    got = asyncio.run(rows(url, "select lettering, call_notice, postcall, disposition from calls"))
    assert got == [("unsupported_device", "queued", "queued", "answered")]
    sends = asyncio.run(rows(url, "select purpose, channel, state, fallback_used, detail from sends order by purpose"))
    assert [(p, c, s, bool(f)) for p, c, s, f, _ in sends] == [
        ("call_notice", "alimtalk", "failed", True),
        ("call_notice_sms", "sms", "sent", False),
        ("postcall", "alimtalk", "failed", True),
        ("postcall_sms", "lms", "sent", False),
    ]
    assert all(d.startswith("not_kakao_user") for p, _, _, _, d in sends if not p.endswith("_sms"))


async def test_the_workers_records_thread_runs_the_daily_purge(redis_url: str, sqlite_records_url: str) -> None:
    """The worker's wiring: the purge scheduler runs on the records thread's loop, with its
    store and Redis, and its figures are in the thread's status (the worker's /health)."""
    from gateway.domain.retention import Retention
    from gateway.records.retention import PurgeScheduler

    old = call(1)  # a call two years back: past the one-year retention
    store = RecordsStore(sqlite_records_url)
    try:
        await store.write([replace_times(old, time.time() - 2 * 365 * 86400), call(2)])
    finally:
        await store.close()
    due = time.time()

    def scheduler(engine: Any, client: Any) -> PurgeScheduler:
        # A clock at the last 03:30 Seoul: the purge is due at once, the next one tomorrow.
        from gateway.domain.retention import next_purge_at

        at = next_purge_at(due - 86400, "03:30")
        reads = iter([at - 1.0])  # the first reading plans `at`; every later one is just past it

        def clock() -> float:
            return next(reads, at + 1.0)

        return PurgeScheduler(engine, client, Retention(), "03:30", clock=clock)

    records = RecordsThread(redis_url, sqlite_records_url, purge=scheduler)
    records.start()
    try:
        await until(lambda: records.purge is not None and records.purge.runs == 1)
        status = records.status()["purge"]
        assert status["last_counts"]["sql:calls"] == 1 and status["last_error"] == ""
    finally:
        assert await asyncio.to_thread(records.stop, 5.0)
    assert await rows(sqlite_records_url, "select count(*) from calls") == [(1,)]
    assert await rows(sqlite_records_url, "select kind, count from purges where store = 'sql' and kind = 'calls'") == [
        ("calls", 1)
    ]


def replace_times(fact: CallFact, started: float) -> CallFact:
    from dataclasses import replace

    return replace(fact, started_at=started, answered_at=None, ended_at=started + 30)
