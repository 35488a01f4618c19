"""From the stream `gw:records` into the SQL store: `RecordsWriter`; and replay's `DirectRecordSink`.

The writer is a consumer of the group "records": it reads batches (XREADGROUP, blocking about a
second), writes them with `RecordsStore.write` (one transaction, idempotent), then acknowledges
and deletes them (XACK + XDEL in one round trip), so the stream holds only what is not written
yet and its length is the writer's lag.

A crash between the write and the acknowledgement leaves the entries pending for this consumer:
on start the writer first reads its own pending entries again (id "0") and writes them again;
the store recognises them (each fact's key) and counts them once. Entries of a consumer that
went away (another host, another name) are claimed after `claim_idle_s` (XAUTOCLAIM).

An entry that does not decode (not msgpack, not a fact of this release) is logged without its
content and acknowledged (`bad`): keeping it would block nothing but would be retried forever.
A store that fails (database down, locked) keeps the batch pending and is retried with backoff:
nothing is acknowledged that is not written.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any, Protocol

import msgpack
from redis.exceptions import ResponseError

from gateway.domain.records import BadFact, Fact, from_wire
from gateway.infra.rediskeys import RECORDS_STREAM
from gateway.records.emitter import FIELD

log = logging.getLogger(__name__)

GROUP = "records"


class FactStore(Protocol):
    """What the writer needs of `gateway.records.store.RecordsStore`."""

    async def write(self, facts: Sequence[Fact]) -> Any: ...


def _written(counts: Any) -> tuple[int, int]:
    """(new rows, duplicates) of a `WriteCounts`."""
    new = int(getattr(counts, "calls", 0)) + int(getattr(counts, "events", 0)) + int(getattr(counts, "sends", 0))
    return new, int(getattr(counts, "duplicates", 0))


def decode(fields: dict[bytes, bytes]) -> Fact:
    """The fact of one stream entry; `BadFact` when it is not one."""
    raw = fields.get(FIELD)
    if raw is None:
        raise BadFact("no fact field")
    try:
        data = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadFact(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise BadFact("not a map")
    return from_wire(data)


class RecordsWriter:
    """Drains `gw:records` into the store in batches (start()/stop(), or `run_once` in tests)."""

    def __init__(
        self,
        client: Any,
        store: FactStore,
        batch_size: int = 1000,
        *,
        stream: str = RECORDS_STREAM,
        consumer: str | None = None,
        block_ms: int = 1000,
        claim_idle_s: float = 300.0,
        linger_s: float = 0.5,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.client = client  # a redis.asyncio client with a socket timeout above `block_ms`
        self.store = store
        self.batch_size = batch_size
        self.stream = stream
        # One name per host: a restarted worker finds its own pending entries under it.
        self.consumer = consumer or f"writer@{socket.gethostname()}"
        self.block_ms = block_ms
        self.claim_idle_s = claim_idle_s
        self.linger_s = linger_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._recovered = False
        self._next_recovery = 0.0
        self.written = 0  # facts newly stored
        self.duplicates = 0  # facts the store had already (a re-read after a crash, a resend)
        self.batches = 0
        self.bad = 0
        self.errors = 0
        self.lag = 0  # entries in the stream not yet written (unread + pending): XLEN, entries are deleted once written

    def status(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "duplicates": self.duplicates,
            "batches": self.batches,
            "bad": self.bad,
            "errors": self.errors,
            "lag": self.lag,
            "running": self._task is not None and not self._task.done(),
        }

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="records-writer")

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Finish the batch in hand within `timeout_s`; what is not acknowledged stays pending."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stopping:
            try:
                handled = await self.run_once()
                backoff = self.backoff_initial_s
                if 0 < handled < self.batch_size and self.linger_s > 0:
                    # A short batch: let the next one fill. Each batch costs its round trips and
                    # five statements whatever its size (0.58 ms of CPU per fact in batches of
                    # 40, 0.15 ms in batches of 1,000); the archive is not in a hurry.
                    await asyncio.sleep(self.linger_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or the database away: wait, then try again
                self.errors += 1
                log.warning("records writer: %s; retrying in %.1f s", _brief(exc), backoff)
                await asyncio.sleep(backoff)
                backoff = min(self.backoff_max_s, backoff * 2)

    # ------------------------------------------------------------------ one step
    async def ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):  # the group exists already: fine
                raise

    async def run_once(self) -> int:
        """One batch: this consumer's pending entries first (after a start), then new ones.
        Returns how many entries were handled (0: nothing to do within the block time)."""
        if not self._recovered or time.monotonic() >= self._next_recovery:
            # At start, and again every `claim_idle_s`: a writer of another worker that died
            # while this one runs leaves its entries pending; they are claimed, then written.
            await self.ensure_group()
            await self._claim_abandoned()
            while True:  # what this consumer read but never acknowledged (a crash mid-batch)
                entries = await self._read("0", block=False)
                if not entries:
                    break
                await self._handle(entries)
            self._recovered = True
            self._next_recovery = time.monotonic() + self.claim_idle_s
        entries = await self._read(">", block=True)
        if entries:
            await self._handle(entries)
        self.lag = int(await self.client.xlen(self.stream))
        return len(entries)

    async def _claim_abandoned(self) -> None:
        """Entries another consumer read and left pending for `claim_idle_s` (it died)."""
        start = "0-0"
        while True:
            reply = await self.client.xautoclaim(
                self.stream,
                GROUP,
                self.consumer,
                int(self.claim_idle_s * 1000),
                start_id=start,
                count=self.batch_size,
            )  # (not JUSTID: redis-py then drops the cursor from the reply)
            start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            if start == "0-0":
                return

    async def _read(self, from_id: str, *, block: bool) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = await self.client.xreadgroup(
            GROUP,
            self.consumer,
            {self.stream: from_id},
            count=self.batch_size,
            block=self.block_ms if block else None,
        )
        if not reply:
            return []
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        for _stream, items in reply:
            # A pending entry deleted meanwhile comes back with no fields (None): acknowledge it.
            entries.extend((entry_id, fields or {}) for entry_id, fields in items)
        return entries

    async def _handle(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        facts: list[Fact] = []
        for entry_id, fields in entries:
            if not fields:
                continue
            try:
                facts.append(decode(fields))
            except BadFact as exc:
                self.bad += 1
                log.error("records writer: entry %s is not a fact (%s); acknowledged and dropped", entry_id, exc)
        if facts:
            await self._write(facts)
        ids = [entry_id for entry_id, _ in entries]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            await pipe.execute()
        self.batches += 1

    async def _write(self, facts: list[Fact]) -> None:
        """Write until the store takes it (or the writer is stopped: then nothing is acknowledged)."""
        backoff = self.backoff_initial_s
        while True:
            try:
                counts = await self.store.write(facts)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                if self._stopping:
                    raise
                log.warning(
                    "records writer: %d facts not written (%s); retrying in %.1f s", len(facts), _brief(exc), backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(self.backoff_max_s, backoff * 2)
                continue
            new, duplicates = _written(counts)
            self.written += new
            self.duplicates += duplicates
            return


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class DirectRecordSink:
    """Replay's `RecordSink`: facts straight into a store, in batches, on the owner's loop.

    `record()` appends (from any thread: deque appends are atomic) and, on the loop it was
    started on, schedules a write once a batch is full; `flush()` writes what is left."""

    def __init__(self, store: FactStore, batch_size: int = 500) -> None:
        self.store = store
        self.batch_size = batch_size
        self._buffer: collections.deque[Fact] = collections.deque()
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.recorded = 0
        self.written = 0
        self.duplicates = 0
        self.errors = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def record(self, fact: Fact) -> None:
        self._buffer.append(fact)
        self.recorded += 1
        if len(self._buffer) >= self.batch_size and self._loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                return
            if running is self._loop:
                task = running.create_task(self._write_some())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _write_some(self) -> None:
        async with self._lock:
            while self._buffer:
                batch: list[Fact] = []
                while self._buffer and len(batch) < self.batch_size * 4:
                    batch.append(self._buffer.popleft())
                try:
                    counts = await self.store.write(batch)
                except Exception:
                    self.errors += 1
                    log.exception("records: %d facts not written", len(batch))
                    continue
                new, duplicates = _written(counts)
                self.written += new
                self.duplicates += duplicates

    async def flush(self) -> None:
        """Write everything recorded so far."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._write_some()

    def status(self) -> dict[str, int]:
        return {
            "recorded": self.recorded,
            "written": self.written,
            "duplicates": self.duplicates,
            "pending": len(self._buffer),
            "errors": self.errors,
        }
