"""Answer-rate statistics (`gateway.domain.analytics`) against published and hand-computed values."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.analytics import (
    RateRow,
    compare,
    median_from_histogram,
    newcombe,
    percentile_from_values,
    wilson,
)


def test_wilson_known_value() -> None:
    interval = wilson(55, 100)
    assert interval is not None
    low, high = interval
    assert low == pytest.approx(0.4524, abs=5e-4)
    assert high == pytest.approx(0.6439, abs=5e-4)


def test_wilson_edges() -> None:
    assert wilson(0, 0) is None
    low, high = wilson(0, 20) or (-1.0, -1.0)
    assert low == 0.0
    assert high == pytest.approx(0.1611, abs=5e-4)  # 3.84 / 23.84: the "rule of three" neighbourhood
    low, high = wilson(20, 20) or (-1.0, -1.0)
    assert high == 1.0
    assert low == pytest.approx(1 - 0.1611, abs=5e-4)
    with pytest.raises(ValueError):
        wilson(3, 2)


@given(st.integers(min_value=1, max_value=100_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_rate(case: tuple[int, int]) -> None:
    successes, n = case
    interval = wilson(successes, n)
    assert interval is not None
    low, high = interval
    assert 0.0 <= low <= successes / n <= high <= 1.0


def test_newcombe_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 against 48/80.
    found = newcombe((48, 80), (56, 70))
    assert found is not None
    d, low, high = found
    assert d == pytest.approx(0.2)
    assert low == pytest.approx(0.0524, abs=5e-4)
    assert high == pytest.approx(0.3339, abs=5e-4)


def test_compare_in_points() -> None:
    before = RateRow.of("civil-passport", 100, 55)
    after = RateRow.of("civil-passport", 100, 75)
    change = compare(before, after)
    assert change.difference_points == pytest.approx(20.0)
    assert change.low_points is not None and change.high_points is not None
    assert 0 < change.low_points < 20 < change.high_points
    assert change.significant
    empty = compare(RateRow.of("x", 0, 0), after)
    assert empty.difference_points is None and not empty.significant


def test_rate_row_without_calls() -> None:
    row = RateRow.of("total", 0, 0)
    assert (row.rate, row.low, row.high) == (None, None, None)


def test_median_from_histogram() -> None:
    assert median_from_histogram({}) is None
    assert median_from_histogram({5: 0}) is None
    assert median_from_histogram({7: 1}) == 7.0
    assert median_from_histogram({3: 1, 9: 1}) == 6.0  # even count: the mean of the middle two
    assert median_from_histogram({1: 2, 4: 1, 10: 3}) == 7.0  # 1 1 4 10 10 10


@given(st.lists(st.integers(min_value=0, max_value=180), min_size=1, max_size=200))
def test_median_from_histogram_matches_statistics(values: list[int]) -> None:
    hist: dict[int, int] = {}
    for v in values:
        hist[v] = hist.get(v, 0) + 1
    assert median_from_histogram(hist) == pytest.approx(statistics.median(values))


def test_percentile_from_values() -> None:
    assert percentile_from_values([], 0.5) is None
    assert percentile_from_values([4.0], 0.9) == 4.0
    assert percentile_from_values([1, 2, 3, 4], 0.5) == 2.5
    assert percentile_from_values([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 0.9) == pytest.approx(91.0)
    with pytest.raises(ValueError):
        percentile_from_values([1.0], 1.5)
