"""Each built-in scenario, run against a real lab, shows the symptom it claims.

The evidence is read from the gateway's and the engines' own /metrics while
the scenario runs, compressed in time. One lab serves the whole module; after
each scenario every fault is cleared and the queues drain before the next.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inference.lab.capacity import lab_capacity_rps
from inference.lab.faults import EngineHandle, FaultInjector, GatewayHandle
from inference.lab.scenario import Scenario, load_scenario, scaled
from inference.lab.traffic import Generator, Results, Target
from tests.lab_helpers import lab_pids, lab_state, quell, wait_gone

Snapshot = dict[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]


@dataclass
class Sampler:
    """Scrapes every target's /metrics twice a second in a background thread."""

    urls: dict[str, str]
    period: float = 0.5
    started: float = field(default_factory=time.monotonic)
    snapshots: list[tuple[float, Snapshot, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=2.0) as client:
            psutil.cpu_percent()
            while not self._stop.is_set():
                snapshot: Snapshot = {}
                for name, url in self.urls.items():
                    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
                    try:
                        text = client.get(f"{url}/metrics").text
                    except httpx.HTTPError:
                        continue
                    for family in text_string_to_metric_families(text):
                        for sample in family.samples:
                            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
                    snapshot[name] = values
                cpu = psutil.cpu_percent()
                self.snapshots.append((time.monotonic() - self.started, snapshot, cpu))
                self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @staticmethod
    def value(snapshot: Snapshot, target: str, name: str, **labels: str) -> float:
        total = 0.0
        for (sample, sample_labels), value in snapshot.get(target, {}).items():
            if sample == name and all((k, v) in sample_labels for k, v in labels.items()):
                total += value
        return total

    def series(self, target: str, name: str, **labels: str) -> list[tuple[float, float]]:
        return [(t, self.value(s, target, name, **labels)) for t, s, _ in self.snapshots]

    def rate(self, target: str, name: str, start: float, end: float, **labels: str) -> float:
        """Per-second increase of a counter between two times."""
        points = [(t, v) for t, v in self.series(target, name, **labels) if start <= t <= end]
        if len(points) < 2:
            raise AssertionError(f"no samples of {name} between {start} and {end}")
        (t0, v0), (t1, v1) = points[0], points[-1]
        return (v1 - v0) / (t1 - t0)

    def mean_of_histogram(self, target: str, name: str, start: float, end: float) -> float:
        total = self.rate(target, f"{name}_sum", start, end)
        count = self.rate(target, f"{name}_count", start, end)
        return total / count if count else float("nan")

    def peak(self, target: str, name: str, start: float, end: float, **labels: str) -> float:
        return max(v for t, v in self.series(target, name, **labels) if start <= t <= end)

    def cpu_peak(self, start: float, end: float) -> float:
        return max(cpu for t, _, cpu in self.snapshots if start <= t <= end)


@dataclass
class Run:
    scenario: Scenario
    capacity: float
    results: Results
    sampler: Sampler
    engines: list[str]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    state_dir = tmp_path_factory.mktemp("symptoms")
    result = quell(state_dir, "lab", "up", "--detach")
    assert result.returncode == 0, result.stdout + result.stderr
    state = lab_state(state_dir)
    yield state_dir, state
    quell(state_dir, "lab", "down")
    assert wait_gone(lab_pids(state)) == []


def _settle(state: dict[str, Any]) -> None:
    """Clear every fault and wait for the gateway's queue and workers to empty."""
    for engine in state["engines"]:
        headers = {"Authorization": f"Bearer {engine['admin_token']}"}
        httpx.delete(f"{engine['url']}/admin/faults", headers=headers, timeout=5)
        httpx.post(f"{engine['url']}/admin/faults", json={"slots": 16}, headers=headers, timeout=5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = httpx.get(f"{state['gateway']['url']}/metrics", timeout=5).text
        busy = [
            line
            for line in text.splitlines()
            if line.startswith(("quell_gateway_queue_depth ", "quell_gateway_in_flight "))
            and float(line.split()[-1]) > 0
        ]
        if not busy:
            return
        time.sleep(0.25)
    raise AssertionError("the lab did not drain between scenarios")


def run_scenario(
    lab: tuple[Path, dict[str, Any]], name: str, time_scale: float, duration: float | None = None
) -> Run:
    _, state = lab
    _settle(state)
    scenario = scaled(load_scenario(name), time_scale)
    if duration is not None:
        from dataclasses import replace

        scenario = replace(scenario, duration_s=duration)
    traffic = scenario.traffic
    capacity = lab_capacity_rps(state, traffic.prompt_tokens.mean(), traffic.max_tokens.mean())
    target = Target(state["gateway"]["url"], {k["name"]: k["key"] for k in state["keys"]})
    engines = [EngineHandle(e["index"], e["url"], e["admin_token"]) for e in state["engines"]]
    gateway = GatewayHandle(state["gateway"]["url"], state["gateway"]["admin_token"])
    urls = {"gateway": state["gateway"]["url"]}
    urls.update({f"engine-{e['index']}": e["url"] for e in state["engines"]})
    generator = Generator(scenario, target, capacity, seed=7)
    generator.prepare()

    async def go() -> Results:
        injector = FaultInjector(engines, gateway)
        faults = asyncio.create_task(injector.run(scenario.faults, time.monotonic()))
        try:
            return await generator.run()
        finally:
            faults.cancel()
            await asyncio.gather(faults, return_exceptions=True)
            await injector.cleanup()

    sampler = Sampler(urls)
    try:
        results = asyncio.run(go())
    finally:
        sampler.stop()
    return Run(
        scenario, capacity, results, sampler, [f"engine-{e['index']}" for e in state["engines"]]
    )


def rejected(run: Run, start: float, end: float, outcome: str = "works_queue_full") -> float:
    series = run.sampler.series("gateway", "quell_gateway_requests_total", outcome=outcome)
    inside = [v for t, v in series if start <= t <= end]
    return inside[-1] - inside[0] if len(inside) > 1 else 0.0


def engines_rate(run: Run, name: str, start: float, end: float, **labels: str) -> float:
    return sum(run.sampler.rate(e, name, start, end, **labels) for e in run.engines)


def test_steady_is_absorbed_without_rejections(lab: tuple[Path, dict[str, Any]]) -> None:
    # The first 25 s hold one burst to 120% at 20-22 s.
    run = run_scenario(lab, "steady", 1.0, duration=25)
    assert rejected(run, 0, 30) == 0
    assert run.sampler.peak("gateway", "quell_gateway_queue_depth", 19, 25) < 64
    assert run.results.ok == run.results.sent


def test_producer_surge_floods_with_flat_service_time(lab: tuple[Path, dict[str, Any]]) -> None:
    run = run_scenario(lab, "producer_surge", 0.4, duration=22)
    onset = run.scenario.onset_s  # 8 s
    before = run.sampler.rate("gateway", "quell_gateway_requests_received_total", 1, onset)
    during = run.sampler.rate("gateway", "quell_gateway_requests_received_total", onset + 1, 20)
    assert during > 2.2 * before
    assert rejected(run, 0, onset) == 0
    assert rejected(run, onset, 22) > 20
    service_before = engines_mean(run, "vllm:request_inference_time_seconds", 1, onset)
    service_during = engines_mean(run, "vllm:request_inference_time_seconds", onset + 2, 20)
    assert service_during < 1.6 * service_before


def engines_mean(run: Run, name: str, start: float, end: float) -> float:
    total = engines_rate(run, f"{name}_sum", start, end)
    count = engines_rate(run, f"{name}_count", start, end)
    return total / count


def test_ramp_fills_the_queue_only_after_crossing_capacity(
    lab: tuple[Path, dict[str, Any]],
) -> None:
    run = run_scenario(lab, "ramp", 0.4, duration=36)  # onset 18 s
    onset = run.scenario.onset_s
    assert run.sampler.peak("gateway", "quell_gateway_queue_depth", 0, onset - 4) < 16
    assert run.sampler.peak("gateway", "quell_gateway_queue_depth", onset, 36) > 32
    early = run.sampler.rate("gateway", "quell_gateway_requests_received_total", 1, 8)
    late = run.sampler.rate("gateway", "quell_gateway_requests_received_total", 28, 35)
    assert late > 1.7 * early  # 2.3 expected; Poisson noise over 7 s takes some


def test_consumer_slowdown_raises_service_time_with_flat_arrivals(
    lab: tuple[Path, dict[str, Any]],
) -> None:
    run = run_scenario(lab, "consumer_slowdown", 0.4, duration=22)  # slowdown 8 s - 22 s
    onset = run.scenario.onset_s
    arrivals_before = run.sampler.rate("gateway", "quell_gateway_requests_received_total", 1, onset)
    arrivals_during = run.sampler.rate(
        "gateway", "quell_gateway_requests_received_total", onset + 1, 21
    )
    assert arrivals_during == pytest.approx(arrivals_before, rel=0.35)
    service_before = engines_mean(run, "vllm:request_inference_time_seconds", 1, onset)
    service_during = engines_mean(run, "vllm:request_inference_time_seconds", onset + 3, 21)
    assert service_during > 2.2 * service_before
    assert run.sampler.peak("gateway", "quell_gateway_queue_depth", onset + 2, 22) > 32


def test_stalled_consumers_complete_nothing_with_every_worker_busy(
    lab: tuple[Path, dict[str, Any]],
) -> None:
    run = run_scenario(lab, "stalled_consumers", 0.4, duration=17)  # stall 8 s - 18 s
    onset = run.scenario.onset_s
    assert engines_rate(run, "vllm:request_success_total", 1, onset) > 5
    assert engines_rate(run, "vllm:request_success_total", onset + 1, 16) == 0
    # A hung engine admits nothing: the batch running at the onset holds its
    # slots, however many that was, and the rest waits at the engine. How
    # full the batch was is chance (about 9 per engine at 60% of capacity).
    held = 0.0
    for engine in run.engines:
        running = {v for t, v in run.sampler.series(engine, "vllm:num_requests_running")
                   if onset + 1 <= t <= 16}  # fmt: skip
        assert len(running) == 1, (engine, running)
        held += running.pop()
    assert held > 0
    # Every gateway worker ends up waiting on an engine that never answers.
    workers = run.sampler.peak("gateway", "quell_gateway_workers", 0, 17)
    assert run.sampler.peak("gateway", "quell_gateway_in_flight", onset + 1, 16) == workers
    at_engines = max(
        sum(Sampler.value(snapshot, e, name)
            for e in run.engines
            for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"))
        for t, snapshot, _ in run.sampler.snapshots
        if onset + 1 <= t <= 16
    )  # fmt: skip
    assert at_engines == workers
    assert rejected(run, onset, 17) > 0


def test_dependency_slow_holds_slots_while_engines_idle(lab: tuple[Path, dict[str, Any]]) -> None:
    run = run_scenario(lab, "dependency_slow", 0.4, duration=20)  # 8 s - 22 s
    onset = run.scenario.onset_s
    service_before = engines_mean(run, "vllm:request_inference_time_seconds", 1, onset)
    service_during = engines_mean(run, "vllm:request_inference_time_seconds", onset + 3, 19)
    assert service_during > service_before + 1.2
    # Slots stay full while tokens come out slower: the GPU waits on the dependency.
    tokens_before = engines_rate(run, "vllm:generation_tokens_total", 1, onset)
    tokens_during = engines_rate(run, "vllm:generation_tokens_total", onset + 3, 19)
    assert tokens_during < 0.8 * tokens_before
    running = sum(run.sampler.peak(e, "vllm:num_requests_running", onset + 2, 19)
                  for e in run.engines)  # fmt: skip
    assert running >= 24


def test_resource_saturation_runs_the_kv_cache_and_cpu_at_their_limits(
    lab: tuple[Path, dict[str, Any]],
) -> None:
    run = run_scenario(lab, "resource_saturation", 0.4, duration=20)  # 8 s - 22 s
    onset = run.scenario.onset_s
    kv_before = max(run.sampler.peak(e, "vllm:kv_cache_usage_perc", 0, onset) for e in run.engines)
    kv_during = max(
        run.sampler.peak(e, "vllm:kv_cache_usage_perc", onset + 1, 20) for e in run.engines
    )
    assert kv_before < 0.2 and kv_during > 0.75
    assert run.sampler.cpu_peak(onset + 1, 20) > 90
    arrivals_before = run.sampler.rate("gateway", "quell_gateway_requests_received_total", 1, onset)
    arrivals_during = run.sampler.rate(
        "gateway", "quell_gateway_requests_received_total", onset + 1, 19
    )
    assert arrivals_during < 1.4 * arrivals_before
    assert run.sampler.peak("gateway", "quell_gateway_queue_depth", onset + 2, 20) > 16


def test_hot_replica_queues_on_one_replica_only(lab: tuple[Path, dict[str, Any]]) -> None:
    run = run_scenario(lab, "hot_replica", 0.4, duration=20)  # 8 s - 22 s
    onset = run.scenario.onset_s
    hot = run.sampler.peak("engine-0", "vllm:num_requests_waiting", onset + 1, 20)
    cold = max(run.sampler.peak(e, "vllm:num_requests_waiting", onset + 1, 20)
               for e in run.engines[1:])  # fmt: skip
    assert hot >= 8 and cold <= hot / 4
    assert run.sampler.peak("engine-0", "quell_engine_slots", onset + 1, 20) == 2


def test_retry_storm_stays_overloaded_after_the_surge(lab: tuple[Path, dict[str, Any]]) -> None:
    run = run_scenario(lab, "retry_storm", 0.4, duration=26)  # surge 8 s - 14 s
    end_of_surge = run.scenario.onset_s  # 14 s
    offered_after = run.sampler.rate(
        "gateway", "quell_gateway_requests_received_total", end_of_surge + 2, 25
    )
    # The clients' own rate is back to 60% of capacity, yet the gateway is
    # still offered more than it can serve: the retries are the difference.
    own_rate = 0.6 * run.capacity
    assert offered_after > run.capacity
    assert offered_after > 1.5 * own_rate
    timeline = run.results.timeline

    def retried_share(start: int, end: int) -> float:
        seconds = timeline[start:end]
        return sum(s.retries for s in seconds) / max(1, sum(s.offered for s in seconds))

    assert retried_share(0, 8) < 0.05
    assert retried_share(17, 25) > 0.5


def test_undersized_queue_rejects_bursts_at_low_average_load(
    lab: tuple[Path, dict[str, Any]],
) -> None:
    run = run_scenario(lab, "undersized_queue", 0.5, duration=22)  # bursts at 5, 10, 15, 20 s
    offered = run.sampler.rate("gateway", "quell_gateway_requests_received_total", 1, 21)
    assert offered < 0.6 * run.capacity
    assert run.sampler.peak("gateway", "quell_gateway_queue_capacity", 1, 21) == 4
    assert rejected(run, 0, 22) > 10
    _, state = lab
    text = httpx.get(f"{state['gateway']['url']}/metrics").text
    assert "quell_gateway_queue_capacity 128.0" in text, "the scenario did not restore the queue"
