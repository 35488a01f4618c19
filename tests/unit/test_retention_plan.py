"""The purge's pure part: retention periods, cutoffs (whole Seoul days) and the daily schedule."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.domain.records import SEOUL
from gateway.domain.retention import Retention, cutoff, next_purge_at, parse_hhmm, plan_purge


def seoul(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=SEOUL).timestamp()


def test_a_cutoff_is_the_seoul_midnight_days_before_today() -> None:
    # 00:30 in Seoul is still the previous day in UTC: the Seoul calendar decides.
    assert cutoff(seoul("2026-12-03T00:30"), 365) == seoul("2025-12-03T00:00")
    assert cutoff(seoul("2026-12-03T23:59"), 365) == seoul("2025-12-03T00:00")
    assert cutoff(seoul("2026-03-01T03:30"), 1) == seoul("2026-02-28T00:00")
    assert cutoff(seoul("2028-03-01T03:30"), 1) == seoul("2028-02-29T00:00")  # a leap day


def test_plan_purge_gives_each_kind_its_own_cutoff() -> None:
    now = seoul("2026-12-03T03:30")
    plan = plan_purge(Retention(messages=30, calls=90, sends=7, access=730), now)
    assert plan.now == now
    assert plan.messages == seoul("2026-11-03T00:00")
    assert plan.calls == seoul("2026-09-04T00:00")
    assert plan.sends == seoul("2026-11-26T00:00")
    assert plan.access == seoul("2024-12-03T00:00")
    assert plan.consent == plan.access  # no separate setting: the access records' period
    assert plan_purge(Retention(consent=1095), now).consent == seoul("2023-12-04T00:00")


def test_retention_defaults_and_validation() -> None:
    r = Retention()
    assert (r.messages, r.calls, r.sends, r.access, r.consent_days) == (365, 365, 365, 730, 730)
    assert Retention.from_days({"messages": 30, "access": 1000}) == Retention(messages=30, access=1000)
    with pytest.raises(ValueError, match="unknown retention kind"):
        Retention.from_days({"texts": 30})
    for bad in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            Retention(calls=bad)


@pytest.mark.parametrize(
    ("now", "at", "expected"),
    [
        ("2026-12-03T01:00", "03:30", "2026-12-03T03:30"),  # later today
        ("2026-12-03T03:30", "03:30", "2026-12-04T03:30"),  # exactly now: the next one is tomorrow
        ("2026-12-03T23:59:59", "00:00", "2026-12-04T00:00"),  # across midnight
        ("2026-12-31T23:00", "03:30", "2027-01-01T03:30"),  # across the year
        ("2028-02-28T12:00", "03:30", "2028-02-29T03:30"),  # onto a leap day
        ("2026-03-08T01:00", "02:30", "2026-03-08T02:30"),  # a DST night elsewhere; Seoul has none
    ],
)
def test_next_purge_at(now: str, at: str, expected: str) -> None:
    assert next_purge_at(seoul(now), at) == seoul(expected)


def test_the_next_purge_is_read_on_the_seoul_clock_not_utc() -> None:
    # 2026-12-03 20:00 UTC is 2026-12-04 05:00 in Seoul: 03:30 has passed there.
    now = datetime.fromisoformat("2026-12-03T20:00+00:00").timestamp()
    assert next_purge_at(now, "03:30") == seoul("2026-12-05T03:30")


@pytest.mark.parametrize("bad", ["3:30", "24:00", "03:60", "0330", "", "03:30:00"])
def test_bad_times_of_day(bad: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_hhmm(bad)
