"""Alerts: threshold and trend rules with a for-duration, verdicts, and where they go.

A rule fires once its condition has held for its whole for-duration and is
announced once; it is announced again only when it resolves. Routes are a
Slack-compatible webhook, a command run with an argument list (never a
shell, so nothing in an alert can inject one), or the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from collectors.diagnosis import Assessment, Observation, Verdict

log = logging.getLogger("quell.alerts")

SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    signal: str  # a key of ``alert_values``
    op: str  # ">=" or "<="
    threshold: float
    for_s: float
    severity: str = "warning"
    summary: str = ""
    # A firing alert resolves only after the condition has stayed false this
    # long (Prometheus' keep_firing_for): a trend that comes and goes from one
    # tick to the next must not page as a stream of fire/resolve pairs.
    clear_s: float = 0.0

    def holds(self, value: float | None) -> bool:
        if value is None:
            return False
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


DEFAULT_RULES = (
    Rule("queue_occupancy_high", "occupancy", ">=", 0.7, 300, "warning",
         "works queue at least 70% full for 5 minutes"),
    Rule("queue_occupancy_critical", "occupancy", ">=", 0.9, 60, "critical",
         "works queue at least 90% full for 1 minute"),
    Rule("rejection_ratio_high", "rejection_ratio", ">=", 0.05, 60, "critical",
         "at least 5% of arrivals refused for a full queue, for 1 minute"),
    Rule("queue_wait_p95_high", "queue_wait_p95_seconds", ">=", 5.0, 120, "warning",
         "95th percentile queue wait at least 5 s for 2 minutes"),
    Rule("host_cpu_high", "host_cpu_percent", ">=", 85.0, 300, "warning",
         "host CPU at least 85% busy for 5 minutes"),
    Rule("gpu_utilization_high", "gpu_utilization_percent", ">=", 85.0, 300, "warning",
         "GPU at least 85% busy for 5 minutes"),
    Rule("time_to_full_short", "time_to_full", "<=", 60.0, 0, "critical",
         "the works queue will be full within a minute at the current imbalance", 15.0),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Notification:
    status: str  # "firing" or "resolved"
    rule: str
    severity: str
    target: str
    summary: str
    value: float | None
    since: float
    at: float
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.rule}\x00{self.target}".encode()).hexdigest()[:16]

    def text(self) -> str:
        mark = "RESOLVED" if self.status == "resolved" else self.severity.upper()
        value = "" if self.value is None else f" (now {self.value:g})"
        return f"[{mark}] {self.target}: {self.summary}{value}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "rule": self.rule,
            "severity": self.severity,
            "target": self.target,
            "summary": self.summary,
            "value": self.value,
            "since": self.since,
            "at": self.at,
            "fingerprint": self.fingerprint,
            "details": dict(self.details),
        }


def alert_values(assessment: Assessment, observation: Observation) -> dict[str, float | None]:
    """The numbers the rules read, from one tick's assessment and observation."""
    offered = assessment.offered
    full = assessment.evidence.get("queue_full_rate")
    rejection_ratio = full / offered if full is not None and offered else None
    host = observation.host
    return {
        "occupancy": assessment.occupancy,
        "rejection_ratio": rejection_ratio,
        "queue_wait_p95_seconds": observation.signals.get("queue_wait_p95_seconds"),
        "host_cpu_percent": host.get("host_cpu_percent"),
        "gpu_utilization_percent": host.get("gpu_utilization_percent"),
        "time_to_full": (
            assessment.time_to_full
            if (assessment.occupancy or 0.0) >= TIME_TO_FULL_MIN_OCCUPANCY
            or "stalled_consumers" in assessment.scores
            else None
        ),
    }


# A projection from a queue that is still mostly empty is a forecast from a
# few seconds of wobble: at 80% load the depth climbs by ten places and back
# several times an hour. A quarter full, climbing, is worth a page.
TIME_TO_FULL_MIN_OCCUPANCY = 0.25


@dataclass
class _State:
    pending_since: float | None = None
    firing_since: float | None = None
    clear_since: float | None = None


class Alerter:
    """Evaluates the rules every tick and says what changed; delivery is separate."""

    def __init__(self, rules: Sequence[Rule] = DEFAULT_RULES) -> None:
        self.rules = list(rules)
        self._states: dict[tuple[str, str], _State] = {}
        self._verdicts: dict[str, Verdict] = {}

    def evaluate(
        self, target: str, now: float, values: Mapping[str, float | None], verdict: Verdict | None
    ) -> list[Notification]:
        out: list[Notification] = []
        for rule in self.rules:
            state = self._states.setdefault((rule.name, target), _State())
            value = values.get(rule.signal)
            if rule.holds(value):
                state.clear_since = None
                if state.pending_since is None:
                    state.pending_since = now
                if state.firing_since is None and now - state.pending_since >= rule.for_s:
                    state.firing_since = now
                    out.append(self._note("firing", rule, target, value, state.pending_since, now))
            elif state.firing_since is not None:
                if state.clear_since is None:
                    state.clear_since = now
                if now - state.clear_since >= rule.clear_s:
                    out.append(self._note("resolved", rule, target, value, state.firing_since, now))
                    state.pending_since = state.firing_since = state.clear_since = None
            else:
                state.pending_since = None
        out.extend(self._verdict_changes(target, now, verdict))
        return out

    @staticmethod
    def _note(status: str, rule: Rule, target: str, value: float | None, since: float,
              now: float) -> Notification:  # fmt: skip
        return Notification(
            status, rule.name, rule.severity, target, rule.summary, value, since, now
        )

    def _verdict_changes(
        self, target: str, now: float, verdict: Verdict | None
    ) -> list[Notification]:
        previous = self._verdicts.get(target)
        out: list[Notification] = []
        if previous is not None and (verdict is None or verdict.cause != previous.cause):
            out.append(_verdict_notice("resolved", previous, now))
            del self._verdicts[target]
        if verdict is not None and (previous is None or verdict.cause != previous.cause):
            out.append(_verdict_notice("firing", verdict, now))
            self._verdicts[target] = verdict
        elif verdict is not None:
            self._verdicts[target] = verdict
        return out


def _verdict_notice(status: str, verdict: Verdict, now: float) -> Notification:
    return Notification(
        status=status,
        rule=f"verdict_{verdict.cause}",
        severity="critical",
        target=verdict.target,
        summary=(
            f"{verdict.cause} (confidence {verdict.confidence:.0%}); "
            f"playbooks: {', '.join(verdict.playbooks)}"
        ),
        value=verdict.time_to_full,
        since=verdict.since,
        at=now,
        details={"evidence": verdict.evidence, "playbooks": list(verdict.playbooks)},
    )


# -- routes ---------------------------------------------------------------------


class Route:
    name = "route"

    async def send(self, notification: Notification) -> None:
        raise NotImplementedError


class LogRoute(Route):
    name = "log"

    async def send(self, notification: Notification) -> None:
        level = logging.INFO if notification.status == "resolved" else logging.WARNING
        log.log(level, "%s", notification.text())


class WebhookRoute(Route):
    """POSTs a Slack-compatible body (``text``) with the alert's fields beside it."""

    name = "webhook"

    def __init__(self, url: str, client: httpx.AsyncClient | None = None, timeout_s: float = 5.0):
        self.url = url
        self._client = client
        self._timeout = timeout_s

    async def send(self, notification: Notification) -> None:
        body = {"text": notification.text(), "quell": notification.as_dict()}
        if self._client is not None:
            response = await self._client.post(self.url, json=body, timeout=self._timeout)
        else:
            async with httpx.AsyncClient(trust_env=False) as client:
                response = await client.post(self.url, json=body, timeout=self._timeout)
        response.raise_for_status()


class CommandRoute(Route):
    """Runs ``argv`` with the alert as JSON on stdin and in QUELL_ALERT_* variables."""

    name = "command"

    def __init__(self, argv: Sequence[str], timeout_s: float = 10.0) -> None:
        if not argv:
            raise ValueError("a command route needs at least the program to run")
        self.argv = list(argv)
        self._timeout = timeout_s

    async def send(self, notification: Notification) -> None:
        env = {
            **os.environ,
            "QUELL_ALERT_STATUS": notification.status,
            "QUELL_ALERT_RULE": notification.rule,
            "QUELL_ALERT_SEVERITY": notification.severity,
            "QUELL_ALERT_TARGET": notification.target,
            "QUELL_ALERT_TEXT": notification.text(),
        }
        process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        try:
            await asyncio.wait_for(
                process.communicate(json.dumps(notification.as_dict()).encode()), self._timeout
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        if process.returncode:
            raise RuntimeError(f"{self.argv[0]} exited with status {process.returncode}")


async def deliver(notification: Notification, routes: Sequence[Route]) -> list[str]:
    """Send to every route; a failing route is reported, never fatal to the others."""
    problems = []
    for route, result in zip(
        routes,
        await asyncio.gather(*(r.send(notification) for r in routes), return_exceptions=True),
        strict=True,
    ):
        if isinstance(result, BaseException):
            problem = f"{route.name}: {type(result).__name__}: {result}"
            log.warning("alert %s not delivered by %s", notification.rule, problem)
            problems.append(problem)
    return problems
