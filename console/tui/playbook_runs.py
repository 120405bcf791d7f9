"""The console's way to plan, run and undo playbooks: the runner `quell play` uses.

Where the actions reach comes from what the console watches: the config's
``[playbooks]`` section (its gateway and token variable), else the running
lab. The journal is the console's store, so a run from the screen is in the
same audit chain and history as one from a shell or the daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collectors.config import Config
from console.tui.feeds import FeedPlan
from console.tui.snapshot import VerdictView
from playbooks.journal import Journal
from playbooks.loader import load_catalog
from playbooks.model import Playbook, PlaybookError
from playbooks.observe import LiveSignals
from playbooks.runner import Plan, Runner, RunResult
from playbooks.triggers import queue_context, queue_topology


def _config(plan: FeedPlan) -> Config | None:
    if plan.config is not None:
        return plan.config
    from collectors.config import lab_config
    from inference.lab.state import LabNotRunning, read_state

    try:
        return lab_config(read_state())
    except (LabNotRunning, ValueError):
        return None


def verdict_of(view: VerdictView | None) -> dict[str, Any] | None:
    if view is None:
        return None
    return {
        "cause": view.cause,
        "confidence": view.confidence,
        "evidence": view.evidence,
        "since": view.since or 0.0,
    }


@dataclass
class Outcome:
    result: RunResult | None
    problem: str = ""


class ConsolePlaybooks:
    """One per console; every call opens what it needs and closes it again."""

    def __init__(self, plan: FeedPlan, read_only: bool) -> None:
        self.feed = plan
        self.read_only = read_only
        self.problem = ""
        self.catalog: dict[str, Playbook] = {}
        from console.tui.feeds import REPLAY

        config = None if plan.kind == REPLAY else _config(plan)
        self.config = config
        try:
            self.catalog = load_catalog(config.playbooks.directories if config else ())
        except PlaybookError as error:
            self.problem = str(error)
        if plan.kind == REPLAY:
            self.problem = (
                "replaying a recording: playbooks are planned and run from a live console"
            )
        elif config is None:
            self.problem = self.problem or "no gateway known: start the lab or give --config"
        self.busy = False

    def queue(self, verdict: VerdictView | None) -> str:
        if verdict is not None:
            return verdict.target
        if self.config is not None:
            from collectors.diagnosis_loop import queues_of

            return next(iter(queues_of(self.config)), "gateway")
        return "gateway"

    async def _runner(self, queue: str) -> tuple[Runner, Callable[[], Any]]:
        assert self.config is not None
        ctx = queue_context(self.config, queue)
        signals = LiveSignals(queue_topology(self.config, queue))
        journal = Journal(self.feed.store_path)
        runner = Runner(ctx, journal, signals, read_only=self.read_only)
        await signals.start()

        async def close() -> None:
            await signals.stop()
            await ctx.close()
            journal.close()

        await signals.warm(2, timeout_s=5)
        return runner, close

    async def plan(self, name: str, verdict: VerdictView | None) -> Plan | str:
        if self.config is None or name not in self.catalog:
            return self.problem or f"no playbook {name!r}"
        runner, close = await self._runner(self.queue(verdict))
        try:
            verdict_data = verdict_of(verdict)
            params = runner.resolve_params(self.catalog[name], {}, verdict_data)
            return await runner.plan(self.catalog[name], params, verdict_data)
        except Exception as error:  # shown on the screen, never a crash of the console
            return f"cannot plan {name}: {error}"
        finally:
            await close()

    async def run(
        self, name: str, verdict: VerdictView | None, on_event: Callable[[dict[str, Any]], None]
    ) -> Outcome:
        if self.config is None or name not in self.catalog:
            return Outcome(None, self.problem or f"no playbook {name!r}")
        self.busy = True
        runner, close = await self._runner(self.queue(verdict))
        try:
            result = await runner.run(
                self.catalog[name],
                {},
                trigger="console",
                verdict=verdict_of(verdict),
                on_event=on_event,
            )
            return Outcome(result)
        except Exception as error:  # the runner records its own failures; this is the rest
            return Outcome(None, f"{name} could not run: {error}")
        finally:
            self.busy = False
            await close()

    async def history(self, limit: int = 8) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            try:
                journal = Journal(self.feed.store_path, read_only=True)
            except Exception:  # no store yet: no history yet
                return []
            try:
                return journal.runs(limit=limit)
            finally:
                journal.close()

        return await asyncio.to_thread(read)

    async def last_applied(self) -> dict[str, Any] | None:
        for run in await self.history(50):
            if run["status"] == "applied" and run["playbook"] != "rollback":
                return run
        return None

    async def rollback(self, run_id: int) -> Outcome:
        if self.config is None:
            return Outcome(None, self.problem)
        runner, close = await self._runner(self.queue(None))
        try:
            return Outcome(await runner.rollback_run(run_id, trigger=f"console: undo run {run_id}"))
        finally:
            await close()
