"""Prometheus text exposition, read into families a preset can look up by name.

prometheus_client's parser names a counter family without its ``_total``
suffix and names its samples with it, even when the exposition wrote neither
(TGI's counters have no ``_total``; the parser adds it to the sample). A
histogram family holds ``_bucket`` (with ``le``), ``_sum`` and ``_count``
samples. Untyped series keep their names as written. Lookups here accept a
counter's name with or without ``_total`` so presets need not care which
form a system used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from collectors.rates import HistogramReading

LabelSet = frozenset[tuple[str, str]]


class ExpositionError(ValueError):
    """The text is not Prometheus exposition format."""


@dataclass(slots=True)
class Family:
    name: str
    type: str
    samples: list[tuple[str, Mapping[str, str], float]] = field(default_factory=list)


@dataclass(slots=True)
class Scrape:
    families: dict[str, Family] = field(default_factory=dict)

    def names(self) -> set[str]:
        return set(self.families)

    def has(self, name: str) -> bool:
        return self._family(name) is not None

    def _family(self, name: str) -> Family | None:
        family = self.families.get(name)
        if family is None and name.endswith("_total"):
            family = self.families.get(name.removesuffix("_total"))
        if family is None:
            # An untyped counter keeps the suffix in its family name.
            family = self.families.get(name + "_total")
        return family

    def values(self, name: str) -> Iterator[tuple[Mapping[str, str], float]]:
        """Gauge or counter values of a family (not histogram parts, not ``_created``)."""
        family = self._family(name)
        if family is None:
            return
        wanted = {family.name, family.name + "_total"}
        for sample_name, sample_labels, value in family.samples:
            if sample_name in wanted and not math.isnan(value):
                yield sample_labels, value

    def histograms(self, name: str) -> dict[LabelSet, HistogramReading]:
        """One cumulative reading per label set (``le`` removed)."""
        family = self._family(name)
        if family is None:
            return {}
        buckets: dict[LabelSet, list[tuple[float, float]]] = {}
        totals: dict[LabelSet, float] = {}
        counts: dict[LabelSet, float] = {}
        for sample_name, sample_labels, value in family.samples:
            if sample_name == f"{name}_bucket":
                key = frozenset((k, v) for k, v in sample_labels.items() if k != "le")
                try:
                    bound = float(sample_labels.get("le", "+Inf"))
                except ValueError:
                    continue
                buckets.setdefault(key, []).append((bound, value))
            elif sample_name == f"{name}_sum":
                totals[frozenset(sample_labels.items())] = value
            elif sample_name == f"{name}_count":
                counts[frozenset(sample_labels.items())] = value
        readings: dict[LabelSet, HistogramReading] = {}
        for key, parts in buckets.items():
            count = counts.get(key, max((c for _, c in parts), default=0.0))
            readings[key] = HistogramReading(tuple(sorted(parts)), totals.get(key, 0.0), count)
        return readings


def parse_exposition(text: str) -> Scrape:
    # Imported here: the parser pulls in little, but a daemon with no
    # Prometheus sources should not pay for it at start.
    from prometheus_client.parser import text_string_to_metric_families

    scrape = Scrape()
    try:
        for parsed in text_string_to_metric_families(text):
            family = scrape.families.setdefault(parsed.name, Family(parsed.name, parsed.type))
            for sample in parsed.samples:
                family.samples.append((sample.name, sample.labels, float(sample.value)))
    except (ValueError, TypeError, IndexError) as problem:
        raise ExpositionError(f"not Prometheus exposition text ({problem})") from None
    if not scrape.families:
        raise ExpositionError("no metrics in the text")
    return scrape
