"""Console sessions in Redis (`gateway.ports.SessionStore`).

The session id is 256 random bits, known only to the browser (the `gw_console` cookie); Redis
keys it by its SHA-256, so a copy of Redis opens no session. The key's TTL is the idle timeout,
restarted by every request (`get`); the maximum age is checked against the creation time. Each
account's session hashes are kept in a set, so that `destroy_all` ends every one of them (the
account disabled, its password reset).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable
from gateway.infra.rediskeys import console_account_sessions_key, console_session_key
from gateway.ports import ConsoleSession

T = TypeVar("T")

MAX_ID_LENGTH = 128  # a cookie longer than any id we make is not looked up


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


class RedisSessions:
    """See the module docstring. `idle_s`: ended after this long without a request; `max_s`:
    ended this long after sign-in in any case. `clock` is for tests of the maximum age."""

    def __init__(
        self, client: aioredis.Redis, *, idle_s: float, max_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.idle_ms = max(1, int(idle_s * 1000))
        self.max_s = max_s
        self.clock = clock

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"console sessions: redis unavailable ({type(exc).__name__})") from exc

    async def create(self, account_id: int, *, ip: str) -> ConsoleSession:
        session = ConsoleSession(
            id=secrets.token_urlsafe(32),
            account_id=account_id,
            csrf=secrets.token_urlsafe(32),
            created_at=self.clock(),
            ip=ip[:64],
        )
        key = console_session_key(_digest(session.id))
        mine = console_account_sessions_key(account_id)

        async def op() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(
                    key,
                    mapping={
                        "account": str(account_id),
                        "csrf": session.csrf,
                        "created": repr(session.created_at),
                        "ip": session.ip,
                    },
                )
                pipe.pexpire(key, self.idle_ms)
                pipe.sadd(mine, _digest(session.id))
                pipe.expire(mine, max(1, int(self.max_s) + 60))
                await pipe.execute()

        await self._call(op)
        return session

    async def get(self, session_id: str) -> ConsoleSession | None:
        if not session_id or len(session_id) > MAX_ID_LENGTH:
            return None
        digest = _digest(session_id)
        key = console_session_key(digest)

        async def op() -> dict[bytes | str, bytes | str]:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(key)
                pipe.pexpire(key, self.idle_ms)  # the idle timer restarts (no-op when gone)
                found, _ = await pipe.execute()
            return dict(found)

        raw = {_text(k): _text(v) for k, v in (await self._call(op)).items()}
        if not raw:
            return None
        try:
            session = ConsoleSession(
                id=session_id,
                account_id=int(raw["account"]),
                csrf=raw["csrf"],
                created_at=float(raw["created"]),
                ip=raw.get("ip", ""),
            )
        except (KeyError, ValueError):
            await self.destroy(session_id)
            return None
        if self.clock() - session.created_at >= self.max_s:
            await self.destroy(session_id)
            return None
        return session

    async def destroy(self, session_id: str) -> None:
        if not session_id or len(session_id) > MAX_ID_LENGTH:
            return
        digest = _digest(session_id)
        key = console_session_key(digest)

        async def op() -> None:
            account = _text(await self.client.hget(key, "account"))
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if account:
                    pipe.srem(console_account_sessions_key(account), digest)
                await pipe.execute()

        await self._call(op)

    async def destroy_all(self, account_id: int) -> int:
        mine = console_account_sessions_key(account_id)

        async def op() -> int:
            digests = [_text(d) for d in await self.client.smembers(mine)]
            if not digests:
                return 0
            async with self.client.pipeline(transaction=True) as pipe:
                for digest in digests:
                    pipe.delete(console_session_key(digest))
                pipe.delete(mine)
                results = await pipe.execute()
            return sum(int(n) for n in results[:-1])

        return await self._call(op)
