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
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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
        bucket_name, sum_name, count_name = f"{name}_bucket", f"{name}_sum", f"{name}_count"
        shared = _SHARED.get
        for sample_name, sample_labels, value in family.samples:
            if sample_name == bucket_name:
                known = shared(id(sample_labels))
                if known is None or known[0] is not sample_labels:
                    known = _derive(sample_labels)
                _, _, key, bound = known
                if bound is None:
                    continue
                parts = buckets.get(key)
                if parts is None:
                    buckets[key] = [(bound, value)]
                else:
                    parts.append((bound, value))
            elif sample_name == sum_name:
                totals[label_set(sample_labels)] = value
            elif sample_name == count_name:
                counts[label_set(sample_labels)] = value
        readings: dict[LabelSet, HistogramReading] = {}
        for key, parts in buckets.items():
            count = counts.get(key, max((c for _, c in parts), default=0.0))
            readings[key] = HistogramReading(tuple(sorted(parts)), totals.get(key, 0.0), count)
        return readings


def label_set(labels: Mapping[str, str]) -> LabelSet:
    """``labels`` as a hashable set, worked out once for the labels of a cached head."""
    known = _SHARED.get(id(labels))
    if known is not None and known[0] is labels:
        return known[1]
    return frozenset(labels.items())


_Derived = tuple[Mapping[str, str], LabelSet, LabelSet, float | None]


def _derive(labels: Mapping[str, str]) -> _Derived:
    """(labels, their set, their set without ``le``, the bucket bound).

    The bound is +Inf without ``le`` and None when ``le`` is no number.
    """
    every = frozenset(labels.items())
    if "le" not in labels:
        return labels, every, every, math.inf
    try:
        bound: float | None = float(labels["le"])
    except ValueError:
        bound = None
    return labels, every, frozenset((k, v) for k, v in every if k != "le"), bound


def parse_exposition(text: str, wanted: frozenset[str] | None = None) -> Scrape:
    """The families of ``text``; with ``wanted``, only those (by family name).

    A preset reads a dozen of the thirty-odd families a server exposes, and
    at 1 Hz the samples of the others, read and thrown away, were a fifth of
    the collector's CPU. Lines of families left out are not checked either.
    """
    try:
        scrape, skipped = _parse_common(text, wanted)
    except _Unusual:
        scrape, skipped = _parse_any(text, wanted), False
    if not scrape.families and not skipped:
        raise ExpositionError("no metrics in the text")
    return scrape


def family_names(names: Iterable[str]) -> frozenset[str]:
    """Every form a lookup by these names may find a family under (see Scrape._family)."""
    found: set[str] = set()
    for name in names:
        if name:
            found.update((name, name.removesuffix("_total"), name + "_total"))
    return frozenset(found)


# The common shape of exposition text, read with a few regular expressions:
# prometheus_client's parser walks each label string a character at a time
# and cost ~4 ms CPU per scrape of a 300-line page (most of the collector
# daemon's CPU at 1 Hz); this reads the same families in ~0.5-1 ms. Anything
# it does not recognise (quoted UTF-8 names, exemplars, odd spacing, an
# unknown TYPE) sends the whole text to prometheus_client's parser instead,
# so the two always agree.
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SAMPLE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?[ \t]+([^ \t]+)(?:[ \t]+-?[0-9]+)?"
)
_VALUE = r'"(?:[^"\\]|\\.)*"'
_LABEL = rf"[ \t]*[a-zA-Z_][a-zA-Z0-9_]*[ \t]*=[ \t]*{_VALUE}[ \t]*"
_LABELS = re.compile(rf"(?:{_LABEL},)*(?:{_LABEL})?,?[ \t]*")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")
_SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "summary": ("_count", "_sum", ""),
    "histogram": ("_count", "_sum", "_bucket"),
}
_TYPES = frozenset(
    ("counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "info", "stateset",
     "untyped")
)  # fmt: skip
# Label strings repeat from one scrape to the next; parsed once, reused.
_LABEL_CACHE: dict[str, tuple[tuple[str, str], ...]] = {}
_LABEL_CACHE_MAX = 50_000
# A sample line up to its value ("name{labels}") -> its name and labels: a
# page's series repeat every scrape, so most lines skip the regular
# expressions altogether.
_HEADS: dict[str, tuple[str, Mapping[str, str]]] = {}
_NO_LABELS: Mapping[str, str] = MappingProxyType({})
# id of a cached head's labels -> _derive(labels). The head cache hands out
# one labels object per head, scrape after scrape, so readers look up what
# they derive from it (a histogram's label set, its bucket bound) by id
# instead of rebuilding it for every sample of every scrape. Each entry
# holds its object, so the id cannot be reused while the entry is there.
_SHARED: dict[int, _Derived] = {id(_NO_LABELS): _derive(_NO_LABELS)}


class _Unusual(Exception):
    """Text the common-shape reader leaves to prometheus_client's parser."""


def _labels(text: str) -> dict[str, str]:
    pairs = _LABEL_CACHE.get(text)
    if pairs is None:
        if not _LABELS.fullmatch(text):
            raise _Unusual
        found = _PAIR.findall(text)
        if "\\" in text:
            found = [(name, _ESCAPE.sub(_unescape, value)) for name, value in found]
        names = {name for name, _ in found}
        # Repeated names and reserved ones (__name__) are the full parser's call.
        if len(names) != len(found) or any(name.startswith("__") for name in names):
            raise _Unusual
        pairs = tuple(found)
        if len(_LABEL_CACHE) >= _LABEL_CACHE_MAX:
            _LABEL_CACHE.clear()
        _LABEL_CACHE[text] = pairs
    return dict(pairs)


def _unescape(match: re.Match[str]) -> str:
    return "\n" if match.group(1) == "n" else match.group(1)


def _add(
    scrape: Scrape, name: str, typ: str, samples: list[tuple[str, Mapping[str, str], float]]
) -> None:
    """One family, named and typed as prometheus_client names and types it."""
    if typ == "counter":
        if name.endswith("_total"):
            name = name[:-6]
        else:
            samples = [(sample + "_total", labels, value) for sample, labels, value in samples]
    family = scrape.families.setdefault(name, Family(name, "unknown" if typ == "untyped" else typ))
    family.samples.extend(samples)


def _family_name(name: str, typ: str) -> str:
    """The name ``_add`` files a family under."""
    return name[:-6] if typ == "counter" and name.endswith("_total") else name


def _parse_common(text: str, wanted: frozenset[str] | None = None) -> tuple[Scrape, bool]:
    scrape = Scrape()
    name, typ = "", "untyped"
    samples: list[tuple[str, Mapping[str, str], float]] = []
    allowed: tuple[str, ...] = ()
    skipping = skipped = False
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line[0] == "#":
            parts = line.split(None, 3)
            if len(parts) < 2 or parts[1] not in ("TYPE", "HELP"):
                continue
            if len(parts) < 3 or not _NAME.fullmatch(parts[2]):
                raise _Unusual
            candidate = parts[2]
            if parts[1] == "HELP":
                if candidate != name:
                    if name and not skipping:
                        _add(scrape, name, typ, samples)
                    name, typ, samples, allowed = candidate, "untyped", [], (candidate,)
                    skipping = wanted is not None and candidate not in wanted
                continue
            if len(parts) < 4 or parts[3] not in _TYPES:
                raise _Unusual
            if candidate != name:
                if name and not skipping:
                    _add(scrape, name, typ, samples)
                name, samples = candidate, []
            typ = parts[3]
            allowed = tuple(name + suffix for suffix in _SUFFIXES.get(typ, ("",)))
            skipping = wanted is not None and _family_name(name, typ) not in wanted
            continue
        head, space, value_text = line.rpartition(" ")
        known = _HEADS.get(head) if space else None
        if known is not None:
            sample_name, labels = known
            if skipping and sample_name in allowed:
                skipped = True
                continue
        else:
            if skipping:
                named = _NAME.match(line)
                if named is not None and named.group() in allowed:
                    skipped = True
                    continue
            match = _SAMPLE.fullmatch(line)
            if match is None:
                raise _Unusual
            sample_name, label_text, matched_value = match.groups()
            labels = MappingProxyType(_labels(label_text)) if label_text else _NO_LABELS
            if matched_value == value_text and match.end(3) == len(line):
                # No timestamp: the next scrape's line for this series has the
                # same head, and only its value needs reading. The labels are
                # shared from one scrape to the next, hence read-only.
                if len(_HEADS) >= _LABEL_CACHE_MAX:
                    _HEADS.clear()
                    _SHARED.clear()
                    _SHARED[id(_NO_LABELS)] = _derive(_NO_LABELS)
                _HEADS[head] = (sample_name, labels)
                _SHARED[id(labels)] = _derive(labels)
            value_text = matched_value
        if "_" in value_text:
            raise _Unusual
        try:
            value = float(value_text)
        except ValueError:
            raise _Unusual from None
        sample = (sample_name, labels, value)
        if sample_name in allowed:
            samples.append(sample)
            continue
        # A sample its family does not allow is a family of its own.
        if name and not skipping:
            _add(scrape, name, typ, samples)
        name, typ, samples, allowed, skipping = "", "untyped", [], (), False
        if wanted is None or sample_name in wanted:
            _add(scrape, sample_name, "untyped", [sample])
        else:
            skipped = True
    if name and not skipping:
        _add(scrape, name, typ, samples)
    return scrape, skipped


def _parse_any(text: str, wanted: frozenset[str] | None = None) -> Scrape:
    # Imported here: only text in an unusual shape needs the full parser.
    from prometheus_client.parser import text_string_to_metric_families

    scrape = Scrape()
    try:
        for parsed in text_string_to_metric_families(text):
            if wanted is not None and parsed.name not in wanted:
                continue
            family = scrape.families.setdefault(parsed.name, Family(parsed.name, parsed.type))
            for sample in parsed.samples:
                family.samples.append((sample.name, sample.labels, float(sample.value)))
    except (ValueError, TypeError, IndexError) as problem:
        raise ExpositionError(f"not Prometheus exposition text ({problem})") from None
    return scrape
