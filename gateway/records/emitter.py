"""`StreamRecordSink`: the gateway's `RecordSink`, facts to the Redis stream `gw:records`.

`record()` is called on the event loop right after the real-time work (a lettering, an accept):
it only appends the fact to a bounded in-memory buffer and returns. A background task takes
batches from the buffer, msgpacks them (`to_wire`) and XADDs them in one pipelined round trip,
trimmed with `MAXLEN ~ stream_maxlen`. The worker's `RecordsWriter` drains the stream into SQL.

Redis down: the buffer keeps what it holds and the task retries with backoff; the buffer is
bounded, and past its bound the OLDEST facts are dropped and counted (`dropped`): a record lost
is regrettable, a gateway that runs out of memory while Redis is away is worse. Nothing here
raises into a caller.

`record()` may also be called from another thread (the worker's actors run on dramatiq's own
event loop thread): `collections.deque` appends and pops are atomic, and the counters it
touches are only written by one side each (`recorded` by callers, `emitted`/`errors` by the
task; `dropped` by both, where a lost increment under contention is tolerated).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from typing import Any

import msgpack
from redis.exceptions import RedisError

from gateway.domain.records import CallFact, Fact, SendFact, ThreadFact
from gateway.infra.rediskeys import RECORDS_STREAM

log = logging.getLogger(__name__)

FIELD = b"f"  # the one field of a stream entry: msgpack of `to_wire(fact)`

# `to_wire` without `dataclasses.asdict`, which deep-copies and costs ~60 us a fact: on the
# gateway's event loop, between AMI events, that is too much. The same dict (a unit test holds
# the two equal), built from the field names: ~4 us.
_KIND = {CallFact: "call", ThreadFact: "thread", SendFact: "send"}
_NAMES = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _KIND}


def wire(fact: Fact) -> dict[str, Any]:
    """`gateway.domain.records.to_wire(fact)`, fast."""
    cls = type(fact)
    data = {name: getattr(fact, name) for name in _NAMES[cls]}
    if cls is ThreadFact:
        data["tags"] = list(data["tags"])
    data["t"] = _KIND[cls]
    return data


def pack(fact: Fact) -> bytes:
    """A fact as a stream entry's value."""
    data: bytes = msgpack.packb(wire(fact), use_bin_type=True)
    return data


class StreamRecordSink:
    """Buffers facts and XADDs them to `gw:records` in batches, off the caller's path."""

    def __init__(
        self,
        client: Any,
        *,
        stream: str = RECORDS_STREAM,
        maxlen: int = 1_000_000,
        bound: int = 100_000,
        # Packing a batch holds the loop ~10 us a fact: 100 keeps that near a millisecond.
        batch_size: int = 100,
        idle_s: float = 0.05,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.client = client  # a redis.asyncio client (not the real-time wire)
        self.stream = stream
        self.maxlen = maxlen
        self.bound = bound
        self.batch_size = batch_size
        self.idle_s = idle_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._buffer: collections.deque[Fact] = collections.deque()
        self._in_flight = 0  # facts taken from the buffer, not yet acknowledged by Redis
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.recorded = 0
        self.emitted = 0
        self.dropped = 0
        self.errors = 0

    # ------------------------------------------------------------------ the callers' side
    def record(self, fact: Fact) -> None:
        """Buffer one fact (never blocks, never raises)."""
        if len(self._buffer) >= self.bound:
            try:
                self._buffer.popleft()
                self.dropped += 1
            except IndexError:  # emptied by the task meanwhile
                pass
        self._buffer.append(fact)
        self.recorded += 1

    @property
    def pending(self) -> int:
        return len(self._buffer) + self._in_flight

    def status(self) -> dict[str, int]:
        """For /health and /metrics."""
        return {
            "recorded": self.recorded,
            "emitted": self.emitted,
            "dropped": self.dropped,
            "pending": self.pending,
            "errors": self.errors,
        }

    # ------------------------------------------------------------------ the task
    def start(self) -> None:
        """Start the background task on the running loop."""
        if self._task is None:
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="records-emitter")

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Flush what can be flushed within `timeout_s`, then stop (what is left is logged)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._closing = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.pending:
            log.warning("records emitter stopped with %d facts not written to Redis", self.pending)

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything recorded so far is in Redis (tests, benches); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        # Polled: `record` may come from another thread, where an asyncio.Event cannot be set.
        while self.pending and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return not self.pending

    async def _run(self) -> None:
        backoff = self.backoff_initial_s
        while True:
            if not self._buffer:
                if self._closing:
                    return
                await asyncio.sleep(self.idle_s)
                continue
            batch = self._take()
            try:
                await self._send(batch)
            except (RedisError, OSError) as exc:
                self._put_back(batch)
                self.errors += 1
                if self._closing and backoff >= self.backoff_max_s:
                    return  # stop() bounds this anyway; no point hammering a Redis that is away
                log.warning("records: %d facts not sent to Redis (%s); retrying in %.1f s", len(batch), exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(self.backoff_max_s, backoff * 2)
                continue
            except asyncio.CancelledError:
                self._put_back(batch)
                raise
            except Exception:  # a bug (an unpackable fact) must not stop the records for good
                self._in_flight = 0
                self.errors += 1
                log.exception("records: a batch of %d facts could not be encoded; dropped", len(batch))
                self.dropped += len(batch)
                continue
            self._in_flight = 0
            self.emitted += len(batch)
            backoff = self.backoff_initial_s

    def _take(self) -> list[Fact]:
        batch: list[Fact] = []
        buffer = self._buffer
        while buffer and len(batch) < self.batch_size:
            batch.append(buffer.popleft())
        self._in_flight = len(batch)
        return batch

    def _put_back(self, batch: list[Fact]) -> None:
        """A batch Redis did not take goes back to the front, in order; past the bound the
        oldest go."""
        self._in_flight = 0
        self._buffer.extendleft(reversed(batch))
        while len(self._buffer) > self.bound:
            self._buffer.popleft()
            self.dropped += 1

    async def _send(self, batch: list[Fact]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for fact in batch:
                pipe.xadd(self.stream, {FIELD: pack(fact)}, maxlen=self.maxlen, approximate=True)
            await pipe.execute()
