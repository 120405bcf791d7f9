"""Counters into rates, histograms into interval means and percentiles.

Sources expose cumulative numbers; quell reasons about what happened in the
last interval. The maths is in pure functions so it can be checked on plain
numbers; the trackers only remember the previous reading per series.

A counter that went down was reset (the process restarted): the new value
is what accumulated since the restart, so it is the increase, and the rate is
never negative. A series seen for the first time has no rate yet.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


def counter_increase(previous: float, current: float) -> float:
    """How much a counter grew; a decrease means it restarted from zero."""
    return current if current < previous else current - previous


def counter_rate(previous: float, current: float, elapsed_s: float) -> float | None:
    if elapsed_s <= 0:
        return None
    return counter_increase(previous, current) / elapsed_s


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Estimate quantile ``q`` from cumulative ``(upper_bound, count)`` buckets.

    Linear interpolation inside the bucket that holds the rank, as
    Prometheus' histogram_quantile does; a rank in the +Inf bucket answers the
    highest finite bound, since nothing better is known. None when empty.
    """
    ordered = sorted(buckets)
    if not ordered:
        return None
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    finite_seen = False
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound if finite_seen else None
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
        finite_seen = True
    return None


@dataclass(frozen=True, slots=True)
class HistogramReading:
    buckets: tuple[tuple[float, float], ...]  # cumulative (upper bound, count)
    total: float  # sum of observations
    count: float


@dataclass(frozen=True, slots=True)
class IntervalStats:
    count: float
    mean: float | None
    p95: float | None


def histogram_interval(
    previous: HistogramReading, current: HistogramReading, scale: float = 1.0
) -> IntervalStats:
    """Mean and p95 of what was observed between two readings.

    A count that went down is a reset: the current reading is the interval.
    Buckets are compared by bound; a bucket layout that changed is treated
    as a reset too, since its deltas would mean nothing.
    """
    same_layout = [b for b, _ in previous.buckets] == [b for b, _ in current.buckets]
    if current.count < previous.count or not same_layout:
        previous = HistogramReading(tuple((b, 0.0) for b, _ in current.buckets), 0.0, 0.0)
    count = current.count - previous.count
    if count <= 0:
        return IntervalStats(0.0, None, None)
    mean = (current.total - previous.total) / count * scale
    deltas = [
        (bound, now - before)
        for (bound, now), (_, before) in zip(current.buckets, previous.buckets, strict=True)
    ]
    p95 = bucket_quantile(0.95, deltas)
    return IntervalStats(count, mean, None if p95 is None else p95 * scale)


class RateTracker:
    """Per-series memory of the last counter value and when it was read."""

    def __init__(self) -> None:
        self._last: dict[Hashable, tuple[float, float]] = {}

    def update(self, key: Hashable, value: float, now: float) -> float | None:
        previous = self._last.get(key)
        self._last[key] = (value, now)
        if previous is None:
            return None
        return counter_rate(previous[0], value, now - previous[1])

    def forget(self, keep: set[Hashable]) -> None:
        """Drop series not seen this round, so a vanished label set does not leak."""
        for key in [k for k in self._last if k not in keep]:
            del self._last[key]


class HistogramTracker:
    def __init__(self) -> None:
        self._last: dict[Hashable, HistogramReading] = {}

    def update(
        self, key: Hashable, reading: HistogramReading, scale: float = 1.0
    ) -> IntervalStats | None:
        previous = self._last.get(key)
        self._last[key] = reading
        if previous is None:
            return None
        return histogram_interval(previous, reading, scale)

    def forget(self, keep: set[Hashable]) -> None:
        for key in [k for k in self._last if k not in keep]:
            del self._last[key]


class RatioTracker:
    """Mean per event from two cumulative counters (Triton's microsecond totals)."""

    def __init__(self) -> None:
        self._last: dict[Hashable, tuple[float, float]] = {}

    def update(self, key: Hashable, numerator: float, denominator: float) -> float | None:
        previous = self._last.get(key)
        self._last[key] = (numerator, denominator)
        if previous is None:
            return None
        if denominator < previous[1] or numerator < previous[0]:
            previous = (0.0, 0.0)
        events = denominator - previous[1]
        if events <= 0:
            return None
        return (numerator - previous[0]) / events

    def forget(self, keep: set[Hashable]) -> None:
        for key in [k for k in self._last if k not in keep]:
            del self._last[key]
