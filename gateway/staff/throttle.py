"""Failure throttles in Redis: fixed-window counters per scope.

Used for failed console sign-ins per client IP and per user name (on top of the account's own
lockout, which an unknown user name does not have) and for refused staff-API tokens per IP. A
throttled sign-in is refused before its password is checked (no Argon2 work for a flood).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable
from gateway.infra.rediskeys import throttle_key

# (limit, window seconds)
LOGIN_PER_IP = (20, 600.0)  # failed sign-ins from one address
LOGIN_PER_USER = (10, 600.0)  # failed sign-ins for one user name (known or not)
TOKEN_PER_IP = (20, 600.0)  # refused staff-API tokens from one address


class Throttle:
    """Counters of failures per scope in fixed windows of `window_s`."""

    def __init__(self, client: aioredis.Redis, *, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.clock = clock

    def _key(self, scope: str, window_s: float) -> str:
        return throttle_key(scope[:200], int(self.clock() // window_s))

    async def count(self, scope: str, window_s: float) -> int:
        """Failures counted for `scope` in the current window."""
        try:
            value = await self.client.get(self._key(scope, window_s))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"throttle: redis unavailable ({type(exc).__name__})") from exc
        return int(value or 0)

    async def blocked(self, scope: str, limit: int, window_s: float) -> bool:
        """Whether `scope` has reached `limit` failures in the current window."""
        return await self.count(scope, window_s) >= limit

    async def fail(self, scope: str, window_s: float) -> int:
        """Count one failure for `scope`; the window's count so far."""
        key = self._key(scope, window_s)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, int(window_s) + 1)
                count, _ = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"throttle: redis unavailable ({type(exc).__name__})") from exc
        return int(count)

    async def allow(self, scope: str, limit: int, window_s: float) -> bool:
        """Count one attempt for `scope`; whether it is within `limit` for the window."""
        return await self.fail(scope, window_s) <= limit
