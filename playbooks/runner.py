"""Running a playbook: parameters, preconditions, plan, lock, steps, verification, rollback.

The order is the safety: nothing is changed before the parameters are
checked, the preconditions hold, the target's lock is taken, the cooldown
and hourly cap allow it, and (for a person) the plan was confirmed. Every
run, a dry one or a refused one included, ends up in the journal with who
started it, why, the plan, each step, before and after values and the
outcome. A verification that does not pass in time undoes what the run
changed, in reverse order, from the before values it recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from collectors.diagnosis import Verdict
from playbooks import expressions
from playbooks.actions import ACTIONS, Action, ActionError, Change, Context, run_argv, send_request
from playbooks.actions import write_changes as write_knobs
from playbooks.journal import Busy, Journal, who
from playbooks.loader import coerce
from playbooks.model import (
    EXIT_ACTION_FAILED,
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_OK,
    EXIT_PRECONDITION,
    EXIT_VERIFY_FAILED,
    Playbook,
    PlaybookError,
    Step,
)
from playbooks.observe import LiveSignals, verdict_scope

log = logging.getLogger("quell.playbooks")

REDACTED = "<from env>"
Event = dict[str, Any]
Confirm = Callable[["Plan"], Awaitable[bool]]


class _Environment(Mapping[str, str]):
    """``env.NAME`` in a template: the process environment, read only when rendered."""

    def __getitem__(self, key: str) -> str:
        return os.environ[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in os.environ

    def __iter__(self) -> Any:
        return iter(())  # never list the environment in an error message

    def __len__(self) -> int:
        return 0


@dataclass
class PlannedStep:
    index: int
    kind: str
    what: str
    changes: list[Change] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "what": self.what,
            "args": self.args,
            "changes": [c.as_dict() for c in self.changes],
        }


@dataclass
class Plan:
    playbook: str
    target: str
    params: dict[str, Any]
    steps: list[PlannedStep]
    warnings: list[str] = field(default_factory=list)
    dangerous: bool = False

    @property
    def changes(self) -> list[Change]:
        return [c for s in self.steps for c in s.changes]

    def as_dict(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "target": self.target,
            "params": self.params,
            "warnings": self.warnings,
            "dangerous": self.dangerous,
            "steps": [s.as_dict() for s in self.steps],
        }

    def lines(self) -> list[str]:
        out = [f"plan for {self.playbook} on {self.target}"]
        if self.params:
            out.append("  params: " + ", ".join(f"{k}={v}" for k, v in self.params.items()))
        for warning in self.warnings:
            out.append(f"  warning: {warning}")
        for step in self.steps:
            out.append(f"  {step.index + 1}. {step.what}")
            for change in step.changes:
                mark = "  (unchanged)" if change.unchanged else ""
                out.append(
                    f"       {change.knob}: {_show(change.before)} -> {_show(change.after)}{mark}"
                )
        return out


def describe_event(event: Mapping[str, Any]) -> str:
    """One line for a run's event, as `quell play`, the console and the demo print it."""
    kind = event.get("event")
    if kind == "step":
        return f"step {event['step']}: {event['what']}"
    if kind == "change":
        mark = " (unchanged)" if event.get("unchanged") else ""
        return f"    {event['knob']}: {event['before']} -> {event['after']}{mark}"
    if kind == "verified":
        values = ", ".join(f"{k}={v}" for k, v in event.get("values", {}).items())
        return f"    verified {event['condition']} ({values})"
    if kind == "undone":
        return f"    undone {event['knob']}: back to {event['before']}"
    if kind == "output":
        return "    " + str(event["output"]).strip().replace("\n", "\n    ")
    details = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("ts", "event"))
    return f"    {kind}: {details}"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass
class RunResult:
    status: str
    exit_code: int
    message: str
    run_id: int | None = None
    plan: Plan | None = None
    changes: list[Change] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "message": self.message,
            "plan": self.plan.as_dict() if self.plan else None,
            "changes": [c.as_dict() for c in self.changes],
            "events": self.events,
        }


class _Failed(Exception):
    def __init__(self, status: str, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = exit_code


def _redact(raw: Any, rendered: Any) -> Any:
    """``rendered`` with every value that came from the environment replaced."""
    if isinstance(raw, str):
        return REDACTED if expressions.reads_env(raw) else rendered
    if isinstance(raw, dict) and isinstance(rendered, dict):
        return {k: _redact(raw.get(k), v) for k, v in rendered.items()}
    if isinstance(raw, list) and isinstance(rendered, list):
        return [_redact(r, v) for r, v in zip(raw, rendered, strict=False)]
    return rendered


class Runner:
    def __init__(
        self,
        ctx: Context,
        journal: Journal | None = None,
        signals: LiveSignals | None = None,
        read_only: bool = False,
        user: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.journal = journal
        self.signals = signals
        self.read_only = read_only
        self.user = user or who()
        ctx.journal = journal

    # -- parameters and scope ----------------------------------------------

    def _scope(self, params: Mapping[str, Any], verdict: Any) -> dict[str, Any]:
        signals = self.signals.signals() if self.signals is not None else {}
        replicas = int(signals.get("replicas") or len(self.ctx.engines))
        return {
            "params": dict(params),
            "signals": signals,
            "env": _Environment(),
            "target": self.ctx.target,
            "replicas": replicas,
            "verdict": verdict_scope(verdict),
        }

    def resolve_params(
        self, playbook: Playbook, given: Mapping[str, Any], verdict: Any = None
    ) -> dict[str, Any]:
        for name in given:
            if playbook.param(name) is None:
                known = ", ".join(p.name for p in playbook.params) or "none"
                raise PlaybookError(f"{playbook.name} has no parameter {name!r}; known: {known}")
        scope = self._scope({}, verdict)
        resolved: dict[str, Any] = {}
        for param in playbook.params:
            if param.name in given:
                value = given[param.name]
            elif param.required:
                raise PlaybookError(f"{playbook.name} needs --param {param.name}=VALUE")
            else:
                value = param.default
                if expressions.is_template(value):
                    try:
                        value = expressions.render(value, scope)
                    except expressions.ExpressionError as error:
                        raise PlaybookError(
                            f"cannot work out the default of {param.name}: {error}; "
                            f"give --param {param.name}=VALUE"
                        ) from None
            try:
                resolved[param.name] = coerce(param, value)
            except ValueError as error:
                raise PlaybookError(str(error)) from None
        return resolved

    def _render_step(self, step: Step, scope: Mapping[str, Any]) -> tuple[Action, dict[str, Any]]:
        try:
            args = expressions.render(step.args, scope)
        except expressions.ExpressionError as error:
            raise PlaybookError(f"line {step.line}: {error}") from None
        try:
            action = ACTIONS[step.action](args)
        except ValueError as error:
            raise PlaybookError(f"line {step.line} ({step.action}): {error}") from None
        return action, _redact(step.args, args)

    # -- planning ----------------------------------------------------------

    async def plan(
        self, playbook: Playbook, params: Mapping[str, Any], verdict: Any = None
    ) -> Plan:
        scope = self._scope(params, verdict)
        planned: list[PlannedStep] = []
        for index, step in enumerate(playbook.steps):
            if step.kind != "action":
                planned.append(PlannedStep(index, step.kind, step.describe()))
                continue
            action, shown = self._render_step(step, scope)
            changes = await action.plan(self.ctx)
            what = step.name or (action.describe() if not action.sets_knobs else step.action)
            planned.append(PlannedStep(index, "action", what, changes, shown))
        warnings = [playbook.warning] if playbook.warning else []
        if (
            planned
            and all(c.unchanged for c in (c for s in planned for c in s.changes))
            and any(s.changes for s in planned)
        ):
            warnings.append("every value is already in place: nothing would change")
        return Plan(
            playbook.name, self.ctx.target, dict(params), planned, warnings, playbook.dangerous
        )

    # -- preconditions -----------------------------------------------------

    async def _verdict(self, supplied: Any) -> Any:
        if supplied is not None:
            return supplied
        if self.signals is not None and self.signals.verdict is not None:
            return self.signals.verdict
        if self.journal is not None:
            incident = self.journal.latest_incident(self.ctx.target, within_s=3600)
            if incident is not None and incident["closed"] is None:
                return incident
        return None

    def _preconditions(self, playbook: Playbook, params: Mapping[str, Any], verdict: Any) -> None:
        pre = playbook.preconditions
        if pre.verdicts:
            now = verdict_scope(verdict)
            if now["cause"] not in pre.verdicts:
                seen = f"the verdict is {now['cause']}" if now["cause"] else "there is no verdict"
                raise _Failed(
                    "refused",
                    EXIT_PRECONDITION,
                    f"precondition not met: {playbook.name} answers "
                    f"{', '.join(pre.verdicts)}; {seen}",
                )
            if now["confidence"] < pre.min_confidence:
                raise _Failed(
                    "refused",
                    EXIT_PRECONDITION,
                    f"precondition not met: confidence {now['confidence']:.0%} is "
                    f"below {pre.min_confidence:.0%}",
                )
        if pre.conditions:
            signals = self.signals.signals() if self.signals is not None else {}
            for condition in pre.conditions:
                try:
                    held = expressions.evaluate(condition, {**signals, "params": dict(params)})
                except expressions.ExpressionError as error:
                    raise _Failed("refused", EXIT_PRECONDITION,
                                  f"precondition {condition!r} cannot be checked: {error}") from None  # fmt: skip  # noqa: E501
                if not held:
                    raise _Failed(
                        "refused", EXIT_PRECONDITION, f"precondition not met: {condition}"
                    )

    # -- running -----------------------------------------------------------

    async def run(
        self,
        playbook: Playbook,
        given: Mapping[str, Any] | None = None,
        trigger: str = "manual",
        verdict: Verdict | Mapping[str, Any] | None = None,
        dry_run: bool = False,
        confirm: Confirm | None = None,
        force: bool = False,
        on_event: Callable[[Event], None] | None = None,
        incident_id: int | None = None,
    ) -> RunResult:
        events: list[Event] = []
        run_id: int | None = None
        plan: Plan | None = None
        applied: list[tuple[Step, Action, list[Change]]] = []
        locked = False

        def emit(event: Event) -> None:
            event = {"ts": round(time.time(), 3), **event}
            events.append(event)
            if on_event is not None:
                on_event(event)
            if run_id is not None and self.journal is not None:
                self.journal.note(run_id, event)

        base = {"who": self.user, "trigger": trigger, "dry_run": dry_run}

        def record(status: str, message: str) -> dict[str, Any]:
            changes = [c for _, _, cs in applied for c in cs]
            return {
                **base,
                "params": plan.params if plan else dict(given or {}),
                "plan": plan.as_dict() if plan else None,
                "outcome": message,
                "changes": [c.as_dict() for c in changes],
                "verdict": _brief(verdict),
            }

        def refuse(status: str, code: int, message: str) -> RunResult:
            nonlocal run_id
            if self.journal is not None:
                run_id = self.journal.start(
                    playbook.name,
                    self.ctx.target,
                    trigger,
                    status,
                    record(status, message),
                    incident_id,
                )
            return RunResult(status, code, message, run_id, plan, [], events)

        try:
            verdict = await self._verdict(verdict)
            try:
                params = self.resolve_params(playbook, given or {}, verdict)
            except PlaybookError as error:
                return refuse("refused", EXIT_BAD_INPUT, str(error))
            if self.read_only and not dry_run:
                return refuse(
                    "refused",
                    EXIT_BAD_INPUT,
                    "read-only: changes are switched off (--read-only or the config)",
                )
            if not force:
                self._preconditions(playbook, params, verdict)
            try:
                plan = await self.plan(playbook, params, verdict)
            except (PlaybookError, ActionError) as error:
                return refuse("refused", EXIT_BAD_INPUT, f"cannot plan: {error}")
            if dry_run:
                result = refuse("dry_run", EXIT_OK, "dry run: nothing was changed")
                return result
            if self.journal is not None:
                self.journal.lock(self.ctx.target, f"{playbook.name} by {self.user}")
                locked = True
                self.journal.check_limits(
                    playbook.name, self.ctx.target, playbook.cooldown_s, playbook.max_runs_per_hour
                )
            if confirm is not None and not await confirm(plan):
                return refuse("declined", EXIT_PRECONDITION, "not confirmed: nothing was changed")
            if self.journal is not None:
                run_id = self.journal.start(
                    playbook.name,
                    self.ctx.target,
                    trigger,
                    "running",
                    record("running", "started"),
                    incident_id,
                )
            log.warning(
                "playbook %s started on %s by %s (%s)",
                playbook.name,
                self.ctx.target,
                self.user,
                trigger,
            )
            scope = self._scope(params, verdict)
            for index, step in enumerate(playbook.steps):
                await self._step(index, step, scope, applied, emit, params)
            verified = any(s.kind == "verify" for s in playbook.steps)
            status, code = "applied", EXIT_OK
            message = "applied and verified" if verified else "applied"
        except Busy as error:
            return refuse("busy", EXIT_BUSY, str(error))
        except _Failed as failed:
            if failed.status == "refused":
                return refuse("refused", failed.exit_code, str(failed))
            status, code, message = failed.status, failed.exit_code, str(failed)
        except (ActionError, PlaybookError) as error:
            status, code, message = "failed", EXIT_ACTION_FAILED, str(error)
        finally:
            pass
        try:
            if status != "applied":
                emit({"event": "failed", "why": message})
                rolled = await self._roll_back(playbook, applied, emit, params, verdict)
                if rolled:
                    status = "rolled_back"
                    message += "; " + rolled
                elif applied:
                    status = "rollback_failed"
            result = RunResult(
                status, code, message, run_id, plan, [c for _, _, cs in applied for c in cs], events
            )
            if run_id is not None and self.journal is not None:
                self.journal.finish(run_id, status, record(status, message))
            log.warning(
                "playbook %s on %s: %s (%s)", playbook.name, self.ctx.target, status, message
            )
            return result
        finally:
            if locked and self.journal is not None:
                self.journal.release(self.ctx.target)

    async def _step(
        self,
        index: int,
        step: Step,
        scope: dict[str, Any],
        applied: list[tuple[Step, Action, list[Change]]],
        emit: Callable[[Event], None],
        params: Mapping[str, Any],
    ) -> None:
        if step.kind == "wait":
            emit({"event": "step", "step": index + 1, "what": step.describe()})
            await asyncio.sleep(step.seconds)
            return
        if step.kind == "verify":
            await self._verify(index, step, params, emit)
            return
        scope["signals"] = self.signals.signals() if self.signals is not None else {}
        action, shown = self._render_step(step, scope)
        emit(
            {
                "event": "step",
                "step": index + 1,
                "what": step.name or action.describe(),
                "args": shown,
            }
        )
        try:
            outcome = await action.apply(self.ctx)
        except ActionError as error:
            raise ActionError(f"step {index + 1} ({step.action}): {error}") from None
        applied.append((step, action, outcome.changes))
        for change in outcome.changes:
            emit({"event": "change", "step": index + 1, **change.as_dict()})
        if outcome.output:
            emit({"event": "output", "step": index + 1, "output": outcome.output[-500:]})

    async def _verify(
        self, index: int, step: Step, params: Mapping[str, Any], emit: Callable[[Event], None]
    ) -> None:
        emit({"event": "step", "step": index + 1, "what": step.describe()})
        if self.signals is None:
            raise _Failed(
                "failed",
                EXIT_VERIFY_FAILED,
                f"step {index + 1}: no signals to verify {step.condition!r} against",
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + step.within_s
        held_since: float | None = None
        used = sorted(n for n in expressions.names(step.condition) if not n.startswith("params"))
        values: dict[str, float] = {}
        while True:
            await self.signals.next_tick(timeout_s=max(0.1, min(5.0, deadline - loop.time())))
            signals = self.signals.signals()
            values = {n: round(signals[n], 3) for n in used if n in signals}
            try:
                ok = bool(expressions.evaluate(step.condition, {**signals, "params": dict(params)}))
            except expressions.Unknown:
                ok = False
            except expressions.ExpressionError as error:
                raise _Failed("failed", EXIT_VERIFY_FAILED, f"step {index + 1}: {error}") from None
            now = loop.time()
            if ok:
                held_since = now if held_since is None else held_since
                if now - held_since >= step.for_s:
                    emit(
                        {
                            "event": "verified",
                            "step": index + 1,
                            "condition": step.condition,
                            "values": values,
                        }
                    )
                    return
            else:
                held_since = None
            if now >= deadline:
                raise _Failed(
                    "failed",
                    EXIT_VERIFY_FAILED,
                    f"step {index + 1}: {step.condition} did not hold within "
                    f"{step.within_s:g} s (now {values})",
                )

    async def _roll_back(
        self,
        playbook: Playbook,
        applied: list[tuple[Step, Action, list[Change]]],
        emit: Callable[[Event], None],
        params: Mapping[str, Any],
        verdict: Any,
    ) -> str:
        """Undo what the run did; the text says what was undone, empty if nothing was."""
        if not applied:
            return ""
        emit({"event": "rollback", "how": "auto" if playbook.rollback is None else "steps"})
        try:
            if playbook.rollback is None:
                for _step, action, changes in reversed(applied):
                    await undo_action(self.ctx, action, changes)
                    for change in changes:
                        if not change.unchanged:
                            emit({"event": "undone", **change.as_dict()})
            else:
                scope = self._scope(params, verdict)
                for index, step in enumerate(playbook.rollback):
                    if step.kind == "verify":
                        continue  # a rollback is not itself verified into another rollback
                    if step.kind == "wait":
                        await asyncio.sleep(step.seconds)
                        continue
                    action, shown = self._render_step(step, scope)
                    outcome = await action.apply(self.ctx)
                    emit(
                        {
                            "event": "rollback_step",
                            "step": index + 1,
                            "args": shown,
                            "changes": [c.as_dict() for c in outcome.changes],
                        }
                    )
        except (ActionError, PlaybookError) as error:
            emit({"event": "rollback_failed", "why": str(error)})
            return ""
        return "rolled back"

    # -- undoing a past run ------------------------------------------------

    async def rollback_run(
        self, run_id: int, confirm: Confirm | None = None, trigger: str | None = None
    ) -> RunResult:
        """Put back the before values a past run recorded, as a run of its own."""
        if self.journal is None:
            return RunResult("refused", EXIT_BAD_INPUT, "no store: nothing to roll back from")
        past = self.journal.run(run_id)
        if past is None:
            return RunResult("refused", EXIT_BAD_INPUT, f"no run {run_id} in {self.journal.path}")
        if past["status"] not in ("applied", "failed", "rollback_failed"):
            return RunResult(
                "refused",
                EXIT_BAD_INPUT,
                f"run {run_id} is {past['status']}: nothing of it to roll back",
            )
        changes = [
            Change(c["action"], c["knob"], c["before"], c["after"])
            for c in past.get("changes", [])
            if not c.get("unchanged") and c["action"] in ACTIONS
        ]
        self.ctx.target = past["target"] or self.ctx.target
        undo = [Change(c.action, c.knob, c.after, c.before) for c in reversed(changes)]
        current: dict[str, dict[str, Any]] = {}
        for change in undo:
            if change.action not in current:
                current[change.action] = await ACTIONS[change.action].current(self.ctx)
        planned = [Change(c.action, c.knob, current[c.action].get(c.knob), c.after) for c in undo]
        plan = Plan(
            f"rollback of run {run_id}",
            self.ctx.target,
            {"run_id": run_id},
            [PlannedStep(0, "action", f"undo {past['playbook']}", planned)],
        )
        if self.read_only:
            return RunResult(
                "refused", EXIT_BAD_INPUT, "read-only: changes are switched off", None, plan
            )
        try:
            self.journal.lock(self.ctx.target, f"rollback of run {run_id} by {self.user}")
        except Busy as error:
            return RunResult("busy", EXIT_BUSY, str(error), None, plan)
        try:
            if confirm is not None and not await confirm(plan):
                return RunResult("declined", EXIT_PRECONDITION, "not confirmed", None, plan)
            why = trigger or f"rollback of run {run_id}"
            base = {
                "who": self.user,
                "trigger": why,
                "params": {"run_id": run_id},
                "plan": plan.as_dict(),
            }
            new_id = self.journal.start(
                "rollback",
                self.ctx.target,
                why,
                "running",
                {**base, "outcome": "started", "changes": []},
                past.get("incident_id"),
            )
            try:
                await write_knobs(self.ctx, [c for c in planned if not c.unchanged], undo=False)
            except ActionError as error:
                self.journal.finish(
                    new_id, "failed", {**base, "outcome": str(error), "changes": []}
                )
                return RunResult("failed", EXIT_ACTION_FAILED, str(error), new_id, plan)
            after: dict[str, dict[str, Any]] = {}
            for change in planned:
                if change.action not in after:
                    after[change.action] = await ACTIONS[change.action].current(self.ctx)
            done = [
                Change(c.action, c.knob, c.before, after[c.action].get(c.knob, c.after))
                for c in planned
            ]
            self.journal.finish(
                new_id,
                "applied",
                {**base, "outcome": "rolled back", "changes": [c.as_dict() for c in done]},
            )
            self.journal.mark(run_id, "rolled_back", f"by run {new_id}")
            return RunResult("applied", EXIT_OK, f"run {run_id} rolled back", new_id, plan, done)
        finally:
            self.journal.release(self.ctx.target)


async def undo_action(ctx: Context, action: Action, changes: list[Change]) -> None:
    if action.sets_knobs:
        await write_knobs(ctx, [c for c in reversed(changes) if not c.unchanged], undo=True)
        return
    undo = action.args.get("undo")
    if undo is None:
        return
    if action.name == "exec":
        await run_argv([str(a) for a in undo], float(action.args.get("timeout_s", 60)))
    elif action.name == "http":
        await send_request(ctx, undo)


def _brief(verdict: Any) -> dict[str, Any] | None:
    if verdict is None:
        return None
    scope = verdict_scope(verdict)
    return {"cause": scope["cause"], "confidence": round(scope["confidence"], 3)}


async def close_quietly(*closers: Callable[[], Awaitable[None]]) -> None:
    for closer in closers:
        with contextlib.suppress(Exception):
            await closer()
