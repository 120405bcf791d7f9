"""Closed loops against the real lab: each built-in playbook that acts on traffic,
started by the verdict of the incident it answers, must pass its verification
because the signal recovered while the incident was still going on (the fault
or the flood is never cleared by the test), and its rollback must put back
exactly the state before it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from collectors.watch import lab_topology
from inference.lab.capacity import lab_capacity_rps
from inference.lab.scenario import lab_traffic
from inference.lab.traffic import Generator, Target
from playbooks.actions import Context, lab_context
from playbooks.journal import Journal
from playbooks.loader import load_catalog
from playbooks.observe import LiveSignals
from playbooks.runner import Runner, RunResult
from tests.lab_helpers import lab_pids, lab_state, quell, wait_gone

ONSET_S = 12.0
LAB_QUEUE = {"workers": 32, "capacity": 128, "timeout_s": 10.0}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    state_dir = tmp_path_factory.mktemp("drills")
    result = quell(state_dir, "lab", "up", "--detach")
    assert result.returncode == 0, result.stdout + result.stderr
    state = lab_state(state_dir)
    yield state_dir, state
    quell(state_dir, "lab", "down")
    assert wait_gone(lab_pids(state)) == []


def settle(state_dir: Path) -> dict[str, Any]:
    """Two healthy replicas, no faults, the lab's own gateway settings, an empty queue."""
    result = quell(state_dir, "lab", "scale", "2")
    assert result.returncode == 0, result.stderr
    state = lab_state(state_dir)
    gateway = state["gateway"]
    admin = {"Authorization": f"Bearer {gateway['admin_token']}"}
    with httpx.Client(base_url=gateway["url"], headers=admin, timeout=5) as client:
        client.post("/admin/queue", json=LAB_QUEUE).raise_for_status()
        client.post("/admin/shed", json={"classes": []}).raise_for_status()
        for key in ("interactive", "standard", "batch"):
            client.post(
                "/admin/limits",
                json={"key": key, "requests_per_second": None, "burst": None},
            ).raise_for_status()
        for name, upstream in client.get("/admin/state").json()["upstreams"].items():
            if upstream["drained"]:
                client.post(f"/admin/upstreams/{name}/undrain").raise_for_status()
            if upstream["breaker"]["tripped"]:
                client.post(f"/admin/upstreams/{name}/reset").raise_for_status()
    for engine in state["engines"]:
        headers = {"Authorization": f"Bearer {engine['admin_token']}"}
        httpx.delete(f"{engine['url']}/admin/faults", headers=headers, timeout=5)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        queue = httpx.get(f"{gateway['url']}/admin/state", headers=admin, timeout=5).json()
        if queue["queue"]["depth"] == 0 and queue["queue"]["in_flight"] == 0:
            return state
        time.sleep(0.25)
    raise AssertionError("the lab did not drain before the drill")


async def knobs(ctx: Context) -> dict[str, Any]:
    """Every setting a playbook may turn, as the gateway and the lab report them."""
    state = await ctx.gateway_admin("GET", "/admin/state")
    lab = await ctx.lab({"op": "status"})
    return {
        "queue": {k: state["queue"][k] for k in ("workers", "capacity", "timeout_s")},
        "limits": state["limits"],
        "keys": {name: key["own_limits"] for name, key in state["keys"].items()},
        "shed": state["shed"],
        "cache": {k: state["cache"][k] for k in ("enabled", "ttl_s", "max_entries")},
        "upstreams": {
            name: (u["drained"], u["breaker"]["tripped"]) for name, u in state["upstreams"].items()
        },
        "replicas": sorted(e["name"] for e in lab["state"]["engines"]),
    }


@dataclass
class Drill:
    result: RunResult
    verdict: str
    before: dict[str, Any]
    rolled_back: dict[str, Any]
    rollback: RunResult


async def _drill(
    state: dict[str, Any],
    journal_path: Path,
    playbook: str,
    profile: list[tuple[float, float]],
    causes: tuple[str, ...],
    incident: Callable[[Context], Awaitable[None]] | None = None,
    keys: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    prepare: Callable[[Context], Awaitable[None]] | None = None,
) -> Drill:
    scenario = lab_traffic("drill", profile, 120, cause=causes[0], onset_s=ONSET_S, keys=keys)
    traffic = scenario.traffic
    capacity = lab_capacity_rps(state, traffic.prompt_tokens.mean(), traffic.max_tokens.mean())
    target = Target(state["gateway"]["url"], {k["name"]: k["key"] for k in state["keys"]})
    generator = Generator(scenario, target, capacity, seed=11)
    generator.prepare()
    ctx = lab_context(state)
    if prepare is not None:
        await prepare(ctx)
    before = await knobs(ctx)
    signals = LiveSignals(lab_topology(state))
    journal = Journal(journal_path)
    runner = Runner(ctx, journal, signals)
    await signals.start()
    sending = asyncio.create_task(generator.run())
    try:
        await asyncio.sleep(ONSET_S)
        if incident is not None:
            await incident(ctx)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            await signals.next_tick()
            verdict = signals.verdict
            if verdict is not None and verdict.cause in causes:
                break
        else:
            raise AssertionError(f"no verdict in {causes}; last: {signals.verdict}")
        result = await runner.run(load_catalog()[playbook], params or {}, trigger="drill")
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        await signals.stop()
    assert result.run_id is not None
    rollback = await runner.rollback_run(result.run_id)
    rolled_back = await knobs(ctx)
    problems = journal.verify_chain()
    journal.close()
    await ctx.close()
    assert problems == []
    return Drill(result, verdict.cause, before, rolled_back, rollback)


def drill(lab: tuple[Path, dict[str, Any]], tmp_path: Path, playbook: str, **kw: Any) -> Drill:
    state_dir, _ = lab
    state = settle(state_dir)
    return asyncio.run(_drill(state, tmp_path / "quell.db", playbook, **kw))


def verified(result: RunResult) -> dict[str, float]:
    events = [e for e in result.events if e["event"] == "verified"]
    assert events, result.events
    values: dict[str, float] = events[-1]["values"]
    return values


def check_closed_loop(run: Drill) -> dict[str, float]:
    assert run.result.status == "applied", (run.result.message, run.result.events)
    assert run.result.exit_code == 0
    assert any(not c.unchanged for c in run.result.changes)
    assert run.rollback.status == "applied", run.rollback.message
    assert run.rolled_back == run.before
    return verified(run.result)


def test_tighten_limits_ends_a_producer_surge(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run = drill(
        lab, tmp_path, "tighten-limits",
        profile=[(0, 0.6), (ONSET_S, 0.6), (ONSET_S, 2.0)],
        causes=("producer_surge",),
    )  # fmt: skip
    values = check_closed_loop(run)
    assert values["occupancy"] < 0.7
    limited = {c.knob for c in run.result.changes if not c.unchanged}
    assert "keys.standard.requests_per_second" in limited
    assert "keys.interactive.requests_per_second" not in limited  # critical traffic untouched


def test_shed_sheddable_ends_a_mild_surge(lab: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run = drill(
        lab, tmp_path, "shed-sheddable",
        profile=[(0, 0.5), (ONSET_S, 0.5), (ONSET_S, 1.25)],
        keys={"interactive": 0.2, "standard": 0.4, "batch": 0.4},
        causes=("producer_surge",),
    )  # fmt: skip
    assert check_closed_loop(run)["occupancy"] < 0.7
    assert run.before["shed"] == [] and run.rolled_back["shed"] == []


async def _slow_every_engine(ctx: Context) -> None:
    for name in ctx.engines:
        await ctx.engine_admin(name, "POST", "/admin/faults", {"slowdown": 3.0})


def test_scale_replicas_outruns_a_consumer_slowdown(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run = drill(
        lab, tmp_path, "scale-replicas",
        profile=[(0, 0.6)],
        causes=("consumer_slowdown",),
        incident=_slow_every_engine,
    )  # fmt: skip
    values = check_closed_loop(run)
    assert values["service_rate"] >= 0.9 * values["offered_rate"]
    assert len(run.before["replicas"]) == 2
    grown = next(c for c in run.result.changes if c.knob == "replicas")
    assert grown.after == 4


async def _stall_engine_1(ctx: Context) -> None:
    await ctx.engine_admin("engine-1", "POST", "/admin/faults", {"stalled": True})


@pytest.mark.parametrize("playbook", ["drain-replica", "trip-breaker"])
def test_cutting_off_a_stalled_replica_restores_goodput(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path, playbook: str
) -> None:
    run = drill(
        lab, tmp_path, playbook,
        profile=[(0, 0.35)],
        causes=("hot_replica", "stalled_consumers"),
        incident=_stall_engine_1,
        params={"upstream": "engine-1"},
    )  # fmt: skip
    values = check_closed_loop(run)
    assert values["service_rate"] >= 0.9 * values["offered_rate"]


async def _few_workers(ctx: Context) -> None:
    await ctx.gateway_admin("POST", "/admin/queue", {"workers": 6})


def test_scale_workers_when_the_worker_pool_is_the_bottleneck(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run = drill(
        lab, tmp_path, "scale-workers",
        profile=[(0, 0.15), (ONSET_S, 0.15), (ONSET_S, 0.5)],
        causes=("producer_surge", "consumer_slowdown", "dependency_slow", "resource_saturation"),
        prepare=_few_workers,
        params={"factor": 6.0},
    )  # fmt: skip
    check_closed_loop(run)
    assert run.before["queue"]["workers"] == 6 == run.rolled_back["queue"]["workers"]


async def _tiny_queue(ctx: Context) -> None:
    await ctx.gateway_admin("POST", "/admin/queue", {"capacity": 4})


def test_raise_queue_capacity_absorbs_bursts(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    bursts = [
        point
        for t in range(6, 120, 6)
        for point in ((t, 0.3), (t, 3.0), (t + 1, 3.0), (t + 1, 0.3))
    ]
    run = drill(
        lab, tmp_path, "raise-queue-capacity",
        profile=[(0, 0.3), *bursts],
        causes=("undersized_queue",),
        prepare=_tiny_queue,
        params={"factor": 32.0},
    )  # fmt: skip
    assert check_closed_loop(run)["queue_full_rate"] < 0.2
    assert run.result.plan is not None and run.result.plan.warnings
