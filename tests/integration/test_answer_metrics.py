"""The answer-rate Prometheus series: real scrapes of a real registry over both databases,
the 60 s cache, and a scrape that does not wait for a database that is locked."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from gateway.records.metrics import METRIC_NAMES, AnswerRateCollector, register
from gateway.records.store import RecordsStore
from gateway.sim.pgproc import PostgresProcess
from tests.integration.test_reports import at, call, loaded
from tests.support.records import migrated

ROOT = Path(__file__).resolve().parents[2]
NOW = at("2026-11-30", 12)  # "today" for these tests


def facts_in_windows() -> list[object]:
    return [
        call("2026-11-30", "civil-passport", "delivered", 4),  # today
        call("2026-11-30", "civil-passport", "delivered", None),
        call("2026-11-27", "civil-passport", "delivered", 6),  # last 7 days
        call("2026-11-10", "civil-passport", "not_subscribed", None),  # last 30 days
        call("2026-11-10", "tax", "delivered", 3),
        call("2026-10-15", "tax", "delivered", 3),  # older: in no window
    ]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def series(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> dict[tuple[str, str, str], float]:
    return {
        (dict(labels)["department"], dict(labels)["lettering"], dict(labels)["window"]): value
        for (n, labels), value in found.items()
        if n == name
    }


@pytest.fixture
def collector_for(records_url: str) -> Iterator[tuple[str, AnswerRateCollector, Clock]]:
    loaded(records_url, facts_in_windows())  # type: ignore[arg-type]
    clock = Clock()
    collector = AnswerRateCollector(records_url, clock=clock, now=lambda: NOW)
    yield records_url, collector, clock
    collector.close()


def test_windows_from_the_rollups(collector_for: tuple[str, AnswerRateCollector, Clock]) -> None:
    _url, collector, _clock = collector_for
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    found = scrape(registry)
    assert series(found, "gateway_answer_calls") == {
        ("civil-passport", "delivered", "today"): 2,
        ("civil-passport", "delivered", "7d"): 3,
        ("civil-passport", "delivered", "30d"): 3,
        ("civil-passport", "not_subscribed", "30d"): 1,
        ("tax", "delivered", "30d"): 1,
    }
    assert series(found, "gateway_answer_answered") == {
        ("civil-passport", "delivered", "today"): 1,
        ("civil-passport", "delivered", "7d"): 2,
        ("civil-passport", "delivered", "30d"): 2,
        ("civil-passport", "not_subscribed", "30d"): 0,
        ("tax", "delivered", "30d"): 1,
    }
    assert found[("gateway_answer_scrape_timeouts_total", ())] == 0
    assert found[("gateway_answer_age_seconds", ())] == 0


def test_figures_are_cached_for_a_minute(collector_for: tuple[str, AnswerRateCollector, Clock]) -> None:
    url, collector, clock = collector_for
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    first = series(scrape(registry), "gateway_answer_calls")
    loaded(url, [call("2026-11-30", "tax", "delivered", 2)])
    clock.t += 30
    cached = scrape(registry)
    assert series(cached, "gateway_answer_calls") == first
    assert cached[("gateway_answer_age_seconds", ())] == 30
    clock.t += 31
    assert series(scrape(registry), "gateway_answer_calls")[("tax", "delivered", "today")] == 1


def test_register_on_a_registry(sqlite_records_url: str) -> None:
    """`register` as the worker calls it: real time, a store object."""
    import time

    from gateway.domain.records import seoul_day

    today = seoul_day(time.time()).isoformat()
    loaded(sqlite_records_url, [call(today, "tax", "delivered", 5)])
    registry = CollectorRegistry(auto_describe=False)
    collector = register(registry, RecordsStore(sqlite_records_url))
    try:
        found = scrape(registry)
    finally:
        collector.close()
    assert series(found, "gateway_answer_calls")[("tax", "delivered", "today")] == 1
    names = {name for name, _ in found}
    assert set(METRIC_NAMES) <= names | {n.removesuffix("_total") for n in names}


def test_a_database_without_schema_counts_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.sqlite3").touch()
    clock = Clock()
    collector = AnswerRateCollector(f"sqlite:///{tmp_path / 'empty.sqlite3'}", clock=clock, now=lambda: NOW)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        found = scrape(registry)
        assert series(found, "gateway_answer_calls") == {}
        assert found[("gateway_answer_scrape_errors_total", ())] == 1
        assert found[("gateway_answer_age_seconds", ())] == -1
        clock.t += 10
        assert scrape(registry)[("gateway_answer_scrape_errors_total", ())] == 1  # retried after ttl_s only
        clock.t += 60
        assert scrape(registry)[("gateway_answer_scrape_errors_total", ())] == 2
    finally:
        collector.close()


def test_a_locked_database_serves_the_cached_figures(pg_server: PostgresProcess) -> None:
    url = migrated(pg_server.create_database("answer_metrics_locked"))
    loaded(url, facts_in_windows())  # type: ignore[arg-type]
    clock = Clock()
    collector = AnswerRateCollector(url, clock=clock, now=lambda: NOW, timeout_s=0.3)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        before = series(scrape(registry), "gateway_answer_calls")
        locked, release, finished = threading.Event(), threading.Event(), threading.Event()

        async def hold_lock() -> None:
            store = RecordsStore(url)
            try:
                async with store.engine.begin() as conn:
                    await conn.execute(text("LOCK TABLE answer_daily IN ACCESS EXCLUSIVE MODE"))
                    locked.set()
                    await asyncio.to_thread(release.wait, 60)
            finally:
                await store.close()
                finished.set()

        holder = threading.Thread(target=asyncio.run, args=(hold_lock(),), daemon=True)
        holder.start()
        assert locked.wait(30)
        clock.t += 120  # the cache is stale: the scrape queries, and the query waits for the lock
        during = scrape(registry)
        assert series(during, "gateway_answer_calls") == before
        assert during[("gateway_answer_scrape_timeouts_total", ())] == 1
        assert during[("gateway_answer_age_seconds", ())] == 120
        release.set()
        assert finished.wait(30)
        pending = collector._pending
        assert pending is not None
        pending.result(timeout=30)  # the query behind the lock completes
        after = scrape(registry)
        assert series(after, "gateway_answer_calls") == before
        assert after[("gateway_answer_age_seconds", ())] == 0  # fresh figures, read at the stale scrape
        assert after[("gateway_answer_scrape_timeouts_total", ())] == 1
    finally:
        release.set()
        collector.close()


def test_grafana_dashboard_uses_existing_metrics() -> None:
    """ops/grafana/answer-rate.json is valid JSON, and every gateway_* series it queries is
    either this collector's or named in the gateway's code (the records writer's, ...)."""
    board = json.loads((ROOT / "ops" / "grafana" / "answer-rate.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard queries nothing"
    used = {m for e in exprs for m in re.findall(r"\b(gateway_[a-z0-9_]+)", e)}
    assert {"gateway_answer_calls", "gateway_answer_answered"} <= used
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "gateway").rglob("*.py"))
    for name in sorted(used):
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert name in METRIC_NAMES or f'"{base}"' in source or f'"{name}"' in source, f"{name} is exposed nowhere"
