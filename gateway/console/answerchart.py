"""The status page's answer-rate chart: per day, calls answered with the lettering shown versus
without it, as a server-rendered SVG (no script library; colours come from console.css classes).

"With lettering" is the outcome `delivered` (the city's name was on the citizen's screen while
it rang); "without" is every other outcome (skipped, not subscribed, failed, an unsupported
phone). Rates come from the daily roll-ups (`answer_daily`), one query for the whole period;
each bar carries its Wilson 95 % interval as a whisker (`gateway.domain.analytics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from markupsafe import Markup, escape
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain.analytics import RateRow
from gateway.domain.records import LetteringKind
from gateway.records.schema import answer_daily

WITH = "with"
WITHOUT = "without"


@dataclass(frozen=True, slots=True)
class DayRates:
    """One day: the answer rate of the calls with the lettering shown and of those without."""

    day: str  # YYYY-MM-DD (Seoul)
    lettered: RateRow
    unlettered: RateRow


def days_back(today: date, days: int = 30) -> tuple[date, date]:
    """The last `days` days up to and including `today`."""
    return today - timedelta(days=days - 1), today


async def daily_rates(engine: AsyncEngine, since: date, until: date) -> list[DayRates]:
    """Every day from `since` to `until` (both included), days without calls too (empty rows)."""
    delivered = LetteringKind.DELIVERED.value
    query = (
        select(
            answer_daily.c.day,
            answer_daily.c.lettering,
            func.sum(answer_daily.c.calls),
            func.sum(answer_daily.c.answered),
        )
        .where(answer_daily.c.day >= since.isoformat(), answer_daily.c.day <= until.isoformat())
        .group_by(answer_daily.c.day, answer_daily.c.lettering)
    )
    sums: dict[tuple[str, str], list[int]] = {}
    async with engine.connect() as conn:
        for day, lettering, calls, answered in (await conn.execute(query)).all():
            side = WITH if lettering == delivered else WITHOUT
            acc = sums.setdefault((str(day), side), [0, 0])
            acc[0] += int(calls or 0)
            acc[1] += int(answered or 0)
    out: list[DayRates] = []
    day = since
    while day <= until:
        key = day.isoformat()
        w, wo = sums.get((key, WITH), [0, 0]), sums.get((key, WITHOUT), [0, 0])
        out.append(DayRates(key, RateRow.of(WITH, w[0], w[1]), RateRow.of(WITHOUT, wo[0], wo[1])))
        day += timedelta(days=1)
    return out


def totals(days: Sequence[DayRates]) -> tuple[RateRow, RateRow]:
    """The whole period's rate with and without the lettering."""
    w = [sum(d.lettered.calls for d in days), sum(d.lettered.answered for d in days)]
    wo = [sum(d.unlettered.calls for d in days), sum(d.unlettered.answered for d in days)]
    return RateRow.of(WITH, w[0], w[1]), RateRow.of(WITHOUT, wo[0], wo[1])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def describe(row: RateRow, label: str) -> str:
    """'문자 표시 52/80 (65.0%, 95% 54.1%~74.4%)' or '문자 표시 통화 없음'."""
    if row.rate is None:
        return f"{label} 통화 없음"
    return f"{label} {row.answered}/{row.calls} ({_pct(row.rate)}, 95% {_pct(row.low)}~{_pct(row.high)})"


LABELS = {WITH: "문자 표시됨", WITHOUT: "문자 표시 안 됨"}


def svg(days: Sequence[DayRates], *, width: int = 960, height: int = 280) -> Markup:
    """The chart: a pair of bars per day (rate with, without), whiskers for the 95 % intervals,
    gridlines every 20 %, a date under every fifth day. Each bar has a <title> (the exact
    figures, shown on hover and read by screen readers)."""
    left, right, top, bottom = 40, 10, 24, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    base = top + plot_h
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="chart-title">',
        f'<title id="chart-title">최근 {len(days)}일 응답률: 문자 표시됨과 표시 안 됨</title>',
    ]
    for tick in range(0, 101, 20):
        y = base - plot_h * tick / 100
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{tick}%</text>')
    slot = plot_w / max(1, len(days))
    bar = max(2.0, min(14.0, slot * 0.36))
    for i, d in enumerate(days):
        x = left + slot * i + slot / 2
        for offset, row, side in ((-bar, d.lettered, WITH), (0.0, d.unlettered, WITHOUT)):
            tip = escape(f"{d.day} {describe(row, LABELS[side])}")
            if row.rate is None:
                # No calls: a thin mark on the axis, so that "no data" is not read as 0 %.
                parts.append(
                    f'<rect class="bar {side} empty" x="{x + offset:.1f}" y="{base - 2:.1f}" width="{bar:.1f}" '
                    f'height="2"><title>{tip}</title></rect>'
                )
                continue
            h = max(plot_h * row.rate, 1.0)  # 0 % with calls: a hairline, unlike the empty mark
            parts.append(
                f'<rect class="bar {side}" x="{x + offset:.1f}" y="{base - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}"><title>{tip}</title></rect>'
            )
            if row.low is not None and row.high is not None:
                cx = x + offset + bar / 2
                y1, y2 = base - plot_h * row.low, base - plot_h * row.high
                parts.append(f'<line class="whisker" x1="{cx:.1f}" y1="{y1:.1f}" x2="{cx:.1f}" y2="{y2:.1f}"/>')
        if i % 5 == 0 or i == len(days) - 1:
            parts.append(f'<text class="day" x="{x:.1f}" y="{base + 16}" text-anchor="middle">{d.day[5:]}</text>')
    parts.append(f'<line class="axis" x1="{left}" y1="{base}" x2="{width - right}" y2="{base}"/>')
    for i, side in enumerate((WITH, WITHOUT)):
        lx = left + i * 130
        parts.append(f'<rect class="bar {side}" x="{lx}" y="6" width="10" height="10"/>')
        parts.append(f'<text class="legend" x="{lx + 14}" y="15">{LABELS[side]}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
