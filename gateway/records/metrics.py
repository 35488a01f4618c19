"""Answer rates as Prometheus series, read from the daily roll-ups at scrape time.

`register(registry, store)` adds an `AnswerRateCollector` to a /metrics registry. At a scrape it
serves, per department, lettering outcome and window (today, the last 7 and 30 Seoul days, today
included), the outbound calls to mobiles and the answered ones:

    gateway_answer_calls{department,lettering,window}
    gateway_answer_answered{department,lettering,window}

(the rate is sum(answered) / sum(calls) in PromQL, so that a dashboard can add departments up).
The query result is kept for `ttl_s` (60 s): scrapes every 15 s cost one small query a minute.
A scrape never waits more than `timeout_s` (1 s) for the database: past that it serves the last
figures (their age in `gateway_answer_age_seconds`), counts the timeout, and the query finishes
in the background for a later scrape.

Scrapes run on the HTTP server's threads (the gateway's in `asyncio.to_thread`, the worker's on
its threading server), which have no event loop; the store's async engine is bound to the loop
that uses it. So the collector keeps a store of its own (same URL) on one private daemon thread
with its own loop, and a scrape waits on a concurrent future with a timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from gateway.domain.records import seoul_day
from gateway.records.reports import NONE_KEY
from gateway.records.schema import answer_daily
from gateway.records.store import RecordsStore

log = logging.getLogger(__name__)

WINDOWS = (("today", 1), ("7d", 7), ("30d", 30))  # label, days ending today (Seoul)

# {(department, lettering, window): (calls, answered)}
Figures = dict[tuple[str, str, str], tuple[int, int]]

METRIC_NAMES = (
    "gateway_answer_calls",
    "gateway_answer_answered",
    "gateway_answer_age_seconds",
    "gateway_answer_scrape_timeouts_total",
    "gateway_answer_scrape_errors_total",
)


class HasUrl(Protocol):
    url: str


async def read_figures(store: RecordsStore, today: date) -> Figures:
    """The windows' figures from `answer_daily`: one grouped query over the last 30 days."""
    first = (today - timedelta(days=max(days for _, days in WINDOWS) - 1)).isoformat()
    query = (
        select(
            answer_daily.c.day,
            answer_daily.c.department,
            answer_daily.c.lettering,
            func.sum(answer_daily.c.calls),
            func.sum(answer_daily.c.answered),
        )
        .where(answer_daily.c.day >= first, answer_daily.c.day <= today.isoformat())
        .group_by(answer_daily.c.day, answer_daily.c.department, answer_daily.c.lettering)
    )
    starts = {label: (today - timedelta(days=days - 1)).isoformat() for label, days in WINDOWS}
    out: dict[tuple[str, str, str], list[int]] = {}
    async with store.engine.connect() as conn:
        for day, department, lettering, calls, answered in (await conn.execute(query)).all():
            for label, start in starts.items():
                if str(day) >= start:
                    agg = out.setdefault((str(department) or NONE_KEY, str(lettering), label), [0, 0])
                    agg[0] += int(calls or 0)
                    agg[1] += int(answered or 0)
    return {key: (c, a) for key, (c, a) in out.items()}


class AnswerRateCollector(Collector):
    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 60.0,
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.ttl_s, self.timeout_s = ttl_s, timeout_s
        self.clock, self.now = clock, now
        self.figures: Figures = {}
        self.read_at: float | None = None  # clock() of the figures served
        self.timeouts = 0
        self.errors = 0
        self._pending: concurrent.futures.Future[Figures] | None = None
        self._pending_since = 0.0
        self._failed_at: float | None = None  # a failed read is retried after ttl_s, not every scrape
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: RecordsStore | None = None

    # -- the private loop -------------------------------------------------------------------

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="answer-rate-metrics", daemon=True).start()
            self._loop = loop
            self._store = RecordsStore(self.url)
        return self._loop

    async def _read(self) -> Figures:
        assert self._store is not None
        return await read_figures(self._store, seoul_day(self.now()))

    def close(self) -> None:
        """Stop the private loop and its connections (tests; a process exit needs nothing)."""
        loop, store = self._loop, self._store
        if loop is None or store is None:
            return
        with self._lock:
            self._loop = self._store = None
        try:
            asyncio.run_coroutine_threadsafe(store.close(), loop).result(timeout=5)
        except Exception:  # closing is best effort
            log.debug("answer-rate metrics: closing the store failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)

    # -- the figures ------------------------------------------------------------------------

    def _absorb(self, future: concurrent.futures.Future[Figures]) -> None:
        """Take a finished query's figures (or count its failure)."""
        self._pending = None
        try:
            self.figures = future.result()
            self.read_at = self._pending_since
            self._failed_at = None
        except Exception as exc:
            self.errors += 1
            self._failed_at = self._pending_since
            log.warning("answer-rate metrics: reading the roll-ups failed: %s", exc)

    def refresh(self) -> Figures:
        """The figures to serve: cached while fresh, else a new query waited for `timeout_s`."""
        with self._lock:
            if self._pending is not None and self._pending.done():
                self._absorb(self._pending)
            stamps = [t for t in (self.read_at, self._failed_at) if t is not None]
            if stamps and self.clock() - max(stamps) < self.ttl_s:
                return self.figures
            if self._pending is None:
                self._pending_since = self.clock()
                self._pending = asyncio.run_coroutine_threadsafe(self._read(), self._start())
            done, _ = concurrent.futures.wait([self._pending], timeout=self.timeout_s)
            if not done:
                # Still running: it is kept and taken by a later scrape; this one serves the last.
                self.timeouts += 1
                log.warning(
                    "answer-rate metrics: the records database took over %.1f s; serving cached figures",
                    self.timeout_s,
                )
                return self.figures
            self._absorb(self._pending)
            return self.figures

    def collect(self) -> Iterator[Metric]:
        figures = self.refresh()
        labels = ["department", "lettering", "window"]
        calls = GaugeMetricFamily(
            "gateway_answer_calls", "outbound calls to Korean mobiles (records roll-ups), per window", labels=labels
        )
        answered = GaugeMetricFamily(
            "gateway_answer_answered", "of gateway_answer_calls, those the citizen answered", labels=labels
        )
        for (department, lettering, window), (c, a) in sorted(figures.items()):
            calls.add_metric([department, lettering, window], c)
            answered.add_metric([department, lettering, window], a)
        yield calls
        yield answered
        age = GaugeMetricFamily(
            "gateway_answer_age_seconds", "age of the answer-rate figures served (-1 before the first read)"
        )
        age.add_metric([], self.clock() - self.read_at if self.read_at is not None else -1.0)
        yield age
        timeouts = CounterMetricFamily(
            "gateway_answer_scrape_timeouts", "scrapes that served cached answer rates: the database was slow"
        )
        timeouts.add_metric([], self.timeouts)
        yield timeouts
        errors = CounterMetricFamily("gateway_answer_scrape_errors", "answer-rate reads that failed")
        errors.add_metric([], self.errors)
        yield errors


def register(
    registry: CollectorRegistry, store: HasUrl, *, ttl_s: float = 60.0, timeout_s: float = 1.0
) -> AnswerRateCollector:
    """Add the answer-rate series to `registry`, reading the database `store` uses (by its URL,
    on the collector's own thread). Keep the collector to `close()` it when the process stops."""
    collector = AnswerRateCollector(store.url, ttl_s=ttl_s, timeout_s=timeout_s)
    registry.register(collector)
    return collector
