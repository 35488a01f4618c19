"""A citizen's thread in the records store: received (queue, rule, day type, after hours, sealed
text), automatically replied, claimed, answered and closed; and the staff API's close route.

Real parts: the gateway's HTTP edge over TCP, an in-process queue worker, a private
redis-server, a SQLite file; the facts take the production path (emitters, the Redis stream
`gw:records`, the writer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession
from sqlalchemy import text

from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.gateway import Gateway, Overrides
from gateway.app.httpapps import make_app
from gateway.app.worker import build_worker
from gateway.infra.config import load_config
from gateway.infra.http import HttpServer
from gateway.messaging.workers import start_worker, wait_idle
from gateway.outbox.store import connect
from gateway.records.emitter import StreamRecordSink
from gateway.records.store import RecordsStore
from gateway.records.writer import RecordsWriter
from tests.conftest import RULES
from tests.integration.test_intake import ENV, Collect, Site, seoul, sms
from tests.support.staff import issue_tokens

pytestmark = pytest.mark.usefixtures("env")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, sqlite_records_url: str) -> dict[str, str]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    return {**ENV, "REDIS_URL": redis_url, "GATEWAY_RECORDS_URL": sqlite_records_url}


class RecordedSite(Site):
    """The intake test site, its facts written into a records store by a real writer."""

    store: RecordsStore
    writer: RecordsWriter
    worker_records: StreamRecordSink
    client: Any

    async def written(self) -> None:
        """Everything recorded so far is in SQL (the worker's and the gateway's facts)."""
        assert await wait_idle(self.broker, self.runtime, timeout_s=10)
        assert self.gateway.emitter is not None
        assert await self.gateway.emitter.flush() and await self.worker_records.flush()
        while await self.writer.run_once():
            pass

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        async with self.store.engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql))).all()]


@pytest.fixture
async def site(env: dict[str, str], redis_url: str, sqlite_records_url: str) -> AsyncIterator[RecordedSite]:
    config = load_config()
    sms_provider = SandboxSms("sandbox-sms")
    over = Overrides(
        redis_url=redis_url,
        rules_dir=RULES,
        queue_namespace="t-records-intake",
        alimtalk={"sandbox-alimtalk": SandboxAlimtalk("sandbox-alimtalk")},
        sms={"sandbox-sms": sms_provider},
    )
    gateway = Gateway(config, Collect(), environ=env, overrides=over)
    assert gateway.emitter is not None
    gateway.emitter.start()  # (what `start` does besides connecting the PBXes, which are not here)
    client = connect(redis_url, timeout_s=5.0)
    worker_records = StreamRecordSink(client)
    worker_records.start()
    broker, runtime = build_worker(config, environ=env, redis_url=redis_url, overrides=over, records=worker_records)
    worker = start_worker(broker, threads=2, idle_ms=50)
    http = HttpServer(make_app(gateway.health, gateway.reports, gateway.http_routes), "127.0.0.1", 0)
    host, port = await http.start()
    tokens = await issue_tokens(sqlite_records_url, env["GATEWAY_NUMBER_KEY"])  # kim and lee
    s = RecordedSite(
        gateway,
        http,
        f"http://{host}:{port}",
        sms_provider,
        worker=worker,
        runtime=runtime,
        broker=broker,
        tokens=tokens,
    )
    s.store = RecordsStore(sqlite_records_url)
    s.writer = RecordsWriter(client, s.store, block_ms=50)
    s.worker_records, s.client = worker_records, client
    yield s
    await http.stop()
    await asyncio.to_thread(worker.stop)
    await worker_records.stop()
    await gateway.stop()
    await client.aclose()
    await s.store.close()


async def test_a_threads_life_in_the_records(site: RecordedSite) -> None:
    received = seoul("2026-11-24T10:00:00")  # a Tuesday, office hours
    async with ClientSession() as session:
        status, body = await site.post(session, sms("life-1", "소음 민원입니다", received, to="031-900-2100"))
        assert status == 200 and body["status"] == "accepted"
        tid = body["thread"]
        status, _ = await site.post(session, sms("life-1", "소음 민원입니다", received, to="031-900-2100"))
        assert status == 200  # the provider's retry: a duplicate, not a second message
        assert await wait_idle(site.broker, site.runtime, timeout_s=10)  # the automatic reply
        status, _ = await site.api(session, "POST", f"/api/threads/{tid}/claim", {"staff": "kim"})
        assert status == 200
        status, _ = await site.api(session, "POST", f"/api/threads/{tid}/claim", {"staff": "kim"})
        assert status == 200  # a double click: claimed once
        status, result = await site.api(
            session, "POST", f"/api/threads/{tid}/reply", {"text": "확인했습니다", "staff": "kim"}
        )
        assert status == 202 and result["result"] == "queued"
        status, closed = await site.api(session, "POST", f"/api/threads/{tid}/close", {"staff": "kim"})
        assert status == 200 and closed == {"closed": True, "already": False}
        status, closed = await site.api(session, "POST", f"/api/threads/{tid}/close", {"staff": "kim"})
        assert status == 200 and closed == {"closed": True, "already": True}
    await site.written()
    kinds = await site.rows(f"select kind, staff from thread_events where thread = '{tid}' order by at")
    assert [k for k, _ in kinds] == ["received", "auto_replied", "claimed", "answered", "closed"]
    assert {s for k, s in kinds if k in ("claimed", "answered", "closed")} == {"kim"}
    ((queue, rule, day_type, after, party, sealed, auto, first, closed_at),) = await site.rows(
        "select queue, rule, day_type, after_hours, party_hash, sealed_text, auto_reply, first_response_at,"
        f" closed_at from messages where thread = '{tid}'"
    )
    assert queue and rule and day_type == "weekday" and not after
    assert party and not party.startswith("+")
    assert "소음" not in sealed and load_config().sealer(ENV).open(sealed, tid.encode()) == "소음 민원입니다"
    assert auto == "queued" and first is not None and closed_at is not None
    # The answer's text is sealed too.
    ((answer,),) = await site.rows(
        f"select sealed_text from thread_events where thread = '{tid}' and kind = 'answered'"
    )
    assert "확인" not in answer and answer
    # The send of the answer (an SMS) and of the automatic reply have their rows.
    sends = await site.rows("select purpose, channel, state from sends order by purpose")
    assert ("reply", "sms", "sent") in sends and any(p == "auto_reply" for p, _, _ in sends)


async def test_after_hours_weekends_and_holidays(site: RecordedSite) -> None:
    async with ClientSession() as session:
        for n, (when, sender) in enumerate(
            [
                ("2026-11-24T21:30:00", "010-2000-0001"),  # a weekday evening
                ("2026-11-28T11:00:00", "010-2000-0002"),  # a Saturday
                ("2026-09-25T11:00:00", "010-2000-0003"),  # 추석 (a holiday on a Friday)
            ]
        ):
            status, _ = await site.post(session, sms(f"ah-{n}", "가로등 고장입니다", seoul(when), sender=sender))
            assert status == 200
    await site.written()
    got = await site.rows("select day_type, after_hours from messages order by received_at")
    assert [(d, bool(a)) for d, a in got] == [("holiday", True), ("weekday", True), ("weekend", True)]


async def test_the_close_route(site: RecordedSite) -> None:
    async with ClientSession() as session:
        _, body = await site.post(session, sms("close-1", "문의드립니다", seoul("2026-11-24T10:00:00")))
        tid = body["thread"]
        status, _ = await site.api(session, "POST", f"/api/threads/{tid}/close", {"staff": "kim"}, token="")
        assert status == 401
        status, _ = await site.api(session, "POST", f"/api/threads/{tid}/close", {"staff": "kim"}, token="wrong")
        assert status == 401
        status, err = await site.api(session, "POST", "/api/threads/t00000000000000000000/close", {"staff": "kim"})
        assert status == 404 and err["error"]
        status, _ = await site.api(session, "POST", f"/api/threads/{tid}/close", {"staff": "lee"})
        assert status == 400  # kim's token cannot close as lee
        status, closed = await site.api(session, "POST", f"/api/threads/{tid}/close", {}, as_="lee")
        assert status == 200 and closed["closed"]
        status, thread = await site.api(session, "GET", f"/api/threads/{tid}")
        assert status == 200 and thread["closed_by"] == "lee" and thread["closed_at"] > 0
        # A new message from the citizen re-opens the thread: it can be closed again.
        await site.post(session, sms("close-2", "추가 문의입니다", seoul("2026-11-24T11:00:00")))
        status, thread = await site.api(session, "GET", f"/api/threads/{tid}")
        assert thread["closed_at"] is None and thread["closed_by"] is None
        status, closed = await site.api(session, "POST", f"/api/threads/{tid}/close", {}, as_="lee")
        assert status == 200 and closed == {"closed": True, "already": False}
    await site.written()
    health = await site.gateway.health()
    assert health["records"]["emitted"] >= 4 and health["records"]["pending"] == 0
    assert health["records"]["dropped"] == 0 and health["records"]["errors"] == 0
    assert await site.rows(f"select count(*) from thread_events where thread = '{tid}' and kind = 'closed'") == [(2,)]
    assert await site.rows("select count(*) from messages where closed_at is not null") == [(2,)]
