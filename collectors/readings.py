"""From one scrape's cumulative readings to Samples in quell's words.

A preset says *what* a source's numbers mean (a gauge of ``depth``, a
counter of ``rejected_total{reason}``, a histogram of ``queue_wait``); the
Converter remembers the previous scrape so counters become rates and
histograms become interval means and p95s. One Converter per source.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Literal

from collectors.model import Labels, Sample
from collectors.rates import HistogramReading, HistogramTracker, RateTracker, RatioTracker
from collectors.signals import p95_name, rate_name

MERGED_MAX = 10_000

ReadingKind = Literal["gauge", "counter", "total", "histogram", "ratio"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One number from a source, already named in quell's words.

    ``gauge``: emitted as is (times ``scale``). ``counter``: emitted, plus its
    rate. ``total``: a counter whose rate the source reports itself, so none
    is computed. ``histogram``: interval mean and p95 of ``histogram``.
    ``ratio``: interval mean of ``value`` per ``denominator`` event, from two
    cumulative counters (Triton's microsecond totals).
    """

    series: str
    labels: Labels
    kind: ReadingKind
    value: float = 0.0
    histogram: HistogramReading | None = None
    denominator: float = 0.0
    scale: float = 1.0


def merge_labels(base: Labels, extra: Labels) -> Labels:
    if not base:
        return extra
    merged = dict(base)
    merged.update(extra)
    return tuple(sorted(merged.items()))


class Converter:
    def __init__(self) -> None:
        self._counters = RateTracker()
        self._histograms = HistogramTracker()
        self._ratios = RatioTracker()
        # A source's label sets repeat every scrape; merging and sorting them
        # again each time was a tenth of a tick's CPU.
        self._merged: dict[tuple[Labels, Labels], Labels] = {}

    def convert(self, readings: Iterable[Reading], now: float, base: Labels = ()) -> list[Sample]:
        samples: list[Sample] = []
        seen: set[Hashable] = set()
        merged = self._merged
        for r in readings:
            labels = merged.get((base, r.labels))
            if labels is None:
                if len(merged) >= MERGED_MAX:
                    merged.clear()
                labels = merged[(base, r.labels)] = merge_labels(base, r.labels)
            key = (r.series, labels)
            seen.add(key)
            if r.kind == "gauge":
                samples.append(Sample(r.series, labels, now, r.value * r.scale))
            elif r.kind in ("counter", "total"):
                samples.append(Sample(r.series, labels, now, r.value * r.scale))
                if r.kind == "counter":
                    rate = self._counters.update(key, r.value, now)
                    if rate is not None:
                        samples.append(Sample(rate_name(r.series), labels, now, rate * r.scale))
            elif r.kind == "histogram" and r.histogram is not None:
                stats = self._histograms.update(key, r.histogram, r.scale)
                if stats is not None and stats.mean is not None:
                    samples.append(Sample(r.series, labels, now, stats.mean))
                    if stats.p95 is not None:
                        samples.append(Sample(p95_name(r.series), labels, now, stats.p95))
            elif r.kind == "ratio":
                mean = self._ratios.update(key, r.value, r.denominator)
                if mean is not None:
                    samples.append(Sample(r.series, labels, now, mean * r.scale))
        self._counters.forget(seen)
        self._histograms.forget(seen)
        self._ratios.forget(seen)
        return samples
