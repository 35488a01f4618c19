"""Redis side of the outbox guard: opt-out lookup, dedupe claim and rate limit in one
round trip (a Lua script), plus an append-only audit stream.

Only hashed numbers are stored (HMAC-SHA256 with a key from the environment): the
gateway can recognise a number it has seen without keeping the number itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable

log = logging.getLogger(__name__)

PREFIX = "gw:"
AUDIT_STREAM = PREFIX + "audit"
AUDIT_MAXLEN = 200_000

# KEYS: opt-out key, dedupe key, rate key. ARGV: dedupe ttl ms, rate limit, window s, claim value.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'opted_out' end
if not redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[1]) then return 'duplicate' end
local limit = tonumber(ARGV[2])
if limit > 0 then
  local n = redis.call('INCR', KEYS[3])
  if n == 1 then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
  if n > limit then return 'rate_limited' end
end
return 'ok'
"""


def number_hash(key: bytes, e164: str) -> str:
    """Keyed hash of a phone number: stable across gateways sharing the key, not reversible."""
    return hmac.new(key, e164.encode(), hashlib.sha256).hexdigest()[:32]


def optout_key(recipient_hash: str) -> str:
    return f"{PREFIX}optout:{recipient_hash}"


def connect(url: str, *, timeout_s: float = 0.25) -> aioredis.Redis:
    """A client for the real-time path: short timeouts and at most one retry.

    redis-py's defaults (5 s timeouts, 10 retries) would hold a ringing call's lettering
    for seconds on a hung Redis; the guard must decide in milliseconds or give up.
    """
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=0, decode_responses=False,
    )


class RedisOutboxStore:
    """`OutboxStore` on Redis. Atomic across every gateway that shares the Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._claim = client.register_script(_CLAIM)

    async def claim(self, *, dedupe_key: str, recipient_hash: str, ttl_s: int,
                    rate_limit: int, rate_window_s: int) -> str:
        window = max(1, rate_window_s)
        bucket = int(time.time() // window)
        keys = [optout_key(recipient_hash), PREFIX + "dedupe:" + dedupe_key,
                f"{PREFIX}rate:{recipient_hash}:{bucket}"]
        try:
            result = await self._claim(keys=keys, args=[ttl_s * 1000, rate_limit, window, str(time.time())])
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return result.decode() if isinstance(result, bytes) else str(result)

    async def record(self, *, dedupe_key: str, fields: Mapping[str, Any]) -> None:
        entry: dict[Any, Any] = {"key": dedupe_key, "ts": f"{time.time():.3f}"}
        entry.update({k: str(v) for k, v in fields.items()})
        try:
            await self.client.xadd(AUDIT_STREAM, entry, maxlen=AUDIT_MAXLEN, approximate=True)
        except RedisError as exc:
            log.warning("audit record not stored: %s", exc)

    async def ping(self) -> float:
        """Round-trip time in milliseconds; raises StoreUnavailable."""
        start = time.perf_counter()
        try:
            await self.client.ping()
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return (time.perf_counter() - start) * 1000
