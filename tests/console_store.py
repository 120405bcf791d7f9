"""A recorded store for the console's tests: three minutes of a producer surge.

Built tick by tick with the real store and the daemon's own per-tick
diagnosis (``DiagnosisLoop``), so verdict samples, the incident and its
alerts are what a daemon would have written; only the collected samples are
synthetic. Every value is a function of the tick number: the file is the same
on every run.

- ticks 0-59: healthy, 30 req/s offered and served, depth 1;
- ticks 60-109: a producer surge, 90 req/s offered against 60 served; the
  works queue (128) fills in about four seconds and refuses the excess;
- ticks 110-179: back to 30 req/s; the queue drains and the verdict closes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from collectors.config import Config, StoreConfig, TargetConfig
from collectors.diagnosis_loop import DiagnosisLoop
from collectors.exporter import Exporter
from collectors.model import Event, Sample, labels
from collectors.store import Store

T0 = 1_700_000_000.0
TICKS = 180
SURGE = (60, 110)
CAPACITY = 128.0
WORKERS = 32.0
ENGINES = ("engine-0", "engine-1")
PRIORITIES = (("critical", 0.2), ("standard", 0.6), ("sheddable", 0.2))


class _Recorder:
    """What DiagnosisLoop needs of a daemon: its config, counters and exporter."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.samples_written = 0
        self.exporter = Exporter()
        self.last_samples: dict[str, list[Sample]] = {}


def _queue_state(tick: int) -> tuple[float, float, float, float]:
    """(offered, served, depth, refused) at ``tick``: 60 req/s of service, a queue of 128."""
    depth, offered, served, refused = 1.0, 30.0, 30.0, 0.0
    for t in range(tick + 1):
        offered = 90.0 if SURGE[0] <= t < SURGE[1] else 30.0
        served = min(60.0, offered + depth - 1.0)
        depth += offered - served
        refused = max(0.0, depth - CAPACITY)
        depth = max(1.0, min(CAPACITY, depth))
    return offered, served, depth, refused


def _samples(tick: int, ts: float) -> dict[str, list[Sample]]:
    offered, served, depth, refused = _queue_state(tick)
    surge = SURGE[0] <= tick < SURGE[1]
    running = WORKERS if surge or depth > 1 else 15.0
    gw = (("target", "gateway"),)
    gateway = [
        Sample("capacity", gw, ts, CAPACITY),
        Sample("workers", gw, ts, WORKERS),
        Sample("running", gw, ts, running),
        Sample("queue_timeout_seconds", gw, ts, 30.0),
        Sample("queue_wait_seconds", gw, ts, depth / 60.0 * 0.6),
        Sample("queue_wait_p95_seconds", gw, ts, max(0.02, depth / 60.0)),
    ]
    for priority, share in PRIORITIES:
        mine = (*gw, ("priority", priority))
        gateway += [
            Sample("depth", labels(*mine), ts, depth * share),
            Sample("offered_rate", labels(*mine), ts, offered * share),
            Sample("completed_rate", labels(*mine), ts, served * share),
            Sample("retried_rate", labels(*mine), ts, 0.0),
            Sample("rejected_rate", labels(*mine, ("reason", "queue_full")), ts, refused * share),
            Sample("rejected_rate", labels(*mine, ("reason", "rate_limited")), ts,
                   0.5 * share if surge else 0.0),
        ]  # fmt: skip
    engines: dict[str, list[Sample]] = {}
    for index, name in enumerate(ENGINES):
        mine = labels(target=name, engine=str(index), model="quell-mini")
        engines[name] = [
            Sample("depth", mine, ts, 0.0),
            Sample("capacity", mine, ts, 64.0),
            Sample("workers", mine, ts, 16.0),
            Sample("running", mine, ts, running / 2),
            Sample("kv_usage", mine, ts, 0.31 + 0.1 * index),
            Sample("completed_rate", mine, ts, served / 2),
            Sample("service_seconds", mine, ts, 0.53),
            Sample("token_seconds", mine, ts, 0.015),
            Sample("queue_wait_p95_seconds", mine, ts, 0.004),
        ]
        gateway.append(Sample("upstream_in_flight", labels(*gw, upstream=name), ts, running / 2))
        gateway.append(Sample("upstream_healthy", labels(*gw, upstream=name), ts, 1.0))
    busy = 62.0 if surge else 31.0
    host = [
        Sample("host_cpu_percent", (), ts, busy),
        Sample("host_cpu_core_percent", (("core", "0"),), ts, busy + 4),
        Sample("host_cpu_core_percent", (("core", "1"),), ts, busy - 4),
        Sample("host_cpu_iowait_percent", (), ts, 0.5),
        Sample("host_load1", (), ts, 1.6 if surge else 0.7),
        Sample("host_memory_percent", (), ts, 41.5),
        Sample("host_swap_percent", (), ts, 0.0),
        Sample("host_net_recv_bytes_rate", (), ts, 2.5e6 if surge else 0.9e6),
        Sample("host_net_sent_bytes_rate", (), ts, 1.8e6 if surge else 0.7e6),
        Sample("host_net_drops_rate", (), ts, 0.0),
        Sample("host_listen_overflows_rate", (), ts, 0.0),
        Sample("host_listen_queue_depth", (("port", "8080"),), ts, 3.0 if surge else 0.0),
        Sample("host_listen_queue_capacity", (("port", "8080"),), ts, 4096.0),
    ]
    for pid, name, cpu in (("101", "gateway", 22.0), ("102", "engine-0", 18.0),
                           ("103", "engine-1", 17.0)):  # fmt: skip
        mine = labels(pid=pid, process=name)
        host += [
            Sample("process_cpu_percent", mine, ts, cpu * (2 if surge else 1)),
            Sample("process_rss_bytes", mine, ts, 48.0 * 2**20),
            Sample("process_threads", mine, ts, 9.0),
            Sample("process_open_files", mine, ts, 40.0 + (130.0 if surge else 0.0)),
        ]
    return {"gateway": gateway, **engines, "host": host}


def _events(tick: int, ts: float) -> list[Event]:
    _, _, _, refused = _queue_state(tick)
    events = []
    if refused > 0:
        line = json.dumps({"status": 503, "outcome": "works_queue_full", "key": "standard"})
        events.append(Event(ts - 0.4, "queue_full", "gateway-access", line, "warning"))
    if tick == 5:
        events.append(Event(ts, "rate_limited", "gateway-access", '{"status": 429}', "info"))
    if tick == 100:
        events.append(Event(ts, "upstream_timeout", "gateway-access",
                            '{"status": 504, "upstream": "engine-1"}', "error"))  # fmt: skip
    if tick == 101:
        events.append(Event(ts, "oom", "engine-1", "engine-1: KV cache exhausted", "critical"))
    return events


async def record(path: Path) -> Path:
    config = Config(
        store=StoreConfig(path=path),
        targets=(
            TargetConfig("gateway", "http://127.0.0.1:1/metrics", "quell-gateway"),
            *(TargetConfig(e, "http://127.0.0.1:1/metrics", "vllm", replica_of="gateway")
              for e in ENGINES),
        ),
    )  # fmt: skip
    recorder = _Recorder(config)
    loop = DiagnosisLoop(recorder, routes=())  # type: ignore[arg-type]
    store = await Store.open(path)
    try:
        for tick in range(TICKS):
            ts = T0 + tick
            by_source = _samples(tick, ts)
            recorder.last_samples = by_source
            await store.write_tick(
                [s for samples in by_source.values() for s in samples], _events(tick, ts)
            )
            await loop(store, ts)
    finally:
        await store.close()
    return path


def recorded_store(path: Path) -> Path:
    return asyncio.run(record(path))
