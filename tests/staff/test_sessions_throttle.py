"""Console sessions and failure throttles on a real Redis (gateway.staff.sessions, .throttle)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.errors import StoreUnavailable
from gateway.infra.rediskeys import console_session_key
from gateway.staff.sessions import RedisSessions
from gateway.staff.throttle import Throttle


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_a_session_is_stored_by_the_hash_of_its_id(client: Any) -> None:
    sessions = RedisSessions(client, idle_s=60, max_s=3600)
    session = await sessions.create(7, ip="10.0.0.5")
    assert len(session.id) >= 43 and len(session.csrf) >= 43 and session.id != session.csrf
    keys = [k.decode() for k in await client.keys("*")]
    assert session.id not in " ".join(keys)
    assert console_session_key(hashlib.sha256(session.id.encode()).hexdigest()) in keys
    stored = await client.hgetall(console_session_key(hashlib.sha256(session.id.encode()).hexdigest()))
    assert session.id.encode() not in b" ".join(stored.values())
    got = await sessions.get(session.id)
    assert got == session
    assert await sessions.get("") is None and await sessions.get("x" * 500) is None
    assert await sessions.get(session.id + "x") is None


async def test_idle_timeout_is_restarted_by_each_request(client: aioredis.Redis) -> None:
    sessions = RedisSessions(client, idle_s=0.6, max_s=3600)
    session = await sessions.create(1, ip="x")
    for _ in range(3):  # 1.2 s in all, never 0.6 s idle
        await asyncio.sleep(0.4)
        assert await sessions.get(session.id) is not None
    await asyncio.sleep(0.9)
    assert await sessions.get(session.id) is None


async def test_max_age_ends_an_active_session(client: aioredis.Redis) -> None:
    sessions = RedisSessions(client, idle_s=60, max_s=1.0)
    session = await sessions.create(1, ip="x")
    await asyncio.sleep(0.5)
    assert await sessions.get(session.id) is not None
    await asyncio.sleep(0.7)
    assert await sessions.get(session.id) is None
    # and it is gone from Redis, not only refused
    assert await client.exists(console_session_key(hashlib.sha256(session.id.encode()).hexdigest())) == 0


async def test_destroy_and_destroy_all(client: aioredis.Redis) -> None:
    sessions = RedisSessions(client, idle_s=60, max_s=3600)
    mine = [await sessions.create(1, ip="x") for _ in range(3)]
    theirs = await sessions.create(2, ip="y")
    await sessions.destroy(mine[0].id)
    assert await sessions.get(mine[0].id) is None
    assert await sessions.destroy_all(1) == 2
    assert all([await sessions.get(s.id) is None for s in mine])
    assert await sessions.get(theirs.id) is not None
    assert await sessions.destroy_all(1) == 0


async def test_redis_down_is_store_unavailable() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(StoreUnavailable):
        await RedisSessions(dead, idle_s=60, max_s=60).create(1, ip="x")
    with pytest.raises(StoreUnavailable):
        await Throttle(dead).blocked("login-ip:x", 5, 60)
    await dead.aclose()


async def test_throttle_counts_failures_per_scope_and_window(client: aioredis.Redis) -> None:
    throttle = Throttle(client)
    for n in range(1, 4):
        assert not await throttle.blocked("login-ip:10.0.0.1", 3, 1.0)
        assert await throttle.fail("login-ip:10.0.0.1", 1.0) == n
    assert await throttle.blocked("login-ip:10.0.0.1", 3, 1.0)
    assert not await throttle.blocked("login-ip:10.0.0.2", 3, 1.0)  # another address
    await asyncio.sleep(1.1)  # the next window
    assert not await throttle.blocked("login-ip:10.0.0.1", 3, 1.0)
    assert await throttle.allow("token-ip:a", 2, 60) and await throttle.allow("token-ip:a", 2, 60)
    assert not await throttle.allow("token-ip:a", 2, 60)
