"""Answer-rate statistics: proportions with their intervals, medians from histograms.

Pure arithmetic for `gateway.records.reports`. Choices, so that a report reads the same every
time and a reader can check it by hand:

- An answer rate's 95 % interval is Wilson's score interval: right near 0 % and 100 % and for
  small departments, where the textbook p +/- 1.96 sqrt(p(1-p)/n) goes below zero or above one.
  With no calls there is no rate and no interval: `wilson(0, 0)` is None (reports show a blank,
  not a misleading 0 %).
- Two periods are compared by the difference of their rates in percentage points with
  Newcombe's hybrid score interval (his method 10, built from the two Wilson intervals): it
  agrees with the per-period intervals the same report shows, and stays inside [-100, 100].
  A difference whose interval excludes 0 is called significant; no p-value is given.
- Medians of ring time come from whole-second histograms (`ring_daily`), because histograms add
  up across days and departments where medians do not. The median of an even count is the mean
  of the two middle values, as `statistics.median` of the expanded values would be.
- Percentiles of raw values interpolate linearly between the closest ranks (numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's score interval for `successes` out of `n` (fractions, 0..1); None when n == 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson: {successes} successes out of {n}")
    if n == 0:
        return None
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    # Clamp the rounding: at p == 0 or 1 the bound is exactly 0 or 1 in exact arithmetic.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def median_from_histogram(hist: Mapping[int, int]) -> float | None:
    """The median of the values a histogram counts ({value: count}); None when it counts nothing."""
    items = sorted((value, count) for value, count in hist.items() if count > 0)
    total = sum(count for _, count in items)
    if total == 0:
        return None
    # 0-based ranks of the middle value(s): one for an odd total, two for an even one.
    ranks = (total // 2,) if total % 2 else (total // 2 - 1, total // 2)
    found: list[float] = []
    seen = 0
    for value, count in items:
        seen += count
        while len(found) < len(ranks) and ranks[len(found)] < seen:
            found.append(float(value))
    return sum(found) / len(found)


def percentile_from_values(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) of `values`, linear between closest ranks; None if empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"percentile: q={q} is not between 0 and 1")
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * fraction


@dataclass(frozen=True, slots=True)
class RateRow:
    """One line of an answer-rate report: a department, a day, a lettering outcome or the total.

    `rate`, `low` and `high` are fractions (0..1), None without calls; `median_ring_s` is the
    median ring time of the answered calls, in whole seconds (None when none was answered or
    when the roll-ups cannot split it this finely)."""

    key: str
    calls: int
    answered: int
    rate: float | None
    low: float | None
    high: float | None
    median_ring_s: float | None

    @classmethod
    def of(cls, key: str, calls: int, answered: int, median_ring_s: float | None = None) -> RateRow:
        interval = wilson(answered, calls)
        return cls(
            key=key,
            calls=calls,
            answered=answered,
            rate=answered / calls if calls else None,
            low=interval[0] if interval else None,
            high=interval[1] if interval else None,
            median_ring_s=median_ring_s,
        )


@dataclass(frozen=True, slots=True)
class Comparison:
    """`after` against `before`: the difference of the rates in percentage points (after minus
    before) with Newcombe's 95 % interval; all None when either period has no calls."""

    key: str
    before: RateRow
    after: RateRow
    difference_points: float | None
    low_points: float | None
    high_points: float | None

    @property
    def significant(self) -> bool:
        """The interval excludes no change (0 points)."""
        if self.low_points is None or self.high_points is None:
            return False
        return self.low_points > 0.0 or self.high_points < 0.0


def newcombe(before: tuple[int, int], after: tuple[int, int], z: float = Z95) -> tuple[float, float, float] | None:
    """(difference, low, high) of after's proportion minus before's, as fractions; each argument
    is (successes, n). None when either n is 0."""
    w1 = wilson(before[0], before[1], z)
    w2 = wilson(after[0], after[1], z)
    if w1 is None or w2 is None:
        return None
    p1 = before[0] / before[1]
    p2 = after[0] / after[1]
    (l1, u1), (l2, u2) = w1, w2
    d = p2 - p1
    low = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    high = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return d, max(-1.0, low), min(1.0, high)


def compare(before: RateRow, after: RateRow) -> Comparison:
    """The change from `before` to `after` (same key; the after row's key is kept)."""
    found = newcombe((before.answered, before.calls), (after.answered, after.calls))
    if found is None:
        return Comparison(after.key, before, after, None, None, None)
    d, low, high = found
    return Comparison(after.key, before, after, d * 100.0, low * 100.0, high * 100.0)
