"""The monthly roll-ups on both databases: kept by the writer as the daily ones summed per month,
backfilled by migration 0003, and the answer-rate report read from them (whole months) and the
daily ones (edge days) is identical to the report read from the daily ones alone."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from gateway.domain.records import SEOUL, CallFact
from gateway.records import reports
from gateway.records.rollups import split_period
from gateway.records.store import RecordsStore

FIRST = date(2025, 11, 20)  # the facts span 2025-11-20 .. 2027-01-09: partial months at both ends
SPAN_DAYS = 416

DAILY_BY_MONTH = (
    "SELECT substr(day, 1, 7) AS m, department, lettering, reason, SUM(calls), SUM(answered) "
    "FROM answer_daily GROUP BY substr(day, 1, 7), department, lettering, reason ORDER BY 1, 2, 3, 4"
)
MONTHLY = "SELECT month, department, lettering, reason, calls, answered FROM answer_monthly ORDER BY 1, 2, 3, 4"
RING_DAILY_BY_MONTH = (
    "SELECT substr(day, 1, 7) AS m, department, lettering, ring_s, SUM(answered) "
    "FROM ring_daily GROUP BY substr(day, 1, 7), department, lettering, ring_s ORDER BY 1, 2, 3, 4"
)
RING_MONTHLY = "SELECT month, department, lettering, ring_s, answered FROM ring_monthly ORDER BY 1, 2, 3, 4"


def facts(count: int, seed: int) -> list[CallFact]:
    """Calls spread over 14 months, several departments, outcomes, reasons and ring times; a few
    started just before and after Seoul midnight (the day is Seoul's, not UTC's)."""
    rnd = random.Random(seed)
    out = []
    for n in range(count):
        day = FIRST + timedelta(days=rnd.randrange(SPAN_DAYS))
        hour, minute = rnd.choice([(0, 0), (9, 30), (14, 5), (23, 59)])
        start = datetime(day.year, day.month, day.day, hour, minute, tzinfo=SEOUL).timestamp()
        lettering = rnd.choice(["delivered", "delivered", "unsupported_device", "failed", "skipped"])
        answered = rnd.random() < 0.6
        ring = rnd.choice([0.4, 3.0, 5.9, 12.0, 31.5, 200.0])
        out.append(
            CallFact(
                pbx="hall",
                call_id=f"m{seed}-{n}",
                direction=rnd.choice(["outbound"] * 5 + ["inbound"]),
                extension="2001",
                department=rnd.choice(["civil", "tax", "welfare", ""]),
                party_hash="h" * 16,
                party_kind=rnd.choice(["mobile"] * 5 + ["landline"]),
                disposition="answered" if answered else "no_answer",
                cause="16",
                started_at=start,
                answered_at=start + ring if answered else None,
                ended_at=start + ring + 60,
                ring_seconds=ring,
                talk_seconds=60.0 if answered else 0.0,
                lettering=lettering,
                lettering_reason=rnd.choice(["opted_out", "quiet_hours"]) if lettering == "skipped" else "",
            )
        )
    return out


async def rows(store: RecordsStore, sql: str) -> list[tuple[Any, ...]]:
    async with store.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql))).all()]


@pytest.fixture
async def store(records_url: str) -> AsyncIterator[RecordsStore]:
    s = RecordsStore(records_url)
    try:
        all_facts = facts(400, seed=15)
        # Overlapping batches and a redelivery: only newly inserted calls may count, monthly too.
        await s.write(all_facts[:250])
        await s.write(all_facts[200:])
        await s.write(all_facts[:50] + all_facts[:50])
        yield s
    finally:
        await s.close()


async def test_monthly_rollups_are_the_daily_ones_summed(store: RecordsStore) -> None:
    monthly = await rows(store, MONTHLY)
    assert len({r[0] for r in monthly}) == 15  # 2025-11 .. 2027-01
    assert monthly == await rows(store, DAILY_BY_MONTH)
    assert await rows(store, RING_MONTHLY) == await rows(store, RING_DAILY_BY_MONTH)
    counted = "SELECT COUNT(*) FROM calls WHERE direction = 'outbound' AND party_kind = 'mobile'"
    assert sum(r[4] for r in monthly) == (await rows(store, counted))[0][0]


def periods(seed: int) -> list[tuple[str, str]]:
    """Month edges, single days, spans of a year and more, and random periods."""
    rnd = random.Random(seed)
    fixed = [
        ("2025-11-01", "2027-01-31"),  # everything, whole months at the data's edges
        ("2026-01-01", "2026-12-31"),
        ("2025-12-01", "2025-12-31"),
        ("2026-02-01", "2026-02-28"),
        ("2026-02-01", "2026-02-27"),
        ("2026-02-02", "2026-02-28"),
        ("2026-03-31", "2026-04-01"),
        ("2026-03-31", "2026-05-01"),
        ("2025-11-20", "2025-11-20"),
        ("2027-01-09", "2027-01-09"),
        ("2026-06-15", "2026-06-15"),
        ("2025-11-21", "2027-01-08"),
        ("2024-01-01", "2024-12-31"),  # before the data: empty
        ("2026-07-01", "2026-06-30"),  # backwards: empty
    ]
    out = list(fixed)
    days = [FIRST - timedelta(days=40) + timedelta(days=i) for i in range(SPAN_DAYS + 80)]
    month_starts = [d for d in days if d.day == 1]
    month_ends = [d for d in days if (d + timedelta(days=1)).day == 1]
    while len(out) < 90:
        lo = rnd.choice(month_starts + days) if rnd.random() < 0.5 else rnd.choice(days)
        hi = rnd.choice([d for d in month_ends + days if d >= lo] or [lo])
        out.append((lo.isoformat(), hi.isoformat()))
    return out


async def test_reports_from_monthly_and_daily_equal_daily_only(store: RecordsStore) -> None:
    used_months = 0
    non_empty = 0
    for n, (since, until) in enumerate(periods(seed=15)):
        by: reports.RateBy = "department" if n % 2 else "lettering"
        departments = ["civil", "tax"] if n % 5 == 0 else []
        fast = await reports.answer_rate(store.engine, since, until, by, departments)
        slow = await reports.answer_rate(store.engine, since, until, by, departments, monthly=False)
        assert fast == slow, (since, until, by, departments)
        used_months += split_period(since, until).months is not None
        non_empty += fast[-1].calls > 0
    # The comparison means something: most periods had calls, many were read from months.
    assert non_empty >= 70
    assert used_months >= 30


async def test_by_day_reads_the_daily_rollups(store: RecordsStore) -> None:
    """By day the rows are days; the monthly tables cannot answer it (and are not asked)."""
    rows_ = await reports.answer_rate(store.engine, "2026-01-01", "2026-01-31", "day")
    assert rows_ == await reports.answer_rate(store.engine, "2026-01-01", "2026-01-31", "day", monthly=False)
    assert all(r.key.startswith("2026-01-") for r in rows_[:-1])


async def test_migration_0003_backfills_the_months_from_the_days(empty_records_url: str) -> None:
    """A release-0002 database's daily roll-ups (no raw calls needed) become monthly rows."""
    s = RecordsStore(empty_records_url)
    rnd = random.Random(3)
    answer_rows: dict[tuple[str, str, str, str], tuple[int, int]] = {}
    ring_rows: dict[tuple[str, str, str, int], int] = {}
    for _ in range(300):
        day = (date(2026, 1, 1) + timedelta(days=rnd.randrange(120))).isoformat()
        dep, let = rnd.choice(["civil", "tax"]), rnd.choice(["delivered", "skipped"])
        calls = rnd.randrange(1, 50)
        answer_rows[(day, dep, let, "opted_out" if let == "skipped" else "")] = (calls, rnd.randrange(calls + 1))
        ring_rows[(day, dep, let, rnd.randrange(181))] = rnd.randrange(1, 30)
    try:
        await s.migrate_to("0002")
        async with s.engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO answer_daily VALUES (:d, :dep, :let, :why, :c, :a)"),
                [
                    {"d": d, "dep": dep, "let": let, "why": why, "c": c, "a": a}
                    for (d, dep, let, why), (c, a) in answer_rows.items()
                ],
            )
            await conn.execute(
                text("INSERT INTO ring_daily VALUES (:d, :dep, :let, :s, :n)"),
                [{"d": d, "dep": dep, "let": let, "s": sec, "n": n} for (d, dep, let, sec), n in ring_rows.items()],
            )
        assert (await s.migrate()).current == "0004"  # (and on to the head)
        expected: dict[tuple[str, str, str, str], list[int]] = {}
        for (d, dep, let, why), (c, a) in answer_rows.items():
            agg = expected.setdefault((d[:7], dep, let, why), [0, 0])
            agg[0] += c
            agg[1] += a
        assert await rows(s, MONTHLY) == sorted((*k, c, a) for k, (c, a) in expected.items())
        ring_expected: dict[tuple[str, str, str, int], int] = {}
        for (d, dep, let, sec), n in ring_rows.items():
            ring_expected[(d[:7], dep, let, sec)] = ring_expected.get((d[:7], dep, let, sec), 0) + n
        assert await rows(s, RING_MONTHLY) == sorted((*k, n) for k, n in ring_expected.items())
        assert {r[0] for r in await rows(s, MONTHLY)} == {"2026-01", "2026-02", "2026-03", "2026-04"}
    finally:
        await s.close()
