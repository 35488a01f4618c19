"""A lean, multiplexed Redis connection for the hot paths: lettering claims and settlements,
inbound accepts, job enqueues.

Why not redis-py's asyncio client there: it spends about 100 µs of CPU per command (pool
checkout and release, a timeout context and a retry wrapper per command, pure-Python command
packing, observability hooks). Profiles of the benchmarks (`ops/bench/README.md`) showed it was
about two thirds of a webhook's CPU and a large part of a lettering's. This client keeps one
connection, packs commands and parses replies with hiredis (redis-py's own optional C parser),
and coalesces the commands written during one event-loop iteration into one send: about
15 µs per command. Redis answers every command on a connection in order, so a FIFO of futures
matches each reply to its caller; concurrent callers are pipelined for free.

Failure semantics follow `gateway.outbox.store.connect`:

* a command not answered within `timeout_s` drops the connection: every command pending on it
  fails with `redis.exceptions.TimeoutError` (a late reply could otherwise be handed to the
  wrong caller), and the next command reconnects;
* a lost connection fails the pending commands with `redis.exceptions.ConnectionError`;
* a connect that fails in any way (refused or reset, a TLS handshake error, AUTH or SELECT
  refused or unanswered, a reply that is not RESP, not done within `connect_timeout_s`) fails
  every command waiting for it with `redis.exceptions.ConnectionError`, and the next command
  connects again: a failed connect never leaves a state later commands wait on;
* an error reply fails its own command only, as `redis.exceptions.ResponseError`.

All three are `RedisError`s, so callers keep one `except RedisError`. Nothing is retried here:
every script sent through it is idempotent by its keys, and the callers decide (a webhook
answers 503 and the provider retries; a lettering fails closed).

Commands given together to `execute_many` are written contiguously, so a MULTI ... EXEC batch
cannot be interleaved with another caller's commands.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.infra import redisurl

Arg = str | bytes | int | float


def _pack(command: Sequence[Arg]) -> bytes:
    # hiredis' stub declares a 1-tuple where any tuple of arguments is meant.
    packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]
    return packed


class _Connection(asyncio.Protocol):
    """One Redis connection: a FIFO of pending replies, writes coalesced per loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, events: dict[str, int]) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.events = events  # the Wire's counters
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        # (future, deadline) in the order the commands were written
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._flush_scheduled = False
        self._timer: asyncio.Handle | None = None
        # A blocking command (WAIT) holds the connection until then: Redis answers the commands
        # written after it only once it returns, so their deadlines start from there.
        self._held_until = 0.0

    # -------------------------------------------------------------- protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        readonly = False
        while True:
            try:
                reply = self.reader.gets()
            except InvalidResponse as exc:  # the stream cannot be trusted any more
                self.fail(RedisConnectionError(f"redis protocol error: {exc}"))
                return
            if reply is False:
                break
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.fail(RedisConnectionError("redis sent an unexpected reply"))
                return
            future, _ = pending.popleft()
            if future.done():  # its caller was cancelled; the reply still had to be consumed
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
                readonly = readonly or str(reply).startswith("READONLY")
            else:
                future.set_result(reply)
        if readonly:
            # This Redis was demoted to a replica (a Sentinel failover behind a proxy or a moved
            # IP): drop the connection so that the next command reaches the new master.
            self.events["readonly"] += 1
            self.fail(RedisConnectionError("redis is a read-only replica now (failover?); reconnecting"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.events["lost"] += 1
        self.fail(RedisConnectionError(f"redis connection lost: {exc}" if exc else "redis closed the connection"))

    # -------------------------------------------------------------- sending
    def send(self, packed: Sequence[bytes], hold_s: float = 0.0) -> list[asyncio.Future[Any]]:
        """Queue commands (already packed) for this iteration's write; one future per command.
        `hold_s`: the last command may block Redis' answers on this connection that long (WAIT)."""
        if self.closed:
            raise RedisConnectionError("redis connection closed")
        start = max(self.loop.time(), self._held_until)
        if hold_s:
            self._held_until = start + hold_s
        deadline = start + hold_s + self.timeout_s
        futures = []
        for command in packed:
            future: asyncio.Future[Any] = self.loop.create_future()
            self.pending.append((future, deadline))
            self.out.append(command)
            futures.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._check_deadline)
        return futures

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.out and self.transport is not None and not self.closed:
            data = b"".join(self.out)
            self.out = []
            self.transport.write(data)

    # -------------------------------------------------------------- timeouts
    def _check_deadline(self, confirm: int = 0) -> None:
        """At the oldest pending command's deadline. A loop that was busy may not have read a
        reply that already arrived: before dropping the connection, look again two callbacks
        later, which on asyncio's and on uvloop's loop means after at least one I/O poll."""
        self._timer = None
        if self.closed or not self.pending:
            return
        deadline = self.pending[0][1]
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._check_deadline)
        elif confirm < 2:
            self._timer = self.loop.call_soon(self._check_deadline, confirm + 1)
        else:
            self.events["timeouts"] += 1
            self.fail(RedisTimeoutError(f"redis did not answer within {self.timeout_s:g} s"))

    # -------------------------------------------------------------- closing
    def fail(self, exc: Exception) -> None:
        """Close the connection and fail every command still waiting on it."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.out = []
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(exc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self.fail(RedisConnectionError("redis connection closed"))


class ReplicaAckTimeout(RedisTimeoutError):
    """Fewer replicas than configured acknowledged a write within the timeout: the write is on
    the primary only, and a failover now could lose it. A `RedisError`, so callers answer it
    like an unreachable Redis (503 / 451, a lettering fails closed)."""


class ReplicaAck:
    """`redis.min_replicas_ack` / `replica_ack_timeout_ms`: durable means acknowledged by
    `replicas` replicas (Redis WAIT on the connection that wrote). `replicas` 0: never waited
    for, and callers keep their plain path (no extra command). `timeouts` counts the waits that
    fell short, by what was written, for /metrics."""

    # After a shortfall, for this long, writes wait a fifth of the timeout: a WAIT blocks its
    # connection for its whole timeout, so with the replica gone every write would queue behind
    # the one before it (20 at once: the last answered after 10 s). A write acknowledged within
    # the short wait (the replica is back) ends it at once; else the first write after the
    # interval waits the full timeout again.
    DEGRADED_S = 1.0

    def __init__(self, replicas: int = 0, timeout_ms: int = 500) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._full: tuple[Arg, ...] = ("WAIT", replicas, timeout_ms)
        self._short: tuple[Arg, ...] = ("WAIT", replicas, max(10, timeout_ms // 5))
        self.hold_s = timeout_ms / 1000
        self.timeouts: dict[str, int] = {}
        self._degraded_until = 0.0

    @property
    def degraded(self) -> bool:
        """Whether writes now wait only a fifth of the timeout (a recent shortfall)."""
        return time.monotonic() < self._degraded_until

    @property
    def command(self) -> tuple[Arg, ...]:
        """The WAIT to send with the next write: the full timeout, or the short one while degraded."""
        return self._short if self.degraded else self._full

    def check(self, acked: Any, what: str) -> None:
        """Raise `ReplicaAckTimeout` (and count it) when `acked` (WAIT's reply) falls short."""
        if int(acked) < self.replicas:
            self.timeouts[what] = self.timeouts.get(what, 0) + 1
            self._degraded_until = time.monotonic() + self.DEGRADED_S
            raise ReplicaAckTimeout(
                f"{what}: {int(acked)} of {self.replicas} replica(s) acknowledged within {self.timeout_ms} ms"
            )
        self._degraded_until = 0.0

    async def wait(self, wire: Wire, what: str) -> None:
        """WAIT on `wire` alone (after writes already sent on it): for writes that are not one
        script call."""
        (acked,) = await wire.execute_many([self.command], hold_s=self.hold_s)
        self.check(acked, what)


class Script:
    """A Lua script called by its SHA1 (EVALSHA), sent in full (EVAL) when Redis lacks it
    (after a restart or SCRIPT FLUSH). Called like redis-py's `AsyncScript`."""

    def __init__(self, wire: Wire, source: str) -> None:
        self.wire = wire
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.wire.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.wire.execute("EVAL", self.source, len(keys), *keys, *args)

    async def call_replicated(
        self, ack: ReplicaAck, what: str, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        """The script's reply once its writes reached `ack.replicas` replicas: the call and a
        WAIT in one round trip (written together, so WAIT covers this call's writes). Fewer
        acknowledgements within the timeout raise `ReplicaAckTimeout` (the writes stay: the
        scripts are idempotent, the caller's retry finds them)."""
        call = (len(keys), *keys, *args)
        try:
            result, acked = await self.wire.execute_many([("EVALSHA", self.sha, *call), ack.command], hold_s=ack.hold_s)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            result, acked = await self.wire.execute_many([("EVAL", self.source, *call), ack.command], hold_s=ack.hold_s)
        ack.check(acked, what)
        return result


class Wire:
    """One multiplexed connection to one Redis (see the module docstring). Replies are raw
    RESP2 values: bytes, ints, lists (HGETALL gives a flat list), None."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str = "",
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = 0.25,
        connect_timeout_s: float = 1.0,
        resolver: Callable[[], Awaitable[tuple[str, int]]] | None = None,
    ) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password, self.tls = username, password, tls
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        # With Sentinel (`redisurl.resolve_master`): asked for the primary's address at each
        # (re)connect, so a failover is followed by the next command after the old connection
        # failed; a node that does not answer ROLE with "master" is refused.
        self.resolver = resolver
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None  # the connect under way, shared
        # For /health and /metrics: connections made, connects that failed, connections dropped
        # because a command timed out, connections lost (Redis closed them or went away),
        # connections dropped because Redis answered READONLY (demoted to a replica).
        self.events = {"connects": 0, "connect_failures": 0, "timeouts": 0, "lost": 0, "readonly": 0}

    @property
    def connects(self) -> int:
        return self.events["connects"]

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.25, connect_timeout_s: float = 1.0) -> Wire:
        """`redis://[user:password@]host[:port][/db]`, `rediss://...` (with redis-py's `ssl_ca_certs`,
        `ssl_cert_reqs`, `ssl_check_hostname`, `ssl_certfile`, `ssl_keyfile` query options) or
        `unix:///path?db=N`, or `redis+sentinel://...` (`gateway.infra.redisurl`): the same URL
        the redis-py clients get."""
        if redisurl.is_sentinel(url):
            connect_timeout_s = max(connect_timeout_s, timeout_s)
            return cls.from_sentinel(redisurl.parse(url), timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
        return cls.from_kwargs(
            parse_url(url),
            tls=url.startswith("rediss://"),
            timeout_s=timeout_s,
            connect_timeout_s=max(connect_timeout_s, timeout_s),
        )

    @classmethod
    def from_kwargs(cls, kw: Mapping[str, Any], *, tls: bool, timeout_s: float, connect_timeout_s: float) -> Wire:
        """From redis-py's connection keyword arguments (what `parse_url` or a pool holds)."""
        return cls(
            host=str(kw.get("host") or "127.0.0.1"),
            port=int(kw.get("port") or 6379),
            path=str(kw.get("path") or ""),
            db=int(kw.get("db") or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            tls=tls_context(kw) if tls else None,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
        )

    @classmethod
    def from_sentinel(cls, parsed: redisurl.SentinelUrl, *, timeout_s: float, connect_timeout_s: float) -> Wire:
        """A Wire that finds the primary through the sentinels at each connect."""
        return cls(
            host="",
            port=0,
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            # Half the connect's time for the sentinels, the rest for the primary.
            resolver=redisurl.MasterResolver(parsed, max(0.1, connect_timeout_s / 2)),
        )

    @property
    def address(self) -> str:
        """The node connected to last (with Sentinel: the primary found at the last connect)."""
        return self._address()

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def execute(self, *args: Arg) -> Any:
        """Send one command and wait for its reply."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        return await conn.send((_pack(args),))[0]

    async def execute_many(self, commands: Sequence[Sequence[Arg]], *, hold_s: float = 0.0) -> list[Any]:
        """Send commands back to back (one write); their replies in order. The first error
        reply is raised after every reply has arrived, like redis-py's pipeline. `hold_s`: the
        last command blocks up to that long (WAIT), on top of the command timeout."""
        if not commands:
            return []
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        futures = conn.send([_pack(c) for c in commands], hold_s)
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)

    async def _connect(self) -> _Connection:
        """The connection, once the connect under way (started here when there is none) is done.

        The connect runs as a task of its own that every caller waits on through a shield: a
        caller that is cancelled (its HTTP client went away, a `wait_for` around it expired)
        stops waiting, and the others still get the connection; the task is bounded by
        `connect_timeout_s` in any case. However it ends, `_connect_done` forgets it, so the
        next command after a failure connects again."""
        task = self._connecting
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._establish())
            task.add_done_callback(self._connect_done)
            self._connecting = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The connect itself was cancelled (`aclose`), not this caller: to the caller that
            # is a connect that failed, not a cancellation it must pass on.
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise RedisConnectionError(
                    f"redis: cannot connect to {self._address()}: the connection was closed"
                ) from None
            raise

    async def _establish(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            conn = await asyncio.wait_for(self._open(loop), self.connect_timeout_s)
        except Exception as exc:
            # Every way a connect can fail becomes the one error callers handle (a RedisError):
            # OSError (refused, reset, unreachable, ssl.SSLError from the TLS handshake), the
            # builtin TimeoutError of `wait_for`, redis-py's TimeoutError (AUTH or SELECT not
            # answered within `timeout_s`: a paused Redis accepts TCP connections but answers
            # nothing), its ConnectionError (closed during the hello, not RESP) and its
            # ResponseError (WRONGPASS, NOAUTH). A cancellation (`aclose`) passes through.
            self.events["connect_failures"] += 1
            raise RedisConnectionError(
                f"redis: cannot connect to {self._address()}: {str(exc) or type(exc).__name__}"
            ) from exc
        self._conn = conn
        self.events["connects"] += 1
        return conn

    def _connect_done(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: a failure whose callers all gave up is not an "unretrieved" error

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        def factory() -> _Connection:
            return _Connection(loop, self.timeout_s, self.events)

        if self.resolver is not None:
            self.host, self.port = await self.resolver()
        if self.path:
            _, conn = await loop.create_unix_connection(factory, self.path)
        else:
            _, conn = await loop.create_connection(factory, self.host, self.port, ssl=self.tls)
        try:
            hello: list[Sequence[Arg]] = []
            if self.password:
                hello.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
            if self.db:
                hello.append(("SELECT", self.db))
            if self.resolver is not None:
                hello.append(("ROLE",))
            if hello:
                replies = await asyncio.gather(*conn.send([_pack(c) for c in hello]), return_exceptions=True)
                for reply in replies[:-1] if self.resolver is not None else replies:
                    if isinstance(reply, BaseException):
                        raise reply
                if self.resolver is not None:
                    self._check_role(replies[-1])
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_role(self, reply: Any) -> None:
        """Refuse a node that says it is not the primary: the sentinels' view is a moment old,
        and a demoted primary that came back answers as a replica (every write would fail
        READONLY). ROLE is an @admin command: a user denied it (ops/redis.conf's `gateway` user
        unless granted `+role`) is taken at the sentinels' word, and a READONLY reply still
        drops the connection (see `_Connection.data_received`)."""
        if isinstance(reply, ResponseError) and str(reply).startswith("NOPERM"):
            return
        if isinstance(reply, BaseException):
            raise reply
        if not reply or reply[0] != b"master":
            role = reply[0].decode() if reply else "?"
            raise RedisConnectionError(f"{self._address()} reports role:{role}, not master")

    def _address(self) -> str:
        return self.path or (f"{self.host}:{self.port}" if self.host else "the primary (not found yet)")

    async def aclose(self) -> None:
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            task.cancel()  # its waiters get a ConnectionError (see `_connect`)
            await asyncio.wait({task})  # a half-open connection is closed before this returns
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def wire_like(client: Any, *, timeout_s: float | None = None) -> Wire:
    """A `Wire` to the Redis a redis-py asyncio client talks to, with its timeouts (or
    `timeout_s`): for components given only a client (the worker's store, tests)."""
    pool = client.connection_pool
    kw = pool.connection_kwargs
    timeout = timeout_s if timeout_s is not None else float(kw.get("socket_timeout") or 5.0)
    parsed = getattr(pool, "sentinel_url", None)  # `redisurl.async_client(..., blocking=True)`
    if parsed is not None:
        connect_timeout = max(float(kw.get("socket_connect_timeout") or timeout), timeout)
        return Wire.from_sentinel(parsed, timeout_s=timeout, connect_timeout_s=connect_timeout)
    return Wire.from_kwargs(
        kw,
        tls="SSL" in getattr(pool.connection_class, "__name__", ""),
        timeout_s=timeout,
        connect_timeout_s=float(kw.get("socket_connect_timeout") or timeout),
    )


def tls_context(kw: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS settings redis-py takes from a `rediss://` URL's query, as an SSL context:
    certificates verified against the system's or `ssl_ca_certs`' CAs and the host name checked,
    unless `ssl_cert_reqs=none` / `optional` or `ssl_check_hostname=false` say otherwise."""
    context = ssl.create_default_context(cafile=kw.get("ssl_ca_certs"))
    reqs = str(kw.get("ssl_cert_reqs") or "required").lower()  # "none", "cert_none", ssl.CERT_NONE ...
    if "none" in reqs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif "optional" in reqs:
        context.verify_mode = ssl.CERT_OPTIONAL
    if kw.get("ssl_check_hostname") is False:
        context.check_hostname = False
    if kw.get("ssl_certfile"):
        context.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"))
    return context
