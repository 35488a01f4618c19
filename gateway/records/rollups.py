"""The monthly roll-ups, derived from the daily ones: the one place their SQL lives.

`answer_monthly` and `ring_monthly` are `answer_daily` and `ring_daily` summed per Seoul
calendar month ('YYYY-MM', the day's first seven characters). The writer keeps them in the
same transaction as the daily ones; migration 0003 and the benchmark's generator fill them
from the daily tables with `MONTHLY_BACKFILL` (plain SQL, the same on SQLite and PostgreSQL:
`substr` and `GROUP BY` only). A year's report then reads 12 months of monthly rows plus, at
most, the two partial months' daily rows (`split_period`).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection

# Fill the (empty) monthly tables from the daily ones. Statements, not a function, so callers
# holding a driver's own connection (the benchmark's sqlite3 and asyncpg loaders) run them too.
MONTHLY_BACKFILL: tuple[str, ...] = (
    "INSERT INTO answer_monthly (month, department, lettering, reason, calls, answered) "
    "SELECT substr(day, 1, 7), department, lettering, reason, SUM(calls), SUM(answered) "
    "FROM answer_daily GROUP BY substr(day, 1, 7), department, lettering, reason",
    "INSERT INTO ring_monthly (month, department, lettering, ring_s, answered) "
    "SELECT substr(day, 1, 7), department, lettering, ring_s, SUM(answered) "
    "FROM ring_daily GROUP BY substr(day, 1, 7), department, lettering, ring_s",
)


def backfill_monthly(conn: Connection) -> None:
    """Fill the empty monthly roll-ups from the daily ones, on `conn`'s transaction."""
    for statement in MONTHLY_BACKFILL:
        conn.execute(text(statement))


def month_of(day: str) -> str:
    """'YYYY-MM' of a 'YYYY-MM-DD' day (the monthly tables' key)."""
    return day[:7]


@dataclass(frozen=True, slots=True)
class Split:
    """A period of days cut for the roll-ups: the whole months `months` (first, last; both
    'YYYY-MM', both included) read from the monthly tables, and the days outside them,
    `days` (pairs of 'YYYY-MM-DD', both ends included), read from the daily tables."""

    months: tuple[str, str] | None
    days: tuple[tuple[str, str], ...]


def split_period(since: str, until: str) -> Split:
    """Cut [since, until] (Seoul days, both included) into whole months and edge days.

    A month is whole when the period covers its first and its last day. A period with no
    whole month (or days that are not ISO dates) is all days: the daily tables answer it."""
    try:
        lo, hi = date.fromisoformat(since), date.fromisoformat(until)
    except ValueError:
        return Split(None, ((since, until),))
    # The daily tables compare text: only the canonical form ('2026-11-01', not '20261101',
    # which Python also parses) means the same days to both.
    if lo > hi or lo.isoformat() != since or hi.isoformat() != until:
        return Split(None, ((since, until),))
    first = lo if lo.day == 1 else _next_month(lo)
    end = date(hi.year, hi.month, calendar.monthrange(hi.year, hi.month)[1])
    last = hi.replace(day=1) if hi == end else _prev_month(hi)  # the last whole month's 1st
    if first > last:
        return Split(None, ((since, until),))
    days: list[tuple[str, str]] = []
    if lo < first:
        days.append((since, (first - timedelta(days=1)).isoformat()))
    after = _next_month(last)
    if after <= hi:
        days.append((after.isoformat(), until))
    return Split((first.isoformat()[:7], last.isoformat()[:7]), tuple(days))


def _next_month(d: date) -> date:
    """The first day of the month after `d`'s."""
    return date(d.year + (d.month == 12), d.month % 12 + 1, 1)


def _prev_month(d: date) -> date:
    """The first day of the month before `d`'s."""
    return date(d.year - (d.month == 1), (d.month - 2) % 12 + 1, 1)
