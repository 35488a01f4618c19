"""Redis side of the outbox guard: opt-out lookup, dedupe claim and rate limit in one
round trip (a Lua script), plus an append-only audit stream.

Only hashed numbers are stored (HMAC-SHA256 with a key from the environment): the
gateway can recognise a number it has seen without keeping the number itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable
from gateway.infra import rediskeys, redisurl
from gateway.infra.crypto import hmac_sha256_hex
from gateway.infra.rediskeys import (
    AUDIT_STREAM,
    NONE_KEY,
    alive_key,
    attempt_key,
    contact_key,
    lua_script,
    message_key,
    no_lettering_key,
    optout_key,
    rate_key,
    sent_key,
)
from gateway.infra.wire import ReplicaAck, Wire, wire_like
from gateway.ports import QueuePut

log = logging.getLogger(__name__)

AUDIT_MAXLEN = 200_000

# The guard as Lua functions (`claim.lua`: keys and arguments described there), so that a
# script of its own could run it inside its atomic step; the claim script calls `claim_then`.
CLAIM_LUA = lua_script(__package__, "claim.lua")
_CLAIM = CLAIM_LUA + "return claim_then(KEYS, ARGV)\n"
_CLAIM_LEASE = CLAIM_LUA + "return claim_lease(KEYS, ARGV)\n"  # lettering: leases tied to liveness
_REPORT = lua_script(__package__, "report.lua")  # delivery state only moves forward


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_last_hash: list[tuple[bytes, str, str]] = [(b"", "", "")]


def number_hash(key: bytes, e164: str) -> str:
    """Keyed hash of a phone number: stable across gateways sharing the key, not reversible."""
    # One message or call asks for the same number's hash two or three times in a row (its
    # thread, its dedupe key, its claim): the last answer is kept (one number, never a table).
    last_key, last_number, last = _last_hash[0]
    if e164 == last_number and key == last_key:
        return last
    digest = hmac_sha256_hex(key, e164.encode())[:32]
    _last_hash[0] = (key, e164, digest)
    return digest


def connect(
    url: str, *, timeout_s: float = 0.25, max_connections: int = 32, pool_wait_s: float = 2.0
) -> aioredis.Redis:
    """A client for the real-time path: short timeouts, at most one retry, a bounded pool
    that waits (up to `pool_wait_s`) for a free connection instead of failing: a lettering a
    second late still shows on a phone that rings for twenty.

    redis-py's defaults (5 s timeouts, 10 retries) would hold a ringing call's lettering for
    seconds on a hung Redis; its default asyncio pool raises at once when its 100 connections
    are busy, which under a burst of calls turned into refused letterings. Asking the
    package metadata for the library version on every new connection costs ~1 ms of event
    loop time in redis-py 8, so the version is given once here.
    """
    # A connect includes redis-py's handshake (HELLO, CLIENT SETINFO), answered only when the
    # event loop gets to it: on a loop saturated by a burst of AMI events, 0.25 s refused
    # letterings as store_unavailable. New connections are rare (the pool is warmed and kept).
    # A `redis+sentinel://` URL gets a Sentinel pool (`gateway.infra.redisurl`): each new
    # connection asks the sentinels for the primary, so the client follows a failover.
    return redisurl.async_client(
        url,
        blocking=True,
        sentinel_timeout_s=max(timeout_s, 0.5),
        max_connections=max_connections,
        timeout=pool_wait_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=max(timeout_s, 1.0),
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=0,
        driver_info=DriverInfo(lib_version=redis.__version__),
        decode_responses=False,
    )


async def warm_up(client: aioredis.Redis, connections: int = 16) -> None:
    """Open a few pooled connections before the first call needs them."""
    try:
        await asyncio.gather(*(client.ping() for _ in range(connections)))
    except RedisError as exc:
        log.warning("redis warm-up failed: %s", exc)


class RedisOutboxStore:
    """`OutboxStore` on Redis. Atomic across every gateway that shares the Redis.

    The real-time calls (claims, settlements, audit entries) go over `wire` (a lean
    multiplexed connection, see `gateway.infra.wire`); the rest over the redis-py `client`. Without
    a `wire`, one to the client's Redis with its timeouts is made, and closed by `aclose`."""

    def __init__(
        self,
        client: aioredis.Redis,
        wire: Wire | None = None,
        *,
        ack: ReplicaAck | None = None,
        replicated_wire: Wire | None = None,
    ) -> None:
        self.client = client
        # `redis.min_replicas_ack`: a claim waits for the replicas (WAIT in the claim's round
        # trip); too few within the timeout raise StoreUnavailable and the guard fails closed,
        # as with Redis down: the call is not lettered (the claim stays written, so a later
        # attempt finds it taken) rather than possibly lettered twice after a failover that lost
        # the claim. 0 (default): not waited for.
        self.ack = ack if ack is not None else ReplicaAck()
        self._own_wire = wire is None
        self.wire = wire if wire is not None else wire_like(client)
        # Claims that wait for replicas go over `replicated_wire` when given: a WAIT holds its
        # connection until it returns (up to the timeout while a replica is missing), and the
        # heartbeats and settlements on `wire` must not queue behind it (owned by the caller).
        claims = replicated_wire if replicated_wire is not None and self.ack.replicas else self.wire
        self._claim = claims.register_script(_CLAIM)
        self._claim_lease = claims.register_script(_CLAIM_LEASE)
        self._report = client.register_script(_REPORT)

    async def aclose(self) -> None:
        """Close the redis-py client, and the wire when this store made it."""
        if self._own_wire:
            await self.wire.aclose()
        await self.client.aclose()

    async def claim(
        self,
        *,
        dedupe_key: str,
        recipient_hash: str,
        ttl_s: float,
        rate_limit: int,
        rate_window_s: int,
        cap_key: str = "",
        cap_ttl_s: int = 0,
        check_no_lettering: bool = False,
        ignore_optout: bool = False,
        lease: bool = False,
        then: QueuePut | None = None,
    ) -> str:
        keys, args = self.claim_call(
            dedupe_key=dedupe_key,
            recipient_hash=recipient_hash,
            ttl_s=ttl_s,
            rate_limit=rate_limit,
            rate_window_s=rate_window_s,
            cap_key=cap_key,
            cap_ttl_s=cap_ttl_s,
            check_no_lettering=check_no_lettering,
            ignore_optout=ignore_optout,
            lease=lease,
            then=then,
        )
        try:
            if self.ack.replicas:
                result = await self._claim.call_replicated(self.ack, "claim", keys=keys, args=args)
            else:
                result = await self._claim(keys=keys, args=args)
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return result.decode() if isinstance(result, bytes) else str(result)

    async def claim_lease(
        self,
        *,
        dedupe_key: str,
        recipient_hash: str,
        ttl_s: float,
        rate_limit: int,
        rate_window_s: int,
        owner: str,
        peek: bool = False,
    ) -> str:
        """A lettering claim as a lease of gateway instance `owner` (its heartbeat: `heartbeat`),
        in one round trip like `claim`: `claim`'s answers, or "leased:<ms>" (a live peer holds
        it; its heartbeat lives <ms> more unless renewed), "taken_over" /
        "taken_over_no_lettering" (the holder's heartbeat was gone: the lease is now `owner`'s).
        With `peek` nothing is written: "duplicate", "leased" or "owner_died" (see claim.lua)."""
        keys, args = self.claim_call(
            dedupe_key=dedupe_key,
            recipient_hash=recipient_hash,
            ttl_s=ttl_s,
            rate_limit=rate_limit,
            rate_window_s=rate_window_s,
            check_no_lettering=True,
            lease=True,
            owner=owner,
        )
        args += [alive_key(""), "peek" if peek else "claim"]
        try:
            if self.ack.replicas and not peek:
                result = await self._claim_lease.call_replicated(self.ack, "claim", keys=keys, args=args)
            else:
                result = await self._claim_lease(keys=keys, args=args)
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return result.decode() if isinstance(result, bytes) else str(result)

    async def heartbeat(self, instance: str, ttl_ms: int) -> None:
        """Say gateway instance `instance` is alive for `ttl_ms` more (its leases are respected)."""
        try:
            await self.wire.execute("SET", alive_key(instance), f"{time.time():.3f}", "PX", ttl_ms)
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def forget(self, instance: str) -> None:
        """Remove an instance's heartbeat (a clean stop): a peer takes over what it still holds at once."""
        try:
            await self.wire.execute("DEL", alive_key(instance))
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def claim_call(
        *,
        dedupe_key: str,
        recipient_hash: str,
        ttl_s: float,
        rate_limit: int,
        rate_window_s: int,
        cap_key: str = "",
        cap_ttl_s: int = 0,
        check_no_lettering: bool = False,
        ignore_optout: bool = False,
        lease: bool = False,
        then: QueuePut | None = None,
        owner: str = "",
    ) -> tuple[list[str], list[int | str | bytes]]:
        """The claim's (K, A) for `CLAIM_LUA`'s `claim_then`: what `claim` sends."""
        window = max(1, rate_window_s)
        bucket = int(time.time() // window)
        keys = [
            NONE_KEY if ignore_optout else optout_key(recipient_hash),
            rediskeys.dedupe_key(dedupe_key),
            rate_key(recipient_hash, bucket),
            rediskeys.cap_key(cap_key) if cap_key else NONE_KEY,
            no_lettering_key(recipient_hash) if check_no_lettering else NONE_KEY,
            NONE_KEY,
        ]
        value = f"{time.time():.3f}"
        if lease:  # 'lease:<epoch>', or 'lease:<epoch>:<instance>' tied to that gateway's heartbeat
            value = f"lease:{value}:{owner}" if owner else f"lease:{value}"
        args: list[int | str | bytes] = [int(ttl_s * 1000), rate_limit, window, value, max(1, cap_ttl_s) * 1000]
        if then is not None:
            keys += [then.msgs_key, then.queue_key, then.stream_key or NONE_KEY]
            args += [then.message_id, then.data]
            args += [item for pair in then.stream_fields for item in pair]
        return keys, args

    async def settle(self, *, dedupe_key: str, ttl_s: int, audit: Mapping[str, Any] | None = None) -> None:
        """Make a leased claim final (the carrier answered): keep it for the full dedupe TTL, and
        write the audit entry in the same round trip."""
        await self.settle_many([(dedupe_key, ttl_s, audit)])

    async def settle_many(self, items: Sequence[tuple[str, int, Mapping[str, Any] | None]]) -> None:
        """`settle` for several claims in one round trip (letterings finishing together)."""
        commands: list[list[Any]] = []
        for dedupe_key, ttl_s, audit in items:
            commands.append(["SET", rediskeys.dedupe_key(dedupe_key), f"settled:{time.time():.3f}", "EX", ttl_s])
            if audit is not None:
                commands.append(self._xadd_audit(dedupe_key, audit))
        try:
            await self.wire.execute_many(commands)
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _xadd_audit(dedupe_key: str, fields: Mapping[str, Any]) -> list[Any]:
        """XADD of one audit entry, the stream capped (approximately) at AUDIT_MAXLEN."""
        entry: dict[str, str] = {"key": dedupe_key, "ts": f"{time.time():.3f}"}
        entry.update({k: str(v) for k, v in fields.items()})
        command: list[Any] = ["XADD", AUDIT_STREAM, "MAXLEN", "~", AUDIT_MAXLEN, "*"]
        for item in entry.items():
            command += item
        return command

    async def check_send(self, *, recipient_hash: str, idempotency_key: str) -> str:
        """At send time (a queued job): "ok", "opted_out" or "already_sent"."""
        try:
            opted, sent = await self.client.mget([optout_key(recipient_hash), sent_key(idempotency_key)])
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        if opted is not None:
            return "opted_out"
        return "already_sent" if sent is not None else "ok"

    async def begin_attempt(self, *, idempotency_key: str, ttl_s: int = 14 * 86400) -> float | None:
        """SET NX the attempt marker; an existing one (an attempt with no recorded outcome: the
        worker died mid-request or the answer came too late) is returned as its epoch time."""
        try:
            previous = await self.client.set(
                attempt_key(idempotency_key), f"{time.time():.3f}", nx=True, ex=ttl_s, get=True
            )
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return float(previous) if previous is not None else None

    async def mark_sent(self, *, idempotency_key: str, provider: str, reference: str, ttl_s: int = 14 * 86400) -> None:
        """Remember a provider accepted this message (a redelivered job must not resend it) and
        open its delivery state for reports."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(sent_key(idempotency_key), f"{provider}:{reference}", ex=ttl_s)
                if reference:
                    state = message_key(provider, reference)
                    pipe.hset(
                        state, mapping={"key": idempotency_key, "rank": 1, "status": "sent", "at": f"{time.time():.3f}"}
                    )
                    pipe.expire(state, ttl_s)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def remember_contact(self, recipient_hash: str, department: str, ttl_s: int = 30 * 86400) -> None:
        """A department messaged this citizen: a text back within days is routed to it."""
        value = json.dumps({"department": department, "at": round(time.time(), 3)})
        try:
            await self.client.set(contact_key(recipient_hash), value, ex=ttl_s)
        except RedisError as exc:
            log.warning("contact not remembered: %s", exc)

    async def remember_no_lettering(self, recipient_hash: str, ttl_s: int) -> None:
        try:
            await self.client.set(no_lettering_key(recipient_hash), "1", ex=ttl_s)
        except RedisError as exc:
            log.warning("device memory not stored: %s", exc)

    async def apply_report(
        self, *, provider: str, reference: str, rank: int, status: str, at: float, detail: str
    ) -> str:
        try:
            result = await self._report(
                keys=[message_key(provider, reference)], args=[rank, status, f"{at:.3f}", detail[:200]]
            )
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return result.decode() if isinstance(result, bytes) else str(result)

    async def message_state(self, provider: str, reference: str) -> dict[str, str]:
        raw = await self.client.hgetall(message_key(provider, reference))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def record(self, *, dedupe_key: str, fields: Mapping[str, Any]) -> None:
        try:
            await self.wire.execute(*self._xadd_audit(dedupe_key, fields))
        except RedisError as exc:
            log.warning("audit record not stored: %s", exc)

    async def ping(self, timeout_s: float = 2.0) -> float:
        """Round-trip time in milliseconds of a PING on both connections to Redis (the redis-py
        client's pool and the real-time `wire`), sent together and bounded by `timeout_s`.

        Redis counts as reachable only when commands on both can complete now: the pool may
        still hold working connections while the wire cannot connect (Redis at `maxclients`),
        and the wire may be what is broken (/health once said reachable while every
        webhook hung on it). Raises StoreUnavailable."""
        start = time.perf_counter()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(self.client.ping(), self.wire.execute("PING"), return_exceptions=True), timeout_s
            )
        except TimeoutError as exc:
            raise StoreUnavailable(f"redis: no answer to PING within {timeout_s:g} s") from exc
        for where, result in zip(("", " (real-time connection)"), results, strict=True):
            if isinstance(result, RedisError):
                raise StoreUnavailable(f"redis{where}: {result}") from result
            if isinstance(result, BaseException):
                raise result
        return (time.perf_counter() - start) * 1000
