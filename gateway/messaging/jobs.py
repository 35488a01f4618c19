"""Durable jobs on dramatiq's Redis broker: what may wait goes here, so a crash, a restart or a
provider outage loses nothing.

* msgpack encoding of small payloads (ids and values; the citizen's number and every text to
  send sealed with AES-GCM: Redis, its dead letters and its backups hold no citizen data in clear);
* queues named for what they carry: `call_notice` (Alimtalk for phones that cannot show
  lettering), `postcall` (post-call content, deferred out of quiet hours), `sms` (SMS/LMS
  fallback);
* retries that end: explicit `max_retries`, backoff and `max_age` per queue (dramatiq's
  defaults, 20 retries over 7 days, are wrong for a call notice);
* enqueuing from the event loop through a small executor with a timeout (`send()` is
  synchronous and would block the AMI reader for seconds on a hung Redis);
* dead letters (`<queue>.XQ`) listed and re-driven by `gateway deadletters`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dramatiq
import msgpack
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.encoder import Encoder, MessageData
from dramatiq.errors import DecodeError
from dramatiq.middleware import AgeLimit, AsyncIO, Callbacks, CurrentMessage, Retries, ShutdownNotifications, TimeLimit
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as SyncRetry

from gateway.domain.models import AlimtalkRequest, Button, SmsRequest
from gateway.infra import redisurl
from gateway.infra.crypto import Sealer
from gateway.infra.rediskeys import (
    dead_letters_key,
    dead_letters_messages_key,
    lua_script,
    queue_key,
    queue_messages_key,
)
from gateway.infra.wire import Wire
from gateway.outbox.guard import QueuedMessage
from gateway.ports import QueuePut

log = logging.getLogger(__name__)


def actor_name(queue: str) -> str:
    """One actor per queue, each with its queue's retry budget."""
    return f"deliver_{queue}"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    max_retries: int
    min_backoff_ms: int
    max_backoff_ms: int
    max_age_ms: int  # a message older than this is dropped to the dead letters, not sent
    time_limit_ms: int = 60_000


QUEUES: dict[str, QueueSpec] = {
    # The citizen's phone rang minutes ago: a call notice is useless after half an hour.
    "call_notice": QueueSpec(
        "call_notice", max_retries=6, min_backoff_ms=2_000, max_backoff_ms=120_000, max_age_ms=30 * 60_000
    ),
    # Post-call content may wait out the night (deferred to 08:00) and a provider outage.
    "postcall": QueueSpec(
        "postcall", max_retries=8, min_backoff_ms=30_000, max_backoff_ms=30 * 60_000, max_age_ms=36 * 3600_000
    ),
    "sms": QueueSpec("sms", max_retries=6, min_backoff_ms=5_000, max_backoff_ms=10 * 60_000, max_age_ms=6 * 3600_000),
    # A citizen's message is already in the inbox; this queue tells the others (webhook, duty SMS).
    "inbound": QueueSpec(
        "inbound", max_retries=10, min_backoff_ms=5_000, max_backoff_ms=15 * 60_000, max_age_ms=24 * 3600_000
    ),
}


class MsgpackEncoder(Encoder):
    """dramatiq has no msgpack encoder; producers and workers must both use this one."""

    def __init__(self) -> None:
        # `msgpack.packb` builds a Packer (and its 256 KiB buffer) per call; one per thread is
        # kept instead (a Packer is not thread-safe; enqueues also run on executor threads).
        self._local = threading.local()

    def encode(self, data: MessageData) -> bytes:
        packer = getattr(self._local, "packer", None)
        if packer is None:
            packer = self._local.packer = msgpack.Packer(use_bin_type=True)
        try:
            packed: bytes = packer.pack(data)
        except BaseException:
            packer.reset()  # a failed pack may leave part of the data in the buffer
            raise
        return packed

    def decode(self, data: bytes) -> MessageData:
        try:
            decoded = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise DecodeError(f"not a msgpack message: {exc}", data, exc) from None  # type: ignore[no-untyped-call]
        if not isinstance(decoded, dict):
            raise DecodeError("message is not a map", data, None)  # type: ignore[no-untyped-call]
        return decoded


def make_broker(
    redis_url: str, *, namespace: str = "gw", heartbeat_timeout_ms: int = 60_000, maintenance_chance: int = 1000
) -> RedisBroker:
    """The broker both the gateway (producer) and `gateway worker` use."""
    dramatiq.set_encoder(MsgpackEncoder())
    middleware = [
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        CurrentMessage(),
        Retries(max_retries=0),
        AsyncIO(),
    ]
    # Our own client: RedisBroker ignores timeouts passed beside a URL, and redis-py's default
    # retries would hold an enqueue (and a shutting-down process) for a minute on a dead Redis.
    # (A `redis+sentinel://` URL gives a Sentinel master client: it follows a failover.)
    client = redisurl.sync_client(
        redis_url,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        retry=SyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        client=client,
        namespace=namespace,
        middleware=middleware,
        heartbeat_timeout=heartbeat_timeout_ms,
        maintenance_chance=maintenance_chance,
    )
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


_OPTIONS = {
    name: {
        "max_retries": spec.max_retries,
        "min_backoff": spec.min_backoff_ms,
        "max_backoff": spec.max_backoff_ms,
        "max_age": spec.max_age_ms,
        "time_limit": spec.time_limit_ms,
    }
    for name, spec in QUEUES.items()
}


def actor_options(queue: str) -> dict[str, Any]:
    """A fresh dict of the queue's retry options (callers add to it)."""
    return dict(_OPTIONS[queue])


# ------------------------------------------------------------------ payloads

# Version 2 seals the SMS/LMS text and title as well as the citizen's number (version 1, the
# previous release's, kept them in clear). Both are read: jobs already queued at an upgrade,
# dead letters re-driven days later. A worker of the previous release refuses version 2 (a
# dead letter, re-driven once it is upgraded) instead of sending a sealed token as text.
PAYLOAD_VERSION = 2
_READABLE_VERSIONS = frozenset({1, 2})


def encode_message(message: QueuedMessage, sealer: Sealer) -> dict[str, Any]:
    """A queued message as a small msgpack-able dict: the citizen's number, and every SMS/LMS
    text and title (a staff answer quotes the citizen; dead letters keep jobs for days), sealed
    and bound to the message's key."""
    aad = message.key.encode()
    payload: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "key": message.key,
        "pbx": message.pbx,
        "call": message.call_id,
        "action": message.action,
        "provider": message.provider,
        "to": sealer.seal(message.recipient, aad),
    }
    sms_fields = None
    if message.sms is not None:
        sms_fields = payload["sms"] = _sms_fields(message.sms, sealer, aad)
    if message.alimtalk is not None:
        a = message.alimtalk
        fallback = None
        if a.fallback is not None:
            # The call notice's fallback is usually its `sms` too: sealed once.
            fallback = sms_fields if a.fallback is message.sms else _sms_fields(a.fallback, sealer, aad)
        payload["alimtalk"] = {
            "template": a.template_code,
            "vars": [list(v) for v in a.variables],
            "buttons": [[b.name, b.url] for b in a.buttons],
            "fallback": fallback,
        }
    return payload


def _sms_fields(sms: SmsRequest, sealer: Sealer, aad: bytes) -> dict[str, str]:
    return {
        "sender": sms.sender,
        "text": sealer.seal(sms.text, aad),
        "title": sealer.seal(sms.title, aad) if sms.title else "",
        "kind": sms.kind,
    }


def decode_message(payload: Mapping[str, Any], sealer: Sealer) -> QueuedMessage:
    """The queued message of a version 1 (texts in clear) or 2 (texts sealed) payload; raises
    `SealError` for a sealed value that cannot be opened, `ValueError`/`KeyError` for a payload
    that is not one."""
    version = payload.get("v")
    if version not in _READABLE_VERSIONS:
        raise ValueError(f"unknown payload version {version!r}")
    key = str(payload["key"])
    aad = key.encode()
    to = sealer.open(str(payload["to"]), aad)

    def clear(value: Any) -> str:
        value = str(value)
        return sealer.open(value, aad) if version >= 2 and value else value

    def sms(fields: Mapping[str, str]) -> SmsRequest:
        return SmsRequest(
            idempotency_key=key,
            to=to,
            sender=fields["sender"],
            text=clear(fields["text"]),
            title=clear(fields.get("title", "")),
            kind=fields.get("kind", "sms"),
        )

    alimtalk = None
    if payload.get("alimtalk"):
        a = payload["alimtalk"]
        alimtalk = AlimtalkRequest(
            idempotency_key=key,
            to=to,
            template_code=a["template"],
            variables=tuple((str(k), str(v)) for k, v in a["vars"]),
            buttons=tuple(Button(n, u) for n, u in a.get("buttons", [])),
            fallback=sms(a["fallback"]) if a.get("fallback") else None,
        )
    return QueuedMessage(
        key=key,
        pbx=str(payload["pbx"]),
        call_id=str(payload["call"]),
        action=str(payload["action"]),
        recipient=to,
        provider=str(payload["provider"]),
        alimtalk=alimtalk,
        sms=sms(payload["sms"]) if payload.get("sms") else None,
    )


def inbound_reply(
    sealer: Sealer, tid: str, *, text: str, action: str, sealed_to: str, city_number: str
) -> dict[str, str]:
    """The `reply` field of a citizen's notification job (the automatic reply or opt-out
    confirmation the worker sends): the text sealed like the thread's (bound to the thread id),
    under `sealed_text`: a worker of the previous release, which read `text`, dead-letters the
    job instead of sending the sealed token to the citizen."""
    return {"sealed_text": sealer.seal(text, tid.encode()), "action": action, "to": sealed_to, "from": city_number}


def open_inbound_reply(reply: Mapping[str, Any], sealer: Sealer, tid: str) -> tuple[str, str, str, str]:
    """(citizen's number, text, action, city number) of a notification's `reply`, sealed
    (`sealed_text`) or from the previous release (`text`, in clear)."""
    aad = tid.encode()
    text = sealer.open(str(reply["sealed_text"]), aad) if "sealed_text" in reply else str(reply["text"])
    return sealer.open(str(reply["to"]), aad), text, str(reply["action"]), str(reply["from"])


# ------------------------------------------------------------------ enqueuing


class _JobIds:
    """Unique job ids in uuid4's textual shape, several times cheaper than ``str(uuid.uuid4())``
    (two per job, two jobs per citizen message): a random per-process prefix and a counter.
    Among n processes two share a prefix (74 random bits) with a chance of about n² / 2**75; a
    forked child draws its own (`os.register_at_fork`)."""

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-"
        self._next = itertools.count(1).__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():012x}"


_job_id = _JobIds()


_MESSAGE_FIELDS = ("queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp")
if tuple(f.name for f in dataclasses.fields(dramatiq.Message)) != _MESSAGE_FIELDS:  # pragma: no cover
    raise ImportError("dramatiq.Message has changed its fields: update Enqueuer._prepared")

# dispatch.lua's "enqueue" command without its worker-side preamble (heartbeat, maintenance).
_ENQUEUE = lua_script(__package__, "enqueue.lua")


class Enqueuer:
    """Puts messages on the broker from the event loop without ever blocking it.

    With `wire` (a `gateway.infra.wire.Wire` used on the caller's loop: the gateway's), a message is put
    exactly where dramatiq's Redis broker puts it (`RedisBroker.enqueue`: a fresh
    `redis_message_id`, `.DQ` and `eta` when delayed; dispatch.lua's "enqueue" is HSET
    `<ns>:<queue>.msgs` + RPUSH `<ns>:<queue>`) in one pipelined round trip, instead of a sync
    call on an executor thread: a webhook or a lettering then pays no thread hand-off and no GIL
    contention. The broker's enqueue middleware hooks are not run; ours declare none (checked by
    a test). Without `wire` (the worker's own loop), the executor path is used."""

    def __init__(
        self, broker: RedisBroker, sealer: Sealer, *, timeout_s: float = 2.0, workers: int = 2, wire: Wire | None = None
    ) -> None:
        self.broker = broker
        self.sealer = sealer
        self.timeout_s = timeout_s
        self.wire = wire
        self._script = wire.register_script(_ENQUEUE) if wire is not None else None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="enqueue")
        self.enqueued = 0
        self.failed = 0

    async def enqueue(self, queue: str, message: QueuedMessage, *, delay_s: float = 0.0) -> bool:
        """True once the message is in Redis; False (counted, logged) if it could not be put there."""
        return await self.enqueue_payload(
            queue, encode_message(message, self.sealer), f"{message.action} for call {message.call_id}", delay_s=delay_s
        )

    async def enqueue_payload(self, queue: str, payload: dict[str, Any], what: str, *, delay_s: float = 0.0) -> bool:
        delay_ms = int(delay_s * 1000) if delay_s > 0 else None
        try:
            if self._script is not None:
                # One EVALSHA: atomic like dramatiq's own enqueue. The wire bounds it (its
                # connect and command timeouts): no wait_for (a task per enqueue) needed.
                put = self._prepared(queue, payload, delay_ms)
                await self._script(keys=[put.msgs_key, put.queue_key], args=[put.message_id, put.data])
            else:
                dm: dramatiq.Message[Any] = dramatiq.Message(
                    queue_name=queue,
                    actor_name=actor_name(queue),
                    args=(payload,),
                    kwargs={},
                    options=actor_options(queue),
                )
                loop = asyncio.get_running_loop()
                await asyncio.wait_for(loop.run_in_executor(self._executor, self._put, dm, delay_ms), self.timeout_s)
        except (TimeoutError, redis.RedisError, OSError) as exc:
            self.failed += 1
            log.error("could not enqueue %s on %s: %s", what, queue, str(exc) or type(exc).__name__)
            return False
        self.enqueued += 1
        return True

    def prepare(
        self,
        queue: str,
        payload: dict[str, Any],
        *,
        delay_s: float = 0.0,
        stream_key: str = "",
        stream_fields: tuple[tuple[str, str], ...] = (),
    ) -> QueuePut:
        """The job as dramatiq's broker would store it, for a caller that puts it in Redis itself
        (`OutboxStore.claim(then=...)`: admitted and queued in one step), with the stream entry
        to add in that step, if any."""
        return self._prepared(queue, payload, int(delay_s * 1000) if delay_s > 0 else None, stream_key, stream_fields)

    def prepare_message(self, queue: str, message: QueuedMessage, *, delay_s: float = 0.0) -> QueuePut:
        """`prepare` for a queued message (its citizen's number sealed)."""
        return self.prepare(queue, encode_message(message, self.sealer), delay_s=delay_s)

    def _prepared(
        self,
        queue: str,
        payload: dict[str, Any],
        delay_ms: int | None,
        stream_key: str = "",
        stream_fields: tuple[tuple[str, str], ...] = (),
    ) -> QueuePut:
        """What `RedisBroker.enqueue` stores: the message with a fresh `redis_message_id`, on
        `<queue>.DQ` with an `eta` when delayed (built once, not copied twice as the broker does)."""
        redis_id = _job_id()
        options = actor_options(queue)
        options["redis_message_id"] = redis_id
        queue_name = queue
        if delay_ms is not None:
            queue_name = dq_name(queue)
            options["eta"] = int(time.time() * 1000) + delay_ms
        # `Message.asdict()`'s fields, without building the frozen dataclass (half the cost of an
        # enqueue); _MESSAGE_FIELDS checks at import that dramatiq's Message still has exactly these.
        fields = {
            "queue_name": queue_name,
            "actor_name": actor_name(queue),
            "args": (payload,),
            "kwargs": {},
            "options": options,
            "message_id": _job_id(),
            "message_timestamp": int(time.time() * 1000),
        }
        ns = self.broker.namespace
        data = dramatiq.get_encoder().encode(fields)
        return QueuePut(
            queue_messages_key(ns, queue_name), queue_key(ns, queue_name), redis_id, data, stream_key, stream_fields
        )

    def _put(self, message: dramatiq.Message[Any], delay_ms: int | None) -> None:
        self.broker.enqueue(message, delay=delay_ms)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def aclose(self, timeout: float) -> None:
        """Flush: let enqueues already handed to the executor finish (bounded), then close.

        (Async enqueues are awaited by their callers: the pipeline's drain covers them.)"""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._executor.shutdown, wait=True), timeout)
        except TimeoutError:
            log.warning("shutdown: enqueues still pending after %.1f s", timeout)
            self.close()
        if self.wire is not None:
            await self.wire.aclose()


# ------------------------------------------------------------------ dead letters


def dead_letters(broker: RedisBroker, queue: str | None = None) -> list[dict[str, Any]]:
    """Messages that exhausted their retries or their age: one dict per message."""
    out: list[dict[str, Any]] = []
    client: Any = broker.client  # redis-py's sync return types are unions of everything
    for name in [queue] if queue else sorted(QUEUES):
        xq = dead_letters_key(broker.namespace, name)
        for raw_id, score in client.zrange(xq, 0, -1, withscores=True):
            raw = client.hget(dead_letters_messages_key(broker.namespace, name), raw_id)
            if raw is None:
                continue
            message = dramatiq.Message.decode(raw)
            payload = message.args[0] if message.args else {}
            out.append(
                {
                    "queue": name,
                    "id": message.message_id,
                    "dead_at": score / 1000,
                    "action": payload.get("action"),
                    "call": payload.get("call"),
                    "pbx": payload.get("pbx"),
                    "retries": message.options.get("retries", 0),
                    "error": str(message.options.get("traceback", "")).strip().splitlines()[-1:],
                }
            )
    return out


def dead_letter_counts(broker: RedisBroker) -> dict[str, int]:
    return {name: int(broker.client.zcard(dead_letters_key(broker.namespace, name))) for name in sorted(QUEUES)}


def redrive(broker: RedisBroker, queue: str | None = None) -> int:
    """Put dead letters back on their queue with a fresh retry budget; returns how many."""
    count = 0
    client: Any = broker.client
    for name in [queue] if queue else sorted(QUEUES):
        xq = dead_letters_key(broker.namespace, name)
        for raw_id in client.zrange(xq, 0, -1):
            raw = client.hget(dead_letters_messages_key(broker.namespace, name), raw_id)
            if raw is None:
                continue
            message = dramatiq.Message.decode(raw)
            options = {
                k: v
                for k, v in message.options.items()
                if k not in ("retries", "traceback", "redis_message_id", "requeue_timestamp")
            }
            broker.enqueue(dataclasses.replace(message, options=options, message_timestamp=int(time.time() * 1000)))
            client.zrem(xq, raw_id)
            client.hdel(dead_letters_messages_key(broker.namespace, name), raw_id)
            count += 1
    return count
