"""Durable means replicated (`redis.min_replicas_ack`): a primary and one real replica.

With `min_replicas_ack: 1` a citizen's text is answered 2xx only once the replica holds it; a
replica that stops acknowledging (SIGSTOP) turns the accept into a 503 within about the timeout,
counted in /metrics, and the provider's retry after SIGCONT is a 2xx duplicate with the message
stored once. An opt-out and a lettering claim wait the same way (a claim fails closed)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession

from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.gateway import Gateway, Overrides
from gateway.app.httpapps import make_app
from gateway.domain.inputs import message_key
from gateway.errors import StoreUnavailable
from gateway.infra.config import load_config
from gateway.infra.crypto import Sealer, sign
from gateway.infra.http import HttpServer
from gateway.infra.rediskeys import inbound_key, thread_messages_key
from gateway.infra.wire import ReplicaAck, Wire
from gateway.outbox.store import RedisOutboxStore
from gateway.sim.redisproc import RedisProcess
from tests.conftest import RULES

ENV = {
    "GATEWAY_NUMBER_KEY": "test-number-key-0123456789",
    "GATEWAY_DATA_KEY": Sealer.new_key_spec(),
    "GATEWAY_INBOUND_SECRET": "inbound-secret",
    "GATEWAY_AMI_SECRET": "x",
    "GATEWAY_WEBHOOK_SECRET": "w",
}
PUBLIC_URL = "http://127.0.0.1:8080/webhooks/sms/sandbox-sms"
TIMEOUT_MS = 500


class Pair:
    """A primary and a replica of it, the replica synchronised before the test starts."""

    def __init__(self) -> None:
        # (no 5 s wait for more replicas before the first full sync)
        self.primary = RedisProcess(extra_args=["--repl-diskless-sync-delay", "0"]).start()
        self.replica = RedisProcess(extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)]).start()

    async def synced(self, timeout_s: float = 15.0) -> None:
        client = aioredis.Redis(port=self.primary.port)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                info = await client.info("replication")
                if info.get("connected_slaves") == 1 and "online" in str(info.get("slave0", "")):
                    # and acknowledging: a write right after the full sync may wait for the
                    # replica to finish loading it
                    await client.set("probe", "1")
                    if await client.wait(1, 100) == 1:
                        return
                await asyncio.sleep(0.05)
            raise AssertionError("the replica did not come online")
        finally:
            await client.aclose()

    def pause(self) -> None:
        assert self.replica.proc is not None
        os.kill(self.replica.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.replica.proc is not None
        os.kill(self.replica.proc.pid, signal.SIGCONT)

    def cleanup(self) -> None:
        self.resume()
        self.replica.cleanup()
        self.primary.cleanup()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair()
    try:
        await p.synced()
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    yield dict(os.environ)


class Discard:
    def decision(self, record: Any) -> None:
        pass


class Edge:
    def __init__(self, gateway: Gateway, http: HttpServer, base: str) -> None:
        self.gateway, self.http, self.base = gateway, http, base

    async def post(self, session: ClientSession, fields: dict[str, str]) -> tuple[int, dict[str, Any]]:
        body = json.dumps(fields, ensure_ascii=False).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Signature-Timestamp": ts,
            "X-Signature": sign("inbound-secret", ts, PUBLIC_URL, body),
        }
        async with session.post(f"{self.base}/webhooks/sms/sandbox-sms", data=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def metrics(self, session: ClientSession) -> str:
        async with session.get(f"{self.base}/metrics") as resp:
            return await resp.text()


async def _edge(env: dict[str, str], redis_url: str, replicas: int) -> Edge:
    config = dataclasses.replace(load_config(), min_replicas_ack=replicas, replica_ack_timeout_ms=TIMEOUT_MS)
    over = Overrides(
        redis_url=redis_url,
        rules_dir=RULES,
        queue_namespace="t-replica-ack",
        alimtalk={"sandbox-alimtalk": SandboxAlimtalk("sandbox-alimtalk")},
        sms={"sandbox-sms": SandboxSms("sandbox-sms")},
    )
    gateway = Gateway(config, Discard(), environ=env, overrides=over)
    http = HttpServer(make_app(gateway.health, gateway.reports, gateway.http_routes), "127.0.0.1", 0)
    host, port = await http.start()
    return Edge(gateway, http, f"http://{host}:{port}")


@pytest.fixture
async def edge(env: dict[str, str], pair: Pair) -> AsyncIterator[Edge]:
    e = await _edge(env, pair.primary.url, 1)
    yield e
    await e.http.stop()
    await e.gateway.stop()


def sms(message_id: str, text: str = "가로등 고장입니다", sender: str = "010-1234-5678") -> dict[str, str]:
    return {
        "message_id": message_id,
        "from": sender,
        "to": "031-900-2000",
        "text": text,
        "received_at": f"{time.time():.3f}",
    }


async def _ping_later(wire: Wire) -> Any:
    await asyncio.sleep(0.1)  # after the accept's WAIT was written
    return await wire.execute("PING")


async def _timed_ping(wire: Wire) -> float:
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await wire.execute("PING")
    return time.monotonic() - started


def timeouts(metrics: str, what: str) -> float:
    prefix = f'gateway_redis_replica_ack_timeouts_total{{what="{what}"}} '
    return next(float(line[len(prefix) :]) for line in metrics.splitlines() if line.startswith(prefix))


async def test_accept_waits_for_the_replica_and_503s_without_it(edge: Edge, pair: Pair) -> None:
    replica = aioredis.Redis(port=pair.replica.port)
    try:
        async with ClientSession() as session:
            status, body = await edge.post(session, sms("ra-1"))
            assert (status, body.get("status")) == (200, "accepted"), body
            # Acknowledged means on the replica already: read there right after the 2xx.
            assert await replica.exists(inbound_key("sandbox-sms", message_key("ra-1"))) == 1
            assert timeouts(await edge.metrics(session), "inbound") == 0

            pair.pause()
            started = time.monotonic()
            replicated = edge.gateway.replicated_wire
            assert replicated is not None
            (status, _), pong, main_ping_s = await asyncio.gather(
                edge.post(session, sms("ra-2")),
                # A command queued behind the WAIT (0.25 s command timeout) waits for it and is
                # answered: the held connection is not mistaken for a dead one ...
                _ping_later(replicated),
                # ... and the real-time connection (heartbeats, settlements) is not held at all.
                _timed_ping(edge.gateway.wire),
            )
            took = time.monotonic() - started
            assert status == 503  # the provider retries
            assert TIMEOUT_MS / 1000 * 0.8 <= took < 5.0
            assert pong == b"PONG" and replicated.events["timeouts"] == 0
            assert main_ping_s < TIMEOUT_MS / 1000 / 2
            assert timeouts(await edge.metrics(session), "inbound") == 1

            pair.resume()
            status, body = await edge.post(session, sms("ra-2"))  # the provider's retry
            assert (status, body["status"]) == (200, "duplicate")
            assert await replica.exists(inbound_key("sandbox-sms", message_key("ra-2"))) == 1
            thread = body["thread"]
        primary: Any = aioredis.Redis(port=pair.primary.port)
        try:
            entries = await primary.xrange(thread_messages_key(thread))
        finally:
            await primary.aclose()
        ids = [f[b"message_id"] for _, f in entries if f.get(b"dir") == b"in"]
        assert ids.count(b"ra-2") == 1 and ids.count(b"ra-1") == 1  # stored once each
    finally:
        await replica.aclose()


async def test_an_opt_out_waits_for_the_replica(edge: Edge, pair: Pair) -> None:
    async with ClientSession() as session:
        pair.pause()
        status, _ = await edge.post(session, sms("oo-1", text="수신거부", sender="010-5555-6666"))
        assert status == 503
        assert timeouts(await edge.metrics(session), "optout") == 1
        pair.resume()
        status, body = await edge.post(session, sms("oo-1", text="수신거부", sender="010-5555-6666"))
        assert status == 200 and body["status"] == "accepted"
    registry = edge.gateway.intake.optouts
    assert await registry.status("+821055556666") is not None
    replica = aioredis.Redis(port=pair.replica.port)
    try:
        assert await replica.xlen(registry.AUDIT) == 2  # the refused attempt's record stays (idempotent)
    finally:
        await replica.aclose()


async def test_a_staff_answer_waits_for_the_replica_and_is_queued_once(edge: Edge, pair: Pair) -> None:
    async with ClientSession() as session:
        status, body = await edge.post(session, sms("sa-1", sender="010-7777-8888"))
        assert status == 200
    tid, intake = body["thread"], edge.gateway.intake
    pair.pause()
    assert await intake.reply(tid, "확인했습니다", "kim") == "store_unavailable"  # the staff API: 503
    assert edge.gateway.ack.timeouts.get("claim") == 1
    pair.resume()
    # The console's retry: the answer was queued on the primary already, not queued again.
    assert await intake.reply(tid, "확인했습니다", "kim") == "duplicate"
    assert await intake.reply(tid, "확인했습니다", "kim") == "duplicate"
    primary: Any = aioredis.Redis(port=pair.primary.port)
    try:
        entries = await primary.xrange(thread_messages_key(tid))
    finally:
        await primary.aclose()
    assert [f.get(b"dir") for _, f in entries].count(b"out") == 1


async def test_a_claim_fails_closed_without_the_replica(pair: Pair) -> None:
    ack = ReplicaAck(1, TIMEOUT_MS)
    client = aioredis.Redis(port=pair.primary.port)
    store = RedisOutboxStore(client, Wire.from_url(pair.primary.url), ack=ack)
    call = {"recipient_hash": "h1", "ttl_s": 60.0, "rate_limit": 100, "rate_window_s": 60}
    try:
        assert await store.claim(dedupe_key="call-1", **call) == "ok"  # type: ignore[arg-type]
        pair.pause()
        with pytest.raises(StoreUnavailable):
            await store.claim(dedupe_key="call-2", **call)  # type: ignore[arg-type]
        assert ack.timeouts == {"claim": 1}
        # Writes right after a shortfall wait a fifth of the timeout, not the whole of it (else
        # they would queue one behind another on the connection while the replica is away) ...
        assert ack.degraded and ack.command == ("WAIT", 1, TIMEOUT_MS // 5)
        with pytest.raises(StoreUnavailable):
            await store.claim(dedupe_key="call-3", **call)  # type: ignore[arg-type]
        assert ack.timeouts == {"claim": 2}
        pair.resume()
        # The claim stayed written: a later attempt finds it taken (never lettered twice).
        assert await store.claim(dedupe_key="call-2", **call) == "duplicate"  # type: ignore[arg-type]
        # ... and an acknowledged write ends that at once.
        assert not ack.degraded and ack.command == ("WAIT", 1, TIMEOUT_MS)
    finally:
        await store.aclose()


async def test_without_replicas_configured_nothing_is_waited_for(env: dict[str, str], pair: Pair) -> None:
    assert load_config().min_replicas_ack == 0  # the default: off
    e = await _edge(env, pair.primary.url, 0)
    try:
        pair.pause()  # a stopped replica does not matter then
        async with ClientSession() as session:
            status, body = await e.post(session, sms("z-1"))
            assert (status, body["status"]) == (200, "accepted")
            assert timeouts(await e.metrics(session), "inbound") == 0
    finally:
        await e.http.stop()
        await e.gateway.stop()
