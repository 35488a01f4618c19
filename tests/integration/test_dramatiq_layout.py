"""dramatiq's private Redis layout, as three scripts of ours write into it.

The guard's `claim.lua` (claim_then), the intake's `accept.lua` and the enqueuer's
`enqueue.lua` put a job exactly where `RedisBroker.enqueue` puts it (dispatch.lua's "enqueue":
HSET `<ns>:<queue>.msgs` id -> encoded message, RPUSH `<ns>:<queue>` id), without going
through dramatiq. That layout is dramatiq's internal business, so `pyproject.toml` pins dramatiq
to one minor version; this test is what a dramatiq upgrade must pass: the same key names and
types, the hash field is the list entry is the message's `redis_message_id`, the same encoding,
and a real dramatiq worker runs a job our script queued.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
import redis.asyncio as aioredis

from gateway.inbox import intake
from gateway.infra.crypto import Sealer
from gateway.infra.rediskeys import NONE_KEY, heartbeats_key, queue_key, queue_messages_key
from gateway.infra.wire import Wire
from gateway.messaging.jobs import Enqueuer, MsgpackEncoder, actor_name, actor_options, make_broker
from gateway.outbox.store import RedisOutboxStore, connect

PAYLOAD = {"v": 1, "thread": "t1", "text": "sealed elsewhere"}

Put = Callable[[Enqueuer, float], Awaitable[None]]


@pytest.fixture
def sync(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _layout(client: Any, namespace: str) -> dict[str, Any]:
    """Every key in `namespace` (dramatiq's own heartbeat aside) with its type and contents,
    the namespace written as `<ns>` so that two namespaces compare."""
    out: dict[str, Any] = {}
    for raw in sorted(client.scan_iter(f"{namespace}:*")):
        key = raw.decode()
        if key == heartbeats_key(namespace):
            continue  # dispatch.lua's preamble beats for the enqueuing broker; our scripts do not (documented)
        kind = client.type(key).decode()
        name = "<ns>" + key.removeprefix(namespace)
        if kind == "list":
            out[name] = (kind, [v.decode() for v in client.lrange(key, 0, -1)])
        elif kind == "hash":
            out[name] = (kind, {k.decode(): v for k, v in client.hgetall(key).items()})
        else:
            out[name] = (kind, None)
    return out


def _shape(layout: dict[str, Any]) -> dict[str, Any]:
    """What must match between dramatiq's enqueue and ours: key names and types, the list
    entries being the hash fields being each message's `redis_message_id`, and the encoded
    message's fields, options and types (ids and times differ)."""
    shape: dict[str, Any] = {}
    for name, (kind, value) in layout.items():
        if kind == "list":
            msgs = layout[name + ".msgs"][1]
            assert value == list(msgs), f"{name}: list entries are not the hash fields"
            shape[name] = (kind, len(value))
        elif kind == "hash":
            messages = []
            for field, data in value.items():
                decoded = MsgpackEncoder().decode(data)
                assert decoded["options"]["redis_message_id"] == field, name
                message = dramatiq.Message.decode(data)  # dramatiq's own decoding of our bytes
                assert message.options["redis_message_id"] == field
                messages.append(
                    (
                        sorted((k, type(v).__name__) for k, v in decoded.items()),
                        sorted(decoded["options"]),
                        decoded["queue_name"],
                        decoded["actor_name"],
                        decoded["args"],
                    )
                )
            shape[name] = (kind, messages)
        else:
            shape[name] = (kind, None)
    return shape


def _dramatiq_enqueue(redis_url: str, namespace: str) -> None:
    broker = make_broker(redis_url, namespace=namespace)
    for delay in (None, 60_000):
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name="sms", actor_name=actor_name("sms"), args=(PAYLOAD,), kwargs={}, options=actor_options("sms")
        )
        broker.enqueue(message, delay=delay)
    broker.client.close()


async def _with_enqueuer(redis_url: str, namespace: str, put: Put) -> None:
    broker = make_broker(redis_url, namespace=namespace)
    sealer = Sealer.from_env(Sealer.new_key_spec(), "GATEWAY_DATA_KEY")
    enqueuer = Enqueuer(broker, sealer, wire=Wire.from_url(redis_url, timeout_s=2.0))
    try:
        for delay_s in (0.0, 60.0):
            await put(enqueuer, delay_s)
    finally:
        await enqueuer.aclose(1.0)
        broker.client.close()


async def _enqueue_lua(enqueuer: Enqueuer, delay_s: float) -> None:
    assert await enqueuer.enqueue_payload("sms", dict(PAYLOAD), "layout test", delay_s=delay_s)


def _claim_lua(redis_url: str) -> Put:
    async def put(enqueuer: Enqueuer, delay_s: float) -> None:
        store = RedisOutboxStore(connect(redis_url, timeout_s=2.0))
        try:
            job = enqueuer.prepare("sms", dict(PAYLOAD), delay_s=delay_s)
            verdict = await store.claim(
                dedupe_key=f"layout:{delay_s}", recipient_hash="h", ttl_s=60, rate_limit=0, rate_window_s=60, then=job
            )
            assert verdict == "ok"
        finally:
            await store.aclose()

    return put


def _accept_lua(redis_url: str) -> Put:
    async def put(enqueuer: Enqueuer, delay_s: float) -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            job = enqueuer.prepare("sms", dict(PAYLOAD), delay_s=delay_s)
            tid = f"t{int(delay_s)}"
            keys = [
                f"layout-in:{tid}",
                f"layout-thread:{tid}",
                f"layout-thread:{tid}:msgs",
                "layout-inbox",
                job.msgs_key,
                job.queue_key,
                "layout-contact",
                f"layout-claim:{tid}",
            ]
            args: list[Any] = [
                f"{tid}|sms",
                60,
                "+8221",
                "sealed",
                "h",
                "sms",
                "1.000",
                "sealed",
                "m1",
                "p",
                tid,
                "normal",
                "r",
                "",
                job.message_id,
                job.data,
                "",
                "layout-desk:",  # the console's index prefix
                "layout-events",  # and its event channel
            ]
            stored, _ = await client.register_script(intake._ACCEPT)(keys=keys, args=args)
            assert int(stored) == 1
        finally:
            await client.aclose()

    return put


@pytest.mark.parametrize("script", ["enqueue.lua", "claim.lua", "accept.lua"])
async def test_our_scripts_write_what_dramatiq_enqueue_writes(redis_url: str, sync: Any, script: str) -> None:
    _dramatiq_enqueue(redis_url, "by-dramatiq")
    put = {"enqueue.lua": _enqueue_lua, "claim.lua": _claim_lua(redis_url), "accept.lua": _accept_lua(redis_url)}
    await _with_enqueuer(redis_url, "by-us", put[script])
    theirs, ours = _layout(sync, "by-dramatiq"), _layout(sync, "by-us")
    assert sorted(theirs) == ["<ns>:sms", "<ns>:sms.DQ", "<ns>:sms.DQ.msgs", "<ns>:sms.msgs"], (
        "dramatiq's Redis layout changed: check the scripts that write into it (gateway.infra.rediskeys)"
    )
    assert _shape(ours) == _shape(theirs)
    assert not sync.exists(NONE_KEY)


@pytest.mark.parametrize("script", ["enqueue.lua", "claim.lua"])
async def test_a_job_our_script_queued_is_run_by_a_dramatiq_worker(redis_url: str, script: str) -> None:
    namespace = f"run-{script.removesuffix('.lua')}"
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    put = {"enqueue.lua": _enqueue_lua, "claim.lua": _claim_lua(redis_url)}[script]

    async def now_only(enqueuer: Enqueuer, delay_s: float) -> None:
        if delay_s == 0:
            await put(enqueuer, 0.0)

    await _with_enqueuer(redis_url, namespace, now_only)

    broker = make_broker(redis_url, namespace=namespace)

    def deliver(payload: dict[str, Any]) -> None:
        seen.append(payload)
        done.set()

    dramatiq.actor(broker=broker, actor_name=actor_name("sms"), queue_name="sms")(deliver)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert await asyncio.to_thread(done.wait, 15), "a dramatiq worker did not run the job our script queued"
    finally:
        worker.stop(timeout=5_000)
        broker.client.close()
    assert seen == [PAYLOAD]
    client: Any = redis.Redis.from_url(redis_url)
    # Acknowledged (the worker stopped after running it): gone from the queue and its hash.
    assert client.llen(queue_key(namespace, "sms")) == 0 and client.hlen(queue_messages_key(namespace, "sms")) == 0
    client.close()
