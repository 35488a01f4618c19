"""The worker's side of the SQL archive, on a thread of its own with its own event loop.

`gateway worker` has no event loop of its own (dramatiq runs threads, and one loop for the
async actors that must not be held up by SQL), so the records get one more thread: the
`RecordsWriter` draining `gw:records` into the store, and the `StreamRecordSink` the actors
hand their facts to (sends' states, automatic replies). Both use one asyncio Redis client made
for this loop. With a `purge` factory (the worker gives `PurgeScheduler.from_config`), the daily
retention purge runs on this loop too: it shares the store's engine, and a long purge holds up
neither the actors' sends nor the writer (its deletes go in short chunks).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.outbox.store import connect
from gateway.records.emitter import StreamRecordSink
from gateway.records.retention import PurgeScheduler
from gateway.records.store import RecordsStore
from gateway.records.writer import RecordsWriter

log = logging.getLogger(__name__)


class RecordsThread:
    """start() / stop(timeout_s); `emitter` is the worker runtime's `RecordSink`."""

    def __init__(
        self,
        redis_url: str,
        records_url: str,
        *,
        batch_size: int = 1000,
        stream_maxlen: int = 1_000_000,
        purge: Callable[[AsyncEngine, Any], PurgeScheduler] | None = None,
    ):
        self.url = records_url  # the records database (also what the answer-rate metrics read)
        # Made here, used only on the thread's loop (redis-py binds its pool to the loop that
        # first uses it). The socket timeout outlasts the writer's blocking read (1 s).
        self.client = connect(redis_url, timeout_s=5.0, max_connections=4)
        self.emitter = StreamRecordSink(self.client, maxlen=stream_maxlen)
        self.batch_size = batch_size
        self.writer: RecordsWriter | None = None
        self._purge_factory = purge
        self.purge: PurgeScheduler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._budget_s = 3.0
        self.error = ""

    def status(self) -> dict[str, Any]:
        """For the worker's /health."""
        return {
            "emitter": self.emitter.status(),
            "writer": self.writer.status() if self.writer else None,
            "purge": self.purge.status() if self.purge else None,
            "error": self.error,
        }

    def start(self, timeout_s: float = 5.0) -> None:
        self._thread = threading.Thread(target=self._main, name="records", daemon=True)
        self._thread.start()
        self._started.wait(timeout_s)

    def stop(self, timeout_s: float) -> bool:
        """Flush the emitter and finish the writer's batch within `timeout_s`; True when done."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is None or stop is None or thread is None:
            return True
        self._budget_s = max(0.2, timeout_s - 0.1)
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # the loop is closed already
            return True
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("records thread did not stop within %.1f s", timeout_s)
            return False
        return True

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:  # logged; the worker's jobs go on without the archive
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("records thread ended")
        finally:
            self._started.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store = RecordsStore(self.url)
        self.writer = RecordsWriter(self.client, store, self.batch_size)
        self.emitter.start()
        self.writer.start()
        if self._purge_factory is not None:
            self.purge = self._purge_factory(store.engine, self.client)
            self.purge.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            # The emitter first: the actors' last facts go to the stream, then the writer
            # finishes its batch (what it does not write stays in the stream for next time).
            # A purge under way is cancelled: each chunk is its own transaction, and what it
            # did not reach is still past its cutoff at the next run.
            if self.purge is not None:
                await self.purge.stop()
            await self.emitter.stop(self._budget_s * 0.4)
            await self.writer.stop(self._budget_s * 0.5)
            await store.close()
            await self.client.aclose()
