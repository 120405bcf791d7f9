"""Prometheus as the source: the same signals, read through PromQL instead of a scrape.

A fleet's Prometheus already scrapes every gateway and inference server.
quell reads their native series back with one PromQL query per tick,
rebuilds what a scrape would have returned, and hands it to the same
presets and rate tracker as a direct scrape: the verdicts come from the
same code whichever way the numbers arrived.

Each tick asks for the last samples of a selector over a short range
(``{job="gateway"}[15s]``), so every value comes with the time Prometheus
scraped it. Rates are computed between scrapes, not between ticks: a tick
that finds no newer scrape repeats the last one rather than reading a
stalled counter as zero traffic.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from collectors.exposition import Family, Scrape
from collectors.http import FetchError, HttpClient, redact
from collectors.model import OK, CollectResult, Labels, Sample, error, labels_from
from collectors.presets import PROMETHEUS_PRESETS, canonical, detect, extract
from collectors.readings import Converter

LOOKBACK_S = 15
SELECTOR = re.compile(r"^\{.*\}$|^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?$", re.DOTALL)
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


class PrometheusError(ValueError):
    """A Prometheus server or a selector quell cannot read; the message says which."""


def check_selector(selector: str) -> str:
    selector = selector.strip()
    if not SELECTOR.match(selector) or len(selector) > 1000:
        raise PrometheusError(f'{selector!r} is not a series selector such as {{job="gateway"}}')
    return selector


def scrape_of(series: list[tuple[dict[str, str], float]]) -> Scrape:
    """What a scrape would have parsed to, from (labels with __name__, value) pairs."""
    names = {labels["__name__"] for labels, _ in series}
    scrape = Scrape()
    for labels, value in series:
        name = labels["__name__"]
        own = {k: v for k, v in labels.items() if k not in ("__name__", "job", "instance")}
        family_name, kind = name, "gauge"
        for part in HISTOGRAM_PARTS:
            base = name.removesuffix(part)
            if name.endswith(part) and f"{base}_bucket" in names:
                family_name, kind = base, "histogram"
                break
        else:
            if name.endswith("_total"):
                family_name, kind = name.removesuffix("_total"), "counter"
        family = scrape.families.setdefault(family_name, Family(family_name, kind))
        family.samples.append((name, own, value))
    return scrape


@dataclass
class _Instance:
    converter: Converter = field(default_factory=Converter)
    scraped_at: float = -1.0
    samples: list[Sample] = field(default_factory=list)


class PrometheusQuery:
    """The series of one selector, split by ``instance``, as quell samples per instance."""

    def __init__(
        self,
        base_url: str,
        selector: str,
        client: HttpClient,
        *,
        preset: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.selector = check_selector(selector)
        self.client = client
        self.preset = canonical(preset) if preset else None
        if preset and self.preset not in PROMETHEUS_PRESETS:
            raise PrometheusError(
                f"preset {preset!r} is not a Prometheus preset; known: "
                f"{', '.join(PROMETHEUS_PRESETS)}"
            )
        self._instances: dict[str, _Instance] = {}

    async def query(self) -> dict[str, dict[str, list[tuple[float, float]]]]:
        """instance -> series key -> [(ts, value)] over the lookback."""
        url = f"{self.base_url}/api/v1/query"
        params = {"query": f"{self.selector}[{LOOKBACK_S}s]", "time": f"{time.time():.3f}"}
        try:
            response = await self.client.get(url, params=params)
        except FetchError as problem:
            raise PrometheusError(str(problem)) from None
        try:
            body: Mapping[str, Any] = response.json()
        except ValueError:
            raise PrometheusError(
                f"{redact(self.base_url)} answered {response.status_code} without JSON"
            ) from None
        if body.get("status") != "success":
            raise PrometheusError(
                f"{redact(self.base_url)}: {body.get('errorType', response.status_code)}: "
                f"{body.get('error', 'query failed')}"
            )
        result = body.get("data", {}).get("result", [])
        by_instance: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for item in result:
            labels = item.get("metric", {})
            values = item.get("values") or []
            if "__name__" not in labels or not values:
                continue
            key = _key(labels)
            instance = labels.get("instance", "")
            points = [(float(ts), _number(v)) for ts, v in values]
            by_instance.setdefault(instance, {})[key] = points
        return by_instance

    async def collect(self, now: float, names: Mapping[str, str]) -> dict[str, CollectResult]:
        """One result per instance; ``names`` maps an instance to the target name it gets."""
        started = time.perf_counter()
        try:
            found = await self.query()
        except PrometheusError as problem:
            failed = CollectResult([], [], error(str(problem)), time.perf_counter() - started)
            return {names.get(i, i): failed for i in names or {"": ""}}
        results: dict[str, CollectResult] = {}
        for instance, series in found.items():
            target = names.get(instance, instance)
            state = self._instances.setdefault(instance, _Instance())
            scraped_at = max(points[-1][0] for points in series.values())
            if scraped_at > state.scraped_at:
                latest = [
                    (_labels_of(key), points[-1][1])
                    for key, points in series.items()
                    if points[-1][0] >= scraped_at - 0.5
                ]
                scrape = scrape_of(latest)
                preset = PROMETHEUS_PRESETS.get(self.preset or "") or detect(scrape)
                if preset is None:
                    results[target] = CollectResult(
                        [], [], error(f"{target}: no series a preset knows"), 0.0
                    )
                    continue
                readings = extract(preset, scrape)
                base: Labels = (("target", target),)
                state.samples = state.converter.convert(readings, scraped_at, base)
                state.scraped_at = scraped_at
            results[target] = CollectResult(state.samples, [], OK, time.perf_counter() - started)
        return results


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _key(labels: Mapping[str, str]) -> str:
    return "\x00".join(f"{k}\x01{v}" for k, v in sorted(labels.items()))


def _labels_of(key: str) -> dict[str, str]:
    return dict(part.split("\x01", 1) for part in key.split("\x00")) if key else {}


class PrometheusTarget:
    """A collector for the daemon: one selector's series as one target's samples."""

    def __init__(
        self,
        base_url: str,
        selector: str,
        client: HttpClient,
        *,
        preset: str | None = None,
        name: str = "",
    ) -> None:
        self.name = name or selector
        self._query = PrometheusQuery(base_url, selector, client, preset=preset)

    async def collect(self, now: float) -> CollectResult:
        started = time.perf_counter()
        results = await self._query.collect(now, {})
        samples = [
            Sample(s.series, labels_from({**dict(s.labels), "target": self.name}), s.ts, s.value)
            for result in results.values()
            for s in result.samples
        ]
        problems = [r.status for r in results.values() if r.status != OK]
        if not results:
            status = error(f"{self.name}: no series match {self._query.selector}")
        elif problems and not samples:
            status = problems[0]
        else:
            status = OK
        return CollectResult(samples, [], status, time.perf_counter() - started)

    async def close(self) -> None:
        """The HTTP client belongs to the daemon."""


async def instances(base_url: str, selector: str, client: HttpClient) -> list[str]:
    """The ``instance`` labels of the series a selector matches now."""
    query = f"count by (instance) ({check_selector(selector)})"
    try:
        response = await client.get(f"{base_url.rstrip('/')}/api/v1/query", params={"query": query})
        body = response.json()
    except FetchError as problem:
        raise PrometheusError(str(problem)) from None
    except ValueError:
        raise PrometheusError(
            f"{redact(base_url)} answered {response.status_code} without JSON"
        ) from None
    if body.get("status") != "success":
        raise PrometheusError(f"{redact(base_url)}: {body.get('error', 'query failed')}")
    return sorted(
        str(item["metric"].get("instance", "")) for item in body.get("data", {}).get("result", [])
    )
