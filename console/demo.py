"""`quell demo`: a scripted incident against the bundled lab, found and fixed.

The script, for a run of D seconds (90 by default):

- steady traffic at 60% of the lab's capacity;
- at 0.12 D a producer surge to 200%: the queue fills, the verdict says
  ``producer_surge``, and the recommended playbook (``tighten-limits``) runs
  and must verify that occupancy fell under 70% while the surge goes on;
- at 0.45 D the surge ends and ``restore-baseline`` puts the limits back;
- at 0.53 D every replica becomes three times slower: ``consumer_slowdown``,
  and ``scale-replicas`` must bring the service rate back above the offered
  rate;
- at 0.9 D the slowdown is cleared and ``restore-baseline`` scales back.

The collector loop is the daemon's own (``collectors.daemon``), in process,
writing an SQLite store in a temporary directory; the playbooks go through
the same runner and journal as ``quell play``. Nothing here knows Textual:
the console shows the same events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIN_DURATION_S = 80.0
SURGE_AT, SURGE_END, SLOW_AT, SLOW_END = 0.12, 0.45, 0.53, 0.9


@dataclass
class DemoEvent:
    t: float
    kind: str  # phase, verdict, playbook, step, recovered, problem
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"t+{self.t:6.1f} s  {self.kind:<9} {self.text}"


Confirm = Callable[[str, Any], Awaitable[bool]]


@dataclass
class Phase:
    name: str
    cause: str
    playbook: str
    found: bool = False
    verdict_at: float | None = None
    applied: bool = False
    recovered_at: float | None = None


class Demo:
    """Start with ``await demo.start()``, run with ``await demo.run()``, always ``stop()``."""

    def __init__(
        self,
        directory: Path,
        duration_s: float = 90.0,
        confirm: Confirm | None = None,
        on_event: Callable[[DemoEvent], None] | None = None,
        seed: int = 5,
    ) -> None:
        self.dir = directory
        self.duration_s = duration_s
        self.confirm = confirm
        self.on_event = on_event
        self.seed = seed
        self.events: list[DemoEvent] = []
        self.phases = [
            Phase("producer surge", "producer_surge", "tighten-limits"),
            Phase("consumer slowdown", "consumer_slowdown", "scale-replicas"),
        ]
        self.state: dict[str, Any] = {}
        self.store_path = directory / "lab" / "quell.db"
        self.daemon: Any = None
        self.diagnosis: Any = None
        self._daemon_task: asyncio.Task[int] | None = None
        self._lab: asyncio.subprocess.Process | None = None
        self._started = 0.0
        self._env = {**os.environ, "QUELL_STATE_DIR": str(directory)}

    # -- events --------------------------------------------------------------

    def emit(self, kind: str, text: str, **data: Any) -> None:
        event = DemoEvent(round(time.monotonic() - self._started, 1), kind, text, data)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    # -- the lab and the collector loop ------------------------------------

    async def start(self) -> None:
        from collectors.config import lab_config
        from collectors.daemon import Daemon
        from collectors.diagnosis_loop import DiagnosisLoop
        from inference.lab.state import read_state

        self._started = time.monotonic()
        os.environ["QUELL_STATE_DIR"] = str(self.dir)
        self.emit("phase", "starting the lab: a gateway and two engines on loopback")
        await self._start_lab()
        self.state = read_state()
        config = lab_config(self.state)
        from dataclasses import replace

        config = replace(config, daemon=replace(config.daemon, metrics=False))
        self.daemon = Daemon(config)
        self.diagnosis = DiagnosisLoop(self.daemon, routes=())
        self.daemon.on_tick.append(self.diagnosis)
        self._daemon_task = asyncio.create_task(self.daemon.run(install_signals=False))
        self.emit("phase", f"collecting every second into {self.store_path}")

    async def _start_lab(self) -> None:
        """The lab as a child that dies with this process, however this process ends.

        A detached lab would outlive a demo whose terminal hung up; the
        supervisor gets SIGTERM from the kernel instead (PR_SET_PDEATHSIG,
        set in the child, tied to this thread: the one running the loop).
        """
        from inference.lab.state import LabNotRunning, lab_dir, read_state
        from inference.lab.supervisor import _die_with_parent

        lab_dir().mkdir(parents=True, exist_ok=True)
        log = (lab_dir() / "demo-supervisor.log").open("wb")
        self._lab = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "console", "lab", "up",
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=self._env, preexec_fn=_die_with_parent,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._lab.returncode is not None:
                text = (lab_dir() / "demo-supervisor.log").read_text(errors="replace")
                raise RuntimeError(f"the lab did not start: {text.strip()[-500:]}")
            with contextlib.suppress(LabNotRunning, OSError, ValueError):
                if read_state().get("status") == "ready":
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError("the lab did not become ready within 60 s")

    async def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.request_stop()
        if self._daemon_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._daemon_task, 10)
        lab = self._lab
        if lab is not None and lab.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                lab.terminate()
            try:
                await asyncio.wait_for(lab.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    lab.kill()
                await lab.wait()

    # -- the script ----------------------------------------------------------

    def verdict(self) -> Any:
        diagnoser = self.diagnosis.diagnosers.get("gateway") if self.diagnosis else None
        return diagnoser.verdict if diagnoser is not None else None

    async def run(self) -> bool:
        from inference.lab.capacity import lab_capacity_rps
        from inference.lab.scenario import lab_traffic
        from inference.lab.traffic import Generator, Target

        d = self.duration_s
        surge, surge_end = round(SURGE_AT * d, 1), round(SURGE_END * d, 1)
        scenario = lab_traffic(
            "demo", [(0, 0.6), (surge, 0.6), (surge, 2.0), (surge_end, 2.0), (surge_end, 0.6)],
            d, cause="producer_surge", onset_s=surge,
            description="quell demo: a producer surge, then a consumer slowdown",
        )  # fmt: skip
        traffic = scenario.traffic
        capacity = lab_capacity_rps(
            self.state, traffic.prompt_tokens.mean(), traffic.max_tokens.mean()
        )
        target = Target(
            self.state["gateway"]["url"], {k["name"]: k["key"] for k in self.state["keys"]}
        )
        generator = Generator(scenario, target, capacity, seed=self.seed)
        generator.prepare()
        clock0 = time.monotonic()
        self.emit("phase", f"steady traffic at 60% of capacity ({0.6 * capacity:.0f} req/s)")
        sending = asyncio.create_task(generator.run())
        try:
            await self._until(clock0 + SURGE_AT * d)
            self.emit("phase", f"producer surge: arrivals to 200% ({2 * capacity:.0f} req/s)")
            await self._answer(self.phases[0], clock0 + SURGE_END * d)
            await self._until(clock0 + SURGE_END * d)
            self.emit("phase", "the surge ends")
            await self._playbook("restore-baseline", None, "demo: after the surge")
            await self._until(clock0 + SLOW_AT * d)
            self.emit("phase", "every replica becomes 3x slower (a bad deploy)")
            await self._faults({"slowdown": 3.0})
            await self._answer(self.phases[1], clock0 + SLOW_END * d)
            await self._until(clock0 + SLOW_END * d)
            self.emit("phase", "the slowdown is fixed")
            await self._faults(None)
            await self._playbook("restore-baseline", None, "demo: after the slowdown")
            await self._until(clock0 + d)
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        ok = all(p.found and p.recovered_at is not None for p in self.phases)
        for phase in self.phases:
            self.emit(
                "summary",
                f"{phase.name}: verdict {'found' if phase.found else 'NOT found'}"
                + (f" {phase.verdict_at:.1f} s after onset" if phase.verdict_at is not None else "")
                + (f", {phase.playbook} verified {phase.recovered_at:.1f} s after onset"
                   if phase.recovered_at is not None else f", {phase.playbook} did not recover it"),
            )  # fmt: skip
        return ok

    async def _until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - time.monotonic()))

    async def _faults(self, settings: dict[str, Any] | None) -> None:
        import httpx

        from inference.lab.state import read_state

        self.state = read_state()
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            for engine in self.state["engines"]:
                headers = {"Authorization": f"Bearer {engine['admin_token']}"}
                if settings is None:
                    await client.delete(f"{engine['url']}/admin/faults", headers=headers)
                else:
                    await client.post(f"{engine['url']}/admin/faults", json=settings,
                                      headers=headers)  # fmt: skip

    async def _answer(self, phase: Phase, deadline: float) -> None:
        onset = time.monotonic()
        verdict = None
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            verdict = self.verdict()
            if verdict is not None and verdict.cause == phase.cause:
                break
        else:
            self.emit("problem", f"no {phase.cause} verdict: last {verdict and verdict.cause}")
            return
        phase.found = True
        phase.verdict_at = time.monotonic() - onset
        ttf = f", full in {verdict.time_to_full:.0f} s" if verdict.time_to_full else ""
        self.emit(
            "verdict",
            f"{verdict.cause} (confidence {verdict.confidence:.0%}{ttf}); "
            f"recommended: {', '.join(verdict.playbooks)}",
            cause=verdict.cause, confidence=verdict.confidence, evidence=verdict.evidence,
        )  # fmt: skip
        result = await self._playbook(phase.playbook, verdict, f"demo: {verdict.cause}")
        if result is not None and result.status == "applied":
            phase.applied = True
            phase.recovered_at = time.monotonic() - onset
            self.emit("recovered", f"{phase.playbook} verified: the signal recovered")

    async def _playbook(self, name: str, verdict: Any, trigger: str) -> Any:
        from collectors.watch import lab_topology
        from inference.lab.state import read_state
        from playbooks.actions import lab_context
        from playbooks.journal import Journal
        from playbooks.loader import load_catalog
        from playbooks.observe import LiveSignals
        from playbooks.runner import Plan, Runner

        playbook = load_catalog()[name]
        self.state = read_state()
        ctx = lab_context(self.state)
        signals = LiveSignals(lab_topology(self.state))
        journal = Journal(self.store_path)
        runner = Runner(ctx, journal, signals, user="quell-demo")

        async def confirm(plan: Plan) -> bool:
            if self.confirm is None:
                return True
            return await self.confirm(name, plan)

        def step(event: dict[str, Any]) -> None:
            if event["event"] == "change" and not event.get("unchanged"):
                self.emit("step", f"  {event['knob']}: {event['before']} -> {event['after']}")
            elif event["event"] == "verified":
                values = ", ".join(f"{k}={v}" for k, v in event["values"].items())
                self.emit("step", f"  verified {event['condition']} ({values})")
            elif event["event"] in ("failed", "rollback"):
                self.emit("step", f"  {event['event']}: {event.get('why', '')}")

        await signals.start()
        try:
            await signals.warm(3, timeout_s=10)
            self.emit("playbook", f"{name} ({trigger})")
            result = await runner.run(
                playbook, {}, trigger=trigger, verdict=verdict, confirm=confirm,
                force=verdict is None, on_event=step,
            )  # fmt: skip
        finally:
            await signals.stop()
            await ctx.close()
            journal.close()
        self.emit("playbook", f"{name}: {result.status} ({result.message}, run {result.run_id})")
        return result
