"""Lettering leases tied to the claiming gateway's liveness (issue #17 item 3), on a real
redis-server: the claim script's answers, the guard's watch of a peer's lease while the phone
rings, the idempotency key the HTTP carrier adapter sends and the fake carrier's count of
letterings per key. The two-process test is tests/system/test_claim_liveness.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from adapters.carrier_http import PROFILES, HttpCarrier, lettering_key
from adapters.sandbox import SandboxCarrier
from gateway.domain.models import LetteringRequest, LetteringResult
from gateway.infra.rediskeys import alive_key, dedupe_key, optout_key, rate_key
from gateway.outbox.guard import Outbox, Outgoing, Verdict
from gateway.outbox.liveness import Liveness
from gateway.outbox.store import RedisOutboxStore, connect, number_hash
from gateway.sim.fake_carrier import FakeCarrierServer

CITIZEN = "+821012345678"
HASH_KEY = b"k" * 16


def _request(call_id: str = "1795339616.0", to: str = CITIZEN, pbx: str = "city-hall") -> LetteringRequest:
    return LetteringRequest(call_id, to, "+82319002000", "한빛시청", "민원과", "민원 안내", "2001", pbx)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisOutboxStore]:
    s = RedisOutboxStore(connect(redis_url, timeout_s=2.0))
    yield s
    await s.aclose()


RECIPIENT = number_hash(HASH_KEY, CITIZEN)


async def lease(store: RedisOutboxStore, key: str, owner: str, *, peek: bool = False) -> str:
    """A lettering claim as gateway instance `owner` makes it (rate limit 3 an hour)."""
    return await store.claim_lease(
        dedupe_key=key, recipient_hash=RECIPIENT, ttl_s=30.0, rate_limit=3, rate_window_s=3600, owner=owner, peek=peek
    )


async def test_a_live_owners_lease_is_respected_a_dead_ones_taken_over(store: RedisOutboxStore, redis_url: str) -> None:
    key = "city-hall:c1:lettering:" + RECIPIENT
    await store.heartbeat("gw-a", 5000)
    assert await lease(store, key, "gw-a") == "ok"
    client: Any = redis.Redis.from_url(redis_url)  # redis-py types replies as a union of everything
    try:
        assert client.get(dedupe_key(key)).decode().endswith(":gw-a")
        # A live owner: B waits, told how long A's heartbeat lives unless renewed.
        answer = await lease(store, key, "gw-b")
        assert answer.startswith("leased:") and 0 < int(answer.split(":")[1]) <= 5000
        assert await lease(store, key, "gw-b", peek=True) == "leased"
        # A dies: its heartbeat is gone, B takes the lease over (the rate limit not counted twice).
        await store.forget("gw-a")
        assert await lease(store, key, "gw-a", peek=True) == "owner_died"
        assert await lease(store, key, "gw-b") == "taken_over"
        assert client.get(dedupe_key(key)).decode().endswith(":gw-b")
        rates = [k for k in client.scan_iter(rate_key(RECIPIENT, "*"))]
        assert [int(client.get(k)) for k in rates] == [1]
        # B lives: A (back) must not take it; once settled it is a duplicate for everyone.
        await store.heartbeat("gw-b", 5000)
        assert (await lease(store, key, "gw-a")).startswith("leased:")
        await store.settle(dedupe_key=key, ttl_s=3600)
        assert await lease(store, key, "gw-a") == "duplicate"
        assert await lease(store, key, "gw-a", peek=True) == "duplicate"
        # A lease naming no instance (an earlier release) is only freed by its lapse.
        old = "city-hall:c2:lettering:" + RECIPIENT
        assert (
            await store.claim(
                dedupe_key=old, recipient_hash=RECIPIENT, ttl_s=30.0, rate_limit=3, rate_window_s=3600, lease=True
            )
            == "ok"
        )
        assert await lease(store, old, "gw-b") == "leased"
        # A citizen who opted out meanwhile is not lettered by the taker-over.
        third = "city-hall:c3:lettering:" + RECIPIENT
        assert await lease(store, third, "gw-dead") == "ok"
        client.set(optout_key(RECIPIENT), "1")
        assert await lease(store, third, "gw-b") == "opted_out"
    finally:
        client.close()


async def test_liveness_beats_and_forgets(store: RedisOutboxStore, redis_url: str) -> None:
    liveness = Liveness(store, every_s=0.05, ttl_s=0.3)
    assert not liveness.beating
    liveness.start()
    client: Any = redis.Redis.from_url(redis_url)  # redis-py types replies as a union of everything
    try:
        await asyncio.sleep(0.2)
        assert liveness.beating and liveness.beats >= 3
        assert 0 < client.pttl(alive_key(liveness.instance)) <= 300
        await liveness.stop()
        assert not liveness.beating
        assert client.exists(alive_key(liveness.instance)) == 0
    finally:
        client.close()


def _outbox(store: RedisOutboxStore, instance: str, carrier: SandboxCarrier) -> tuple[Outbox, Liveness]:
    liveness = Liveness(store, instance=instance)
    return Outbox(store, {"sandbox": carrier}, hash_key=HASH_KEY, liveness=liveness), liveness


def _outgoing(call_id: str, lease_s: float = 2.8) -> Outgoing:
    return Outgoing("city-hall", call_id, "lettering", CITIZEN, "sandbox", _request(call_id), lease_s=lease_s)


@pytest.mark.parametrize("peer", ["settles", "dies", "dies_after_the_ring"])
async def test_the_guard_watches_a_peers_lease_while_the_phone_rings(peer: str, store: RedisOutboxStore) -> None:
    """Gateway B finds gateway A's lease on a ringing call: A settles it (duplicate), or dies and
    B letters the call within about the heartbeat TTL, or the phone stops ringing first after A
    died: reported `owner_died`, never `duplicate`."""
    carrier_a, carrier_b = SandboxCarrier(), SandboxCarrier()
    outbox_a, a = _outbox(store, "gw-a", carrier_a)
    outbox_b, b = _outbox(store, "gw-b", carrier_b)
    await a.beat()
    await b.beat()
    a.start()
    b.start()
    message = _outgoing(f"call-{peer}")
    key = outbox_a.key_for("city-hall", message.call_id, "lettering", CITIZEN)
    # A's claim, taken as A's guard takes it, but A never asks the carrier (it is about to die or settle).
    assert await lease(store, key, "gw-a") == "ok"
    ringing = asyncio.Event()
    ringing.set()
    loop = asyncio.get_running_loop()
    try:
        watch = asyncio.ensure_future(outbox_b.deliver(message, ringing=ringing.is_set))
        await asyncio.sleep(0.3)
        assert not watch.done()
        started = loop.time()
        if peer == "settles":
            await store.settle(dedupe_key=key, ttl_s=3600)
        else:
            await a.stop()  # as a SIGKILL, but without waiting the TTL out: the heartbeat is gone now
        if peer == "dies_after_the_ring":
            ringing.clear()
        delivery = await asyncio.wait_for(watch, 5)
        took = loop.time() - started
    finally:
        await a.stop()
        await b.stop()
    if peer == "settles":
        assert delivery.verdict is Verdict.DUPLICATE and carrier_b.requests == []
    elif peer == "dies":
        assert delivery.verdict is Verdict.SENT and [r.call_id for r in carrier_b.requests] == [message.call_id]
        assert outbox_b.counts.get("taken_over") == 1
        assert took < 1.0  # the heartbeat's TTL (0.7 s) bounds the wait; here it was removed at once
    else:
        assert delivery.verdict is Verdict.OWNER_DIED and carrier_b.requests == []
        assert outbox_b.counts.get("owner_died") == 1
    assert carrier_a.requests == []


async def test_the_adapter_sends_one_key_per_call_and_the_fake_carrier_letters_it_once() -> None:
    assert lettering_key(_request()) == lettering_key(_request())  # any gateway, any time
    assert lettering_key(_request()) != lettering_key(_request(to="+821098765432"))
    assert lettering_key(_request()) != lettering_key(_request(pbx="annex"))
    profile = PROFILES["kt"]
    async with FakeCarrierServer(profile, "secret", slow_s=0.5) as server:
        server.behave(CITIZEN, "slow")
        first = HttpCarrier("kt", profile, server.base_url, "secret", deadline_s=0.2)
        second = HttpCarrier("kt", profile, server.base_url, "secret", deadline_s=0.2)
        try:
            # The first gateway's request is in flight (slow) when the second asks for the same call.
            late = await first.letter(_request())
            again = await second.letter(_request())
            other = await second.letter(_request(call_id="1795339617.0"))
        finally:
            await first.close()
            await second.close()
    assert late.result is LetteringResult.TEMPORARY_ERROR  # past its deadline; the carrier lettered anyway
    assert again.result is LetteringResult.DELIVERED  # answered at once with the first request's result
    assert other.result is LetteringResult.TEMPORARY_ERROR  # another call: a lettering of its own (slow)
    keys = [r.idempotency_key for r in server.requests]
    assert keys[0] == keys[1] == lettering_key(_request()) and keys[2] != keys[0]
    assert [r.replayed for r in server.requests] == [False, True, False]
    assert server.requests[0].headers.get(profile.idempotency_header) == keys[0]
    assert dict(server.deliveries) == {keys[0]: 1, keys[2]: 1}
