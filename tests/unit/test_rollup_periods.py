"""`rollups.split_period`: which days of a report period the monthly roll-ups answer."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from gateway.records.rollups import Split, split_period


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        # A whole year: twelve months, no days.
        ("2025-01-01", "2025-12-31", Split(("2025-01", "2025-12"), ())),
        # One whole month, February of a leap year and of a common year.
        ("2024-02-01", "2024-02-29", Split(("2024-02", "2024-02"), ())),
        ("2025-02-01", "2025-02-28", Split(("2025-02", "2025-02"), ())),
        # February 28 is not the end of a leap February.
        ("2024-02-01", "2024-02-28", Split(None, (("2024-02-01", "2024-02-28"),))),
        # Edges on both sides, across a new year.
        (
            "2025-11-15",
            "2027-01-03",
            Split(("2025-12", "2026-12"), (("2025-11-15", "2025-11-30"), ("2027-01-01", "2027-01-03"))),
        ),
        # Starts on a 1st, ends mid-month.
        ("2026-03-01", "2026-05-10", Split(("2026-03", "2026-04"), (("2026-05-01", "2026-05-10"),))),
        # Starts mid-month, ends on a month's last day.
        ("2026-03-02", "2026-05-31", Split(("2026-04", "2026-05"), (("2026-03-02", "2026-03-31"),))),
        # No whole month: all days (one day; two partial months; most of one month).
        ("2026-07-04", "2026-07-04", Split(None, (("2026-07-04", "2026-07-04"),))),
        ("2026-07-20", "2026-08-10", Split(None, (("2026-07-20", "2026-08-10"),))),
        ("2026-07-01", "2026-07-30", Split(None, (("2026-07-01", "2026-07-30"),))),
        # Backwards, or not the canonical text the daily tables compare: left to the days.
        ("2026-08-01", "2026-07-01", Split(None, (("2026-08-01", "2026-07-01"),))),
        ("20260101", "2026-12-31", Split(None, (("20260101", "2026-12-31"),))),
        ("2026-1-1", "2026-12-31", Split(None, (("2026-1-1", "2026-12-31"),))),
    ],
)
def test_split_period(since: str, until: str, expected: Split) -> None:
    assert split_period(since, until) == expected


def test_every_day_is_counted_once() -> None:
    """For many periods, the months' days and the edge days together are exactly the period."""
    start = date(2023, 12, 1)
    for a in range(0, 800, 7):
        for length in (0, 1, 27, 28, 29, 30, 31, 45, 59, 60, 92, 364, 365, 366, 400):
            lo = start + timedelta(days=a)
            hi = lo + timedelta(days=length)
            split = split_period(lo.isoformat(), hi.isoformat())
            covered: list[date] = []
            if split.months is not None:
                d = date.fromisoformat(split.months[0] + "-01")
                while d.isoformat()[:7] <= split.months[1]:
                    covered.append(d)
                    d += timedelta(days=1)
            for first, last in split.days:
                d = date.fromisoformat(first)
                while d <= date.fromisoformat(last):
                    covered.append(d)
                    d += timedelta(days=1)
            expected = [lo + timedelta(days=i) for i in range(length + 1)]
            assert sorted(covered) == expected, (lo, hi, split)
