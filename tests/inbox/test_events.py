"""The console's live events (`gateway.inbox.desk.EventHub`) on a private, real redis-server:
fan-out to 50 subscribers, a stalled subscriber, a Redis restart, and the events the intake's
steps publish."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.inbox.desk import EventHub, Subscription
from gateway.infra.rediskeys import CONSOLE_EVENTS
from gateway.sim.redisproc import RedisProcess


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


@pytest.fixture
async def hub(private_redis: RedisProcess) -> AsyncIterator[EventHub]:
    h = EventHub(private_redis.url, queue_size=8, retry_s=0.1)
    await h.start()
    assert await h.wait_connected(5)
    yield h
    await h.stop()


async def publish(url: str, event: dict[str, Any]) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.publish(CONSOLE_EVENTS, json.dumps(event)))
    finally:
        await client.aclose()


async def next_event(sub: Subscription, timeout_s: float = 5.0) -> dict[str, Any]:
    return await asyncio.wait_for(anext(sub), timeout_s)


async def test_fifty_subscribers_all_get_an_event(hub: EventHub, private_redis: RedisProcess) -> None:
    subs = [hub.subscribe() for _ in range(50)]
    assert await publish(private_redis.url, {"k": "message", "q": "duty", "t": "t1", "at": 1.0}) == 1
    got = await asyncio.gather(*(next_event(s) for s in subs))
    assert got == [{"k": "message", "q": "duty", "t": "t1", "at": 1.0}] * 50
    hub.unsubscribe(subs[0])
    assert hub.subscribers == 49
    with pytest.raises(StopAsyncIteration):
        await anext(subs[0])


async def test_a_stalled_subscriber_gets_resync_and_blocks_nobody(hub: EventHub, private_redis: RedisProcess) -> None:
    stalled, live = hub.subscribe(), hub.subscribe()
    for i in range(20):  # more than the queue holds (8)
        await publish(private_redis.url, {"k": "message", "q": "duty", "t": f"t{i}", "at": float(i)})
        assert (await next_event(live))["t"] == f"t{i}"  # the live one keeps up all along
    seen = []
    while not stalled._queue.empty():
        seen.append(await next_event(stalled))
    assert {"k": "resync"} in seen and len(seen) <= 8 and stalled.dropped > 0
    assert seen[-1]["t"] == "t19"  # after the resync, the newest events again


async def test_the_hub_resubscribes_after_redis_restarts(hub: EventHub, private_redis: RedisProcess) -> None:
    sub = hub.subscribe()
    private_redis.kill()
    # (the hub notices: its subscription fails and it retries until Redis is back)
    for _ in range(100):
        if not hub.connected:
            break
        await asyncio.sleep(0.05)
    assert not hub.connected
    private_redis.start()
    assert await next_event(sub, 10) == {"k": "resync"}
    assert hub.connected and hub.reconnects == 1
    assert await publish(private_redis.url, {"k": "claim", "q": "duty", "t": "t9", "at": 2.0}) == 1
    assert await next_event(sub) == {"k": "claim", "q": "duty", "t": "t9", "at": 2.0}


async def test_junk_on_the_channel_is_ignored(hub: EventHub, private_redis: RedisProcess) -> None:
    sub = hub.subscribe()
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        await client.publish(CONSOLE_EVENTS, b"not json")
        await client.publish(CONSOLE_EVENTS, b"[1, 2]")
        await client.publish(CONSOLE_EVENTS, json.dumps({"k": "note", "q": "duty", "t": "t1", "at": 3.0}))
    finally:
        await client.aclose()
    assert (await next_event(sub))["k"] == "note"
