"""From collected samples to diagnosis observations, and a watch loop that makes them.

A watched queue is a topology: the target that holds the queue (a gateway,
or a vLLM server on its own), the replicas behind it, and the host. Each
tick the samples of each part are summarised into quell's words and become
one ``Observation``. The daemon builds its observations from the same
function; ``quell diagnose`` without a daemon runs ``watch`` for its window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field

from collectors.diagnosis import Observation
from collectors.host import HostCollector
from collectors.http import HttpClient, make_client
from collectors.model import Collector, Sample
from collectors.sources import open_source
from collectors.summary import summarize


@dataclass(frozen=True)
class Topology:
    """One watched queue: where its queue lives, what serves it."""

    name: str
    queue_url: str
    replica_urls: Mapping[str, str] = field(default_factory=dict)
    preset: str | None = None


def signals_of(samples: Iterable[Sample]) -> dict[str, float]:
    """One number per signal, plus ``queue_full_rate`` split out of the rejections."""
    samples = list(samples)
    values, parts = summarize(samples)
    full = [
        p.value for p in parts.get("rejected_rate", []) if p.labels.get("reason") == "queue_full"
    ]
    if full:
        values["queue_full_rate"] = sum(full)
    elif "rejected_rate" in values and "rejected_rate" not in parts:
        # A source that gives one undivided rejection count (TGI's "overloaded")
        # refuses only when its queue is full.
        values["queue_full_rate"] = values["rejected_rate"]
    return values


def observation(
    ts: float,
    queue: Iterable[Sample],
    replicas: Mapping[str, Iterable[Sample]],
    host: Iterable[Sample] = (),
) -> Observation:
    return Observation(
        ts=ts,
        signals=signals_of(queue),
        replicas={name: signals_of(samples) for name, samples in replicas.items()},
        host=signals_of(host),
    )


async def watch(
    topology: Topology,
    interval_s: float = 1.0,
    duration_s: float | None = None,
    host: bool = True,
    client: HttpClient | None = None,
) -> AsyncIterator[Observation]:
    """Collect every part each interval and yield one observation per tick."""
    own_client = client is None
    http = client or make_client(1.0, 2.0)
    try:
        queue: Collector = open_source(topology.queue_url, http, preset=topology.preset,
                                       name=topology.name)  # fmt: skip
        replicas: dict[str, Collector] = {
            name: open_source(url, http, name=name) for name, url in topology.replica_urls.items()
        }
        host_collector = HostCollector() if host else None
        started = time.monotonic()
        next_tick = started
        while duration_s is None or time.monotonic() - started < duration_s:
            now = time.time()
            parts: list[Collector] = [queue, *replicas.values()]
            if host_collector is not None:
                parts.append(host_collector)
            results = await asyncio.gather(*(c.collect(now) for c in parts))
            replica_results = dict(zip(replicas, results[1 : 1 + len(replicas)], strict=True))
            yield observation(
                now,
                results[0].samples,
                {name: result.samples for name, result in replica_results.items()},
                results[-1].samples if host_collector is not None else (),
            )
            next_tick += interval_s
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    finally:
        if own_client:
            await http.aclose()


def lab_topology(state: Mapping[str, object]) -> Topology:
    """The lab's gateway as the queue and its live engines as replicas."""
    gateway = state["gateway"]
    engines = state["engines"]
    assert isinstance(gateway, dict) and isinstance(engines, list)
    return Topology(
        name="gateway",
        queue_url=f"{gateway['url']}/metrics",
        replica_urls={
            e["name"]: f"{e['url']}/metrics" for e in engines if e.get("exit_status") is None
        },
        preset="quell-gateway",
    )


@dataclass(frozen=True)
class PrometheusTopology:
    """One watched queue read through a Prometheus server: selectors instead of URLs.

    ``queue`` selects the series of the server holding the queue; ``replicas``
    those of the servers behind it, one replica per ``instance`` label.
    """

    name: str
    prometheus_url: str
    queue: str
    replicas: str | None = None
    preset: str | None = None


async def watch_prometheus(
    topology: PrometheusTopology,
    interval_s: float = 1.0,
    duration_s: float | None = None,
    client: HttpClient | None = None,
) -> AsyncIterator[Observation]:
    """The same observations as ``watch``, from PromQL queries."""
    from collectors.prometheus import PrometheusQuery

    own_client = client is None
    http = client or make_client(1.0, 3.0)
    try:
        queue = PrometheusQuery(
            topology.prometheus_url, topology.queue, http, preset=topology.preset
        )
        replicas = (
            PrometheusQuery(topology.prometheus_url, topology.replicas, http)
            if topology.replicas
            else None
        )
        started = time.monotonic()
        next_tick = started
        while duration_s is None or time.monotonic() - started < duration_s:
            now = time.time()
            queue_results = await queue.collect(now, {})
            replica_results = await replicas.collect(now, {}) if replicas is not None else {}
            yield observation(
                now,
                [s for result in queue_results.values() for s in result.samples],
                {name: result.samples for name, result in replica_results.items()},
            )
            next_tick += interval_s
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    finally:
        if own_client:
            await http.aclose()
