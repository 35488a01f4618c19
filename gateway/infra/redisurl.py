"""Redis URLs, including Redis Sentinel's: one place that turns a URL into clients.

Besides redis-py's own URLs (`redis://`, `rediss://`, `unix://`), every place that takes a Redis
URL accepts

    redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER_NAME[/DB][?sentinel_password_env=NAME]

The hosts are the sentinels (port 26379 when left out); the password is the data nodes' (the
primary's and its replicas'). The sentinels' own password, when they have one, is never in the
URL: it is read from the environment variable `REDIS_SENTINEL_PASSWORD`, or from the one named by
`sentinel_password_env` (`GatewayConfig.resolved_redis_url` adds it from
`redis.sentinel_password_env`).

Why Sentinel and not a proxy or Redis Cluster: dramatiq's Redis broker cannot use a cluster (its
Lua scripts touch keys of several queues), and a client that asks the sentinels at each connect
follows a failover by itself. Every client built here does: redis-py's through its
`SentinelConnectionPool` (each new connection asks for the primary; a READONLY reply drops the
connection), the lean `Wire` through `resolve_master` at each (re)connect, refusing a node that
does not report itself as a master (a demoted primary that came back as a replica).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.sentinel import Sentinel as SyncSentinel

SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_PASSWORD_ENV = "REDIS_SENTINEL_PASSWORD"


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed `redis+sentinel://` URL (see the module docstring)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None  # the data nodes'
    sentinel_password: str | None = None  # the sentinels' (from the environment)

    def describe(self) -> str:
        """For logs and /health: no password."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"{SCHEME}://{hosts}/{self.master}/{self.db}"


def is_sentinel(url: str) -> bool:
    return url.lower().startswith(SCHEME + "://")


def parse(url: str, environ: Mapping[str, str] | None = None) -> SentinelUrl:
    """Parse a `redis+sentinel://` URL; ValueError when it is malformed."""
    if not is_sentinel(url):
        raise ValueError(f"not a {SCHEME}:// URL")
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, sep, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else (unquote(user) or None)
        if not sep:
            username = None
    sentinels: list[tuple[str, int]] = []
    for raw in netloc.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("["):  # [v6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.lstrip(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError(f"{SCHEME}: bad sentinel port in {item!r}") from None
        sentinels.append((host, port))
    if not sentinels:
        raise ValueError(f"{SCHEME}: no sentinel host")
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(f"{SCHEME}: the path must be /MASTER_NAME[/DB]")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"{SCHEME}: the database must be a number, got {path[1]!r}") from None
    query = parse_qs(parts.query)
    password_env = (query.get("sentinel_password_env") or [DEFAULT_PASSWORD_ENV])[0]
    return SentinelUrl(
        sentinels=tuple(sentinels),
        master=path[0],
        db=db,
        username=username,
        password=password,
        sentinel_password=env.get(password_env) or None,
    )


def with_password_env(url: str, name: str) -> str:
    """`url` naming the sentinels' password variable `name` (unchanged unless a sentinel URL
    and a name other than the default)."""
    if not is_sentinel(url) or not name or name == DEFAULT_PASSWORD_ENV or "sentinel_password_env=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}sentinel_password_env={name}"


def _sentinel_kwargs(parsed: SentinelUrl, timeout_s: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "password": parsed.sentinel_password,
    }


def _node_kwargs(parsed: SentinelUrl) -> dict[str, Any]:
    return {"db": parsed.db, "username": parsed.username, "password": parsed.password}


class BlockingSentinelPool(AsyncSentinelPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (each new connection asks the sentinels for the primary) that
    waits for a free connection like `BlockingConnectionPool` (see `gateway.outbox.store.connect`)."""

    sentinel_url: SentinelUrl | None = None  # for `gateway.infra.wire.wire_like`


def async_client(url: str, *, blocking: bool = False, sentinel_timeout_s: float = 1.0, **kwargs: Any) -> aioredis.Redis:
    """An asyncio redis-py client for any Redis URL; `kwargs` as for `Redis.from_url` (with
    `blocking`, the pool's: `max_connections`, `timeout`, ...)."""
    if not is_sentinel(url):
        if blocking:
            return aioredis.Redis(connection_pool=BlockingConnectionPool.from_url(url, **kwargs))
        return aioredis.Redis.from_url(url, **kwargs)
    parsed = parse(url)
    sentinel = AsyncSentinel(parsed.sentinels, sentinel_kwargs=_sentinel_kwargs(parsed, sentinel_timeout_s))  # type: ignore[no-untyped-call]
    pool_class = BlockingSentinelPool if blocking else AsyncSentinelPool
    client: aioredis.Redis = sentinel.master_for(
        parsed.master, redis_class=aioredis.Redis, connection_pool_class=pool_class, **_node_kwargs(parsed), **kwargs
    )
    if blocking:
        client.connection_pool.sentinel_url = parsed  # type: ignore[attr-defined]
    return client


def sync_client(url: str, *, sentinel_timeout_s: float = 1.0, **kwargs: Any) -> redis.Redis:
    """A synchronous redis-py client (the dramatiq broker's) for any Redis URL."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    parsed = parse(url)
    sentinel = SyncSentinel(parsed.sentinels, sentinel_kwargs=_sentinel_kwargs(parsed, sentinel_timeout_s))  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(parsed.master, redis_class=redis.Redis, **_node_kwargs(parsed), **kwargs)  # type: ignore[no-untyped-call]
    return client


def client_address(client: Any) -> str:
    """The node a redis-py client (sync or asyncio) talks to: the primary the sentinels named
    last for a Sentinel client, else its configured host:port (or socket path)."""
    pool = client.connection_pool
    master = getattr(pool, "master_address", None)
    if master:
        return f"{master[0]}:{master[1]}"
    kw = pool.connection_kwargs
    return str(kw.get("path") or f"{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}")


async def _ask(host: str, port: int, commands: Sequence[Sequence[str]], timeout_s: float) -> list[Any]:
    """Send commands to one node over a fresh connection; their replies (errors raised)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        writer.write(b"".join(hiredis.pack_command(tuple(c)) for c in commands))  # type: ignore[arg-type]
        parser = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await asyncio.wait_for(reader.read(65536), timeout_s)
            if not data:
                raise RedisConnectionError(f"sentinel {host}:{port} closed the connection")
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies
    finally:
        writer.close()


async def resolve_master(
    parsed: SentinelUrl, timeout_s: float = 1.0, sentinels: Sequence[tuple[str, int]] | None = None
) -> tuple[str, int]:
    """The primary's address, from the first sentinel (of `sentinels`, in that order; default
    the URL's) that knows a primary it sees up.

    Like redis-py's `Sentinel.discover_master`: a primary a sentinel reports as subjectively or
    objectively down, or disconnected, is not taken (during a failover, before a replica is
    promoted, there is no primary: the caller's connect fails and the next one asks again)."""
    errors: list[str] = []
    for host, port in parsed.sentinels if sentinels is None else sentinels:
        commands: list[list[str]] = []
        if parsed.sentinel_password:
            commands.append(["AUTH", parsed.sentinel_password])
        commands.append(["SENTINEL", "MASTER", parsed.master])
        try:
            reply = (await _ask(host, port, commands, timeout_s))[-1]
        except (OSError, TimeoutError, RedisConnectionError, ResponseError, InvalidResponse) as exc:
            errors.append(f"{host}:{port}: {str(exc) or type(exc).__name__}")
            continue
        state = {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
        flags = set(state.get("flags", "").split(","))
        if "master" not in flags or flags & {"s_down", "o_down", "disconnected"}:
            errors.append(f"{host}:{port}: primary {state.get('ip')}:{state.get('port')} is {state.get('flags')}")
            continue
        return state["ip"], int(state["port"])
    raise RedisConnectionError(f"no primary for {parsed.master!r} from the sentinels: {'; '.join(errors)}")


class MasterResolver:
    """`resolve_master` for one client, asking first the sentinel that answered last: a
    sentinel host that is down costs its timeout once, not at every reconnect."""

    def __init__(self, parsed: SentinelUrl, timeout_s: float) -> None:
        self.parsed = parsed
        self.timeout_s = timeout_s
        self.order = list(parsed.sentinels)

    async def __call__(self) -> tuple[str, int]:
        errors = []
        for sentinel in list(self.order):
            try:
                address = await resolve_master(self.parsed, self.timeout_s, [sentinel])
            except RedisConnectionError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
                continue
            if sentinel != self.order[0]:
                self.order.remove(sentinel)
                self.order.insert(0, sentinel)
            return address
        raise RedisConnectionError(f"no primary for {self.parsed.master!r} from the sentinels: {'; '.join(errors)}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_info(text: bytes | str) -> dict[str, Any]:
    """An INFO reply as redis-py parses it (numbers as ints or floats, `slaveN` lines as dicts),
    for the replies of the lean connection, which come raw."""
    info: dict[str, Any] = {}
    for line in _text(text).splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        if key.startswith("slave") and "=" in value:
            info[key] = {k: _number(v) for k, _, v in (item.partition("=") for item in value.split(","))}
        else:
            info[key] = _number(value)
    return info


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def replication_report(info: Mapping[str, Any], primary: str) -> dict[str, Any]:
    """/health's view of `INFO replication` taken on the primary: which node it is, its
    replicas with their state and lag (bytes behind the primary's offset, seconds since their
    last acknowledgement)."""
    offset = int(info.get("master_repl_offset") or 0)
    replicas = []
    for key in sorted(k for k in info if k.startswith("slave") and isinstance(info[k], Mapping)):
        r = info[key]
        replicas.append(
            {
                "address": f"{r.get('ip')}:{r.get('port')}",
                "state": r.get("state"),
                "lag_bytes": max(0, offset - int(r.get("offset") or 0)),
                "lag_s": r.get("lag"),
            }
        )
    return {
        "primary": primary,
        "role": info.get("role"),
        "connected_replicas": int(info.get("connected_slaves") or 0),
        "replicas": replicas,
        "max_lag_bytes": max((r["lag_bytes"] for r in replicas), default=0),
    }
