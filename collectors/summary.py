"""One number per signal from a round of samples, for `quell probe` and summaries.

A source may report a series per label set (per engine, per priority, per
reason). The summary takes, for each series, the samples with the fewest
labels (an overall histogram beats its per-priority parts) and combines
them as the vocabulary says: counts add up, ratios average, worst-of takes
the maximum. Labels that are the same on every sample (``target``,
``queue``) say nothing about the breakdown and are left out of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from collectors.model import Sample
from collectors.signals import SIGNALS


@dataclass(frozen=True, slots=True)
class Part:
    labels: dict[str, str]
    value: float


def _combine(series: str, values: list[float]) -> float:
    signal = SIGNALS.get(series)
    how = signal.aggregate if signal is not None else "sum"
    if how == "mean":
        return sum(values) / len(values)
    if how == "max":
        return max(values)
    return sum(values)


def summarize(samples: Iterable[Sample]) -> tuple[dict[str, float], dict[str, list[Part]]]:
    """(signal -> value, signal -> per-label parts where there is a breakdown)."""
    by_series: dict[str, list[Sample]] = {}
    for sample in samples:
        by_series.setdefault(sample.series, []).append(sample)
    values: dict[str, float] = {}
    parts: dict[str, list[Part]] = {}
    for series, group in by_series.items():
        if len(group) == 1:
            # Most series have one sample a round: nothing to combine or split.
            values[series] = group[0].value
            continue
        constant = set.intersection(*(set(s.labels) for s in group))
        varying = [(s, {k: v for k, v in s.labels if (k, v) not in constant}) for s in group]
        fewest = min(len(extra) for _, extra in varying)
        values[series] = _combine(series, [s.value for s, extra in varying if len(extra) == fewest])
        finer = [Part(extra, s.value) for s, extra in varying if extra]
        if finer:
            parts[series] = sorted(finer, key=lambda p: sorted(p.labels.items()))
    return values, parts
