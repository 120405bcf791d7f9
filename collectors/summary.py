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

from collectors.model import Labels, Sample
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
        layout = _layout(series, tuple(s.labels for s in group))
        values[series] = _combine(series, [group[i].value for i in layout.fewest])
        if layout.finer:
            # A copy each round: whoever reads the parts may keep or change them.
            parts[series] = [Part(dict(extra), group[i].value) for i, extra in layout.finer]
    return values, parts


@dataclass(frozen=True, slots=True)
class _Layout:
    fewest: tuple[int, ...]  # the samples with the fewest varying labels
    finer: tuple[tuple[int, dict[str, str]], ...]  # (sample, varying labels), in parts order


# A source's label sets repeat every round, and the daemon summarises every
# queue each tick: working out which labels vary, and the parts' order, was
# most of diagnosis' share of a tick.
_LAYOUTS: dict[tuple[str, tuple[Labels, ...]], _Layout] = {}
_LAYOUTS_MAX = 10_000


def _layout(series: str, label_sets: tuple[Labels, ...]) -> _Layout:
    key = (series, label_sets)
    layout = _LAYOUTS.get(key)
    if layout is None:
        constant = set.intersection(*(set(labels) for labels in label_sets))
        varying = [{k: v for k, v in labels if (k, v) not in constant} for labels in label_sets]
        least = min(len(extra) for extra in varying)
        finer = [(i, extra) for i, extra in enumerate(varying) if extra]
        finer.sort(key=lambda part: sorted(part[1].items()))
        layout = _Layout(
            tuple(i for i, extra in enumerate(varying) if len(extra) == least), tuple(finer)
        )
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout
