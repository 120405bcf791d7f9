"""Counter rates, resets, interval means and bucket percentiles."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors.rates import (
    HistogramReading,
    RateTracker,
    RatioTracker,
    bucket_quantile,
    counter_rate,
    histogram_interval,
)
from collectors.readings import Converter, Reading

INF = math.inf


def test_counter_rate_is_increase_over_elapsed_time() -> None:
    assert counter_rate(100.0, 160.0, 2.0) == 30.0


def test_a_counter_that_went_down_restarted_and_its_new_value_is_the_increase() -> None:
    # 5000 before, 40 after a restart: 40 arrived since, not -4960.
    assert counter_rate(5000.0, 40.0, 4.0) == 10.0


def test_no_rate_without_elapsed_time() -> None:
    assert counter_rate(1.0, 2.0, 0.0) is None


def test_tracker_gives_no_rate_on_first_sight_then_per_series_rates() -> None:
    tracker = RateTracker()
    assert tracker.update("a", 10.0, now=100.0) is None
    assert tracker.update("b", 500.0, now=100.0) is None
    assert tracker.update("a", 40.0, now=110.0) == 3.0
    assert tracker.update("b", 2.0, now=110.0) == pytest.approx(0.2)  # reset


def test_forgotten_series_start_over() -> None:
    tracker = RateTracker()
    tracker.update("gone", 10.0, 0.0)
    tracker.forget(set())
    assert tracker.update("gone", 20.0, 1.0) is None


@given(st.lists(st.floats(min_value=0, max_value=1e12), min_size=2, max_size=30))
def test_rates_are_never_negative(values: list[float]) -> None:
    tracker = RateTracker()
    for second, value in enumerate(values):
        rate = tracker.update("c", value, float(second))
        assert rate is None or rate >= 0


def test_quantile_interpolates_inside_the_bucket_holding_the_rank() -> None:
    buckets = [(1.0, 50.0), (2.0, 100.0), (INF, 100.0)]
    # rank 95 lies 45 of 50 observations into (1, 2]
    assert bucket_quantile(0.95, buckets) == pytest.approx(1.9)
    assert bucket_quantile(0.5, buckets) == pytest.approx(1.0)


def test_quantile_in_the_first_bucket_starts_from_zero() -> None:
    assert bucket_quantile(0.5, [(0.4, 10.0), (INF, 10.0)]) == pytest.approx(0.2)


def test_quantile_beyond_the_last_finite_bound_answers_that_bound() -> None:
    buckets = [(0.5, 10.0), (1.0, 20.0), (INF, 100.0)]
    assert bucket_quantile(0.95, buckets) == 1.0


def test_quantile_of_nothing_is_none() -> None:
    assert bucket_quantile(0.95, [(1.0, 0.0), (INF, 0.0)]) is None
    assert bucket_quantile(0.95, []) is None
    assert bucket_quantile(0.95, [(INF, 5.0)]) is None


def test_interval_mean_and_p95_come_from_deltas_not_lifetime_totals() -> None:
    # Lifetime: 1000 fast requests. This interval: 100 slow ones.
    before = HistogramReading(
        ((0.1, 1000.0), (1.0, 1000.0), (10.0, 1000.0), (INF, 1000.0)), 50.0, 1000.0
    )
    after = HistogramReading(
        ((0.1, 1000.0), (1.0, 1000.0), (10.0, 1100.0), (INF, 1100.0)), 550.0, 1100.0
    )
    stats = histogram_interval(before, after)
    assert stats.count == 100
    assert stats.mean == pytest.approx(5.0)
    assert stats.p95 == pytest.approx(1.0 + 9.0 * 0.95)


def test_an_interval_with_nothing_observed_has_no_mean() -> None:
    reading = HistogramReading(((1.0, 10.0), (INF, 10.0)), 3.0, 10.0)
    stats = histogram_interval(reading, reading)
    assert stats.mean is None and stats.p95 is None


def test_a_histogram_that_went_down_was_reset_and_the_new_reading_is_the_interval() -> None:
    before = HistogramReading(((1.0, 900.0), (INF, 1000.0)), 800.0, 1000.0)
    after = HistogramReading(((1.0, 4.0), (INF, 4.0)), 2.0, 4.0)
    stats = histogram_interval(before, after, scale=1.0)
    assert stats.count == 4
    assert stats.mean == pytest.approx(0.5)


def test_scale_converts_milliseconds() -> None:
    before = HistogramReading(((100.0, 0.0), (INF, 0.0)), 0.0, 0.0)
    after = HistogramReading(((100.0, 2.0), (INF, 2.0)), 120.0, 2.0)
    stats = histogram_interval(before, after, scale=1e-3)
    assert stats.mean == pytest.approx(0.06)
    assert stats.p95 == pytest.approx(0.095)


def test_ratio_of_cumulative_counters_is_the_mean_per_event() -> None:
    ratios = RatioTracker()
    assert ratios.update("q", 1_000_000.0, 100.0) is None
    assert ratios.update("q", 3_000_000.0, 150.0) == pytest.approx(40_000.0)
    assert ratios.update("q", 3_000_000.0, 150.0) is None  # nothing happened
    assert ratios.update("q", 500.0, 1.0) == pytest.approx(500.0)  # restarted


def test_converter_emits_totals_rates_and_interval_series_in_quell_words() -> None:
    converter = Converter()
    base = (("target", "t"),)
    hist1 = HistogramReading(((1.0, 0.0), (INF, 0.0)), 0.0, 0.0)
    hist2 = HistogramReading(((1.0, 10.0), (INF, 10.0)), 4.0, 10.0)
    first = converter.convert(
        [
            Reading("depth", (), "gauge", 7.0),
            Reading("offered_total", (), "counter", 100.0),
            Reading("queue_wait_seconds", (), "histogram", histogram=hist1),
        ],
        now=10.0,
        base=base,
    )
    assert {s.series for s in first} == {"depth", "offered_total"}
    second = converter.convert(
        [
            Reading("depth", (), "gauge", 9.0),
            Reading("offered_total", (), "counter", 130.0),
            Reading("queue_wait_seconds", (), "histogram", histogram=hist2),
        ],
        now=12.0,
        base=base,
    )
    values = {s.series: s.value for s in second}
    assert values["offered_rate"] == 15.0
    assert values["queue_wait_seconds"] == pytest.approx(0.4)
    assert values["queue_wait_p95_seconds"] == pytest.approx(0.95)
    assert all(s.labels == base for s in second)
    assert all(s.ts == 12.0 for s in second)
