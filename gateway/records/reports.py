"""The reports' queries: answer rates from the roll-ups, the duty/complaint inbox from
`messages`.

Answer rates read the roll-ups only, never `calls`: by department or outcome, the whole months
from `answer_monthly`/`ring_monthly` and the partial months' days from `answer_daily`/
`ring_daily` (a year's report reads 12 months plus at most ~60 days of rows, whatever the call
volume); by day, the daily ones. Days are Seoul calendar days, 'YYYY-MM-DD' text, both ends
included. The statistics are `gateway.domain.analytics`'s.

The inbox report reads the `messages` rows received in the period (one per citizen's message,
updated by its thread's later steps) and computes medians and percentiles in Python: the same
on SQLite and PostgreSQL, and a month's rows are few.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain.analytics import Comparison, RateRow, compare, median_from_histogram, percentile_from_values
from gateway.domain.records import LetteringKind
from gateway.records.rollups import Split, split_period
from gateway.records.schema import answer_daily, answer_monthly, messages, ring_daily, ring_monthly

RateBy = Literal["department", "day", "lettering"]
InboxBy = Literal["queue", "rule", "tag", "day"]

TOTAL = "total"  # the key of the last row of every report
NONE_KEY = "-"  # a message without a rule or tag, a call without a department

# The order lettering outcomes are listed in (the roll-ups may hold others from a newer release).
LETTERING_ORDER = [kind.value for kind in LetteringKind]

# An auto-reply counts as sent when its verdict is one of these; others (opted_out, duplicate,
# superseded, quiet hours...) were suppressed by the guard and are not counted as replied.
AUTO_REPLY_SENT = frozenset({"", "sent", "queued", "delivered"})


def _day(value: date | str) -> str:
    return value.isoformat() if isinstance(value, date) else value


async def answer_rate(
    engine: AsyncEngine,
    since: date | str,
    until: date | str,
    by: RateBy = "department",
    departments: Sequence[str] = (),
    *,
    monthly: bool = True,
) -> list[RateRow]:
    """Rows per department, day or lettering outcome (sorted), then the total row (`TOTAL`).

    With `by='lettering'` a skipped or failed outcome is split by its reason, keyed
    'skipped/landline'; its median ring time is the outcome's when all its calls share one
    reason and None otherwise (ring times are rolled up per outcome, not per reason).

    By department or outcome, the whole months of the period come from the monthly roll-ups
    and the partial months at its edges from the daily ones (`rollups.split_period`): the same
    sums, read from 12 rows a year instead of 365. `monthly=False` reads the daily roll-ups
    only (the tests compare the two)."""
    lo, hi = _day(since), _day(until)
    if by not in ("department", "day", "lettering"):
        raise ValueError(f"answer rate by {by!r}: use department, day or lettering")
    split = split_period(lo, hi) if monthly and by != "day" else Split(None, ((lo, hi),))
    sources: list[tuple[Table, Table, str, str, str]] = []  # answers, rings, period column, first, last
    if split.months is not None:
        sources.append((answer_monthly, ring_monthly, "month", *split.months))
    sources += [(answer_daily, ring_daily, "day", first, last) for first, last in split.days]

    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    total = [0, 0]
    reasons: dict[str, set[str]] = defaultdict(set)
    hists: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    all_hist: dict[int, int] = defaultdict(int)
    async with engine.connect() as conn:
        for answers, rings, period, first, last in sources:
            query = (
                select(answers.c[by], answers.c.reason, func.sum(answers.c.calls), func.sum(answers.c.answered))
                .where(answers.c[period] >= first, answers.c[period] <= last)
                .group_by(answers.c[by], answers.c.reason)
            )
            if departments:
                query = query.where(answers.c.department.in_(list(departments)))
            for key, reason, calls, answered in (await conn.execute(query)).all():
                base = str(key) or NONE_KEY
                row_key = f"{base}/{reason}" if by == "lettering" and reason else base
                reasons[base].add(str(reason))
                counts[row_key][0] += int(calls or 0)
                counts[row_key][1] += int(answered or 0)
                total[0] += int(calls or 0)
                total[1] += int(answered or 0)
            ring = select(rings.c[by], rings.c.ring_s, func.sum(rings.c.answered)).where(
                rings.c[period] >= first, rings.c[period] <= last
            )
            if departments:
                ring = ring.where(rings.c.department.in_(list(departments)))
            ring = ring.group_by(rings.c[by], rings.c.ring_s)
            for key, ring_s, answered in (await conn.execute(ring)).all():
                hists[str(key) or NONE_KEY][int(ring_s)] += int(answered or 0)
                all_hist[int(ring_s)] += int(answered or 0)

    def median_of(row_key: str) -> float | None:
        base, _, reason = row_key.partition("/")
        if reason and len(reasons[base]) > 1:
            return None
        return median_from_histogram(hists.get(base, {}))

    rows = [RateRow.of(k, c, a, median_of(k)) for k, (c, a) in sorted(counts.items(), key=_rate_sort_key(by))]
    rows.append(RateRow.of(TOTAL, total[0], total[1], median_from_histogram(all_hist)))
    return rows


def _rate_sort_key(by: RateBy) -> Callable[[tuple[str, list[int]]], tuple[int, str]]:
    def key(item: tuple[str, list[int]]) -> tuple[int, str]:
        name = item[0]
        if by == "lettering":
            base, _, reason = name.partition("/")
            rank = LETTERING_ORDER.index(base) if base in LETTERING_ORDER else len(LETTERING_ORDER)
            return rank, reason
        return 0, name

    return key


async def compare_periods(
    engine: AsyncEngine,
    before: tuple[date | str, date | str],
    after: tuple[date | str, date | str],
    by: RateBy = "department",
    departments: Sequence[str] = (),
) -> list[Comparison]:
    """Each key of either period (and the total, last) with its change from `before` to `after`.

    With `by='day'` the keys of two periods never meet; rows are then paired by position (the
    first day of each period, the second...), keyed 'after-day' and the totals compared."""
    first = await answer_rate(engine, before[0], before[1], by, departments)
    second = await answer_rate(engine, after[0], after[1], by, departments)
    if by == "day":
        days = list(zip(first[:-1], second[:-1], strict=False))
        pairs = [(b, a) for b, a in days] + [(first[-1], second[-1])]
        return [compare(b, a) for b, a in pairs]
    old = {row.key: row for row in first}
    new = {row.key: row for row in second}
    keys = [row.key for row in second if row.key != TOTAL]
    keys += [row.key for row in first if row.key not in new]
    out: list[Comparison] = []
    for key in [*keys, TOTAL]:
        b = old.get(key) or RateRow.of(key, 0, 0)
        a = new.get(key) or RateRow.of(key, 0, 0)
        out.append(compare(b, a))
    return out


@dataclass(frozen=True, slots=True)
class InboxRow:
    """One line of the duty/complaint report. Times are seconds; shares are fractions (0..1),
    None for a group without messages. A message with several tags counts under each tag (so
    the tag rows may add up to more than the total)."""

    key: str
    received: int
    auto_replied: int
    answered: int
    closed: int
    first_response_median_s: float | None
    first_response_p90_s: float | None
    close_median_s: float | None
    after_hours_share: float | None
    holiday_share: float | None

    @property
    def answered_share(self) -> float | None:
        return self.answered / self.received if self.received else None


@dataclass
class _Acc:
    received: int = 0
    auto_replied: int = 0
    after_hours: int = 0
    holiday: int = 0

    def __post_init__(self) -> None:
        self.responses: list[float] = []
        self.closes: list[float] = []

    def row(self, key: str) -> InboxRow:
        n = self.received
        return InboxRow(
            key=key,
            received=n,
            auto_replied=self.auto_replied,
            answered=len(self.responses),
            closed=len(self.closes),
            first_response_median_s=percentile_from_values(self.responses, 0.5),
            first_response_p90_s=percentile_from_values(self.responses, 0.9),
            close_median_s=percentile_from_values(self.closes, 0.5),
            after_hours_share=self.after_hours / n if n else None,
            holiday_share=self.holiday / n if n else None,
        )


def _group_keys(by: InboxBy, value: object) -> list[str]:
    """The groups a message counts in: its one queue, rule or day, or each of its tags."""
    text = str(value or "")
    if by == "tag":
        return [t for t in text.split(",") if t] or [NONE_KEY]
    return [text or NONE_KEY]


async def inbox_report(
    engine: AsyncEngine,
    since: date | str,
    until: date | str,
    by: InboxBy = "queue",
) -> list[InboxRow]:
    """Per queue, routing rule, tag or day: the messages received in the period (Seoul days,
    both included) and what became of them, then the total row (`TOTAL`).

    Answered: a staff answer came after the message (`first_response_at`); the response time
    is from receipt to that answer. Time to close: receipt to the thread's close, for the
    messages whose thread was closed."""
    if by not in ("queue", "rule", "tag", "day"):
        raise ValueError(f"inbox report by {by!r}: use queue, rule, tag or day")
    lo, hi = _day(since), _day(until)
    query = select(
        messages.c[by if by != "tag" else "tags"],
        messages.c.received_at,
        messages.c.auto_replied_at,
        messages.c.auto_reply,
        messages.c.first_response_at,
        messages.c.closed_at,
        messages.c.after_hours,
        messages.c.day_type,
    ).where(messages.c.day >= lo, messages.c.day <= hi)
    groups: dict[str, _Acc] = defaultdict(_Acc)
    total = _Acc()
    async with engine.connect() as conn:
        result = await conn.stream(query)
        async for key, received_at, auto_at, auto_reply, first_at, closed_at, after_hours, day_type in result:
            for acc in [*(groups[k] for k in _group_keys(by, key)), total]:
                acc.received += 1
                if auto_at is not None and str(auto_reply) in AUTO_REPLY_SENT:
                    acc.auto_replied += 1
                if first_at is not None:
                    acc.responses.append(max(0.0, float(first_at) - float(received_at)))
                if closed_at is not None:
                    acc.closes.append(max(0.0, float(closed_at) - float(received_at)))
                if after_hours:
                    acc.after_hours += 1
                if day_type == "holiday":
                    acc.holiday += 1
    rows = [acc.row(key) for key, acc in sorted(groups.items())]
    rows.append(total.row(TOTAL))
    return rows
