"""Playbooks started by the daemon: on its own verdicts, and by Alertmanager's webhook.

Both go through the same runner as a person at the keyboard, so the same
lock, cooldown and hourly cap hold, and every run is in the same journal
with the verdict or alert that started it.

- ``AutoStarter`` is a daemon tick hook. When a queue's verdict opens (or
  changes cause) and a playbook's ``auto`` section names that cause at or
  below its confidence, the playbook starts once for that verdict.
- ``AlertmanagerReceiver`` answers ``POST /alertmanager`` (webhook payload
  version 4). It needs the shared secret as a bearer token, answers 202 as
  soon as the alerts are accepted, and remembers each alert's fingerprint
  and start so a repeated notification of the same alert never starts a
  second run.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from collectors.config import AlertPlaybook, Config, PlaybooksConfig
from collectors.watch import Topology
from playbooks.actions import Context, Endpoint, lab_context
from playbooks.journal import Journal
from playbooks.loader import load_catalog
from playbooks.model import Playbook
from playbooks.observe import LiveSignals
from playbooks.runner import Runner, RunResult

if TYPE_CHECKING:
    from collectors.daemon import Daemon
    from collectors.diagnosis_loop import DiagnosisLoop
    from collectors.store import Store

log = logging.getLogger("quell.playbooks")

WEBHOOK_PATH = "/alertmanager"
MAX_ALERTS = 200


def queue_topology(config: Config, queue: str) -> Topology:
    targets = {t.name: t for t in config.targets}
    target = targets[queue]
    replicas = {t.name: t.url for t in config.targets if t.replica_of == queue}
    return Topology(queue, target.url, replicas, target.preset)


def queue_context(config: Config, queue: str) -> Context:
    """Where a queue's playbooks act: the configured gateway, else the running lab's."""
    settings = config.playbooks
    if settings.gateway_url:
        token = os.environ.get(settings.gateway_admin_token_env, "")
        return Context(target=queue, gateway=Endpoint(settings.gateway_url, token))
    from inference.lab.state import LabNotRunning, read_state

    try:
        state = read_state()
    except LabNotRunning:
        return Context(target=queue)
    return lab_context(state, queue)


class Starter:
    """Runs playbooks for the daemon, one background task each."""

    def __init__(self, config: Config, catalog: Mapping[str, Playbook] | None = None) -> None:
        self.config = config
        self.settings: PlaybooksConfig = config.playbooks
        self.catalog = dict(catalog or load_catalog(self.settings.directories))
        self.tasks: set[asyncio.Task[RunResult]] = set()
        self.results: list[RunResult] = []

    def start(
        self,
        queue: str,
        playbook: Playbook,
        trigger: str,
        verdict: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> asyncio.Task[RunResult]:
        task = asyncio.get_running_loop().create_task(
            self._run(queue, playbook, trigger, verdict, dict(params or {}))
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _run(
        self, queue: str, playbook: Playbook, trigger: str, verdict: Any, params: dict[str, Any]
    ) -> RunResult:
        ctx = queue_context(self.config, queue)
        signals = LiveSignals(queue_topology(self.config, queue))
        journal = Journal(self.config.store.path)
        runner = Runner(ctx, journal, signals, read_only=self.settings.read_only,
                        user=f"quell-collect@{os.uname().nodename}")  # fmt: skip
        await signals.start()
        try:
            await signals.warm(2, timeout_s=10)
            result = await runner.run(playbook, params, trigger=trigger, verdict=verdict)
        except Exception as error:  # a failed run must never stop the daemon
            log.error("playbook %s (%s) could not run: %s", playbook.name, trigger, error)
            result = RunResult("failed", 6, str(error))
        finally:
            await signals.stop()
            await ctx.close()
            journal.close()
        log.warning("playbook %s on %s (%s): %s, %s", playbook.name, queue, trigger,
                    result.status, result.message)  # fmt: skip
        self.results.append(result)
        return result

    async def wait(self) -> None:
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


class AutoStarter:
    """A tick hook after ``DiagnosisLoop``: ``daemon.on_tick.append(AutoStarter(...))``."""

    def __init__(self, diagnosis: DiagnosisLoop, starter: Starter) -> None:
        self.diagnosis = diagnosis
        self.starter = starter
        # (queue, cause, since) of verdicts already answered.
        self.answered: set[tuple[str, str, float]] = set()

    def wanted(self, cause: str, confidence: float) -> list[Playbook]:
        return [
            p
            for p in self.starter.catalog.values()
            if p.auto is not None
            and cause in p.auto.verdicts
            and confidence >= p.auto.min_confidence
        ]

    async def __call__(self, store: Store, now: float) -> None:
        if not self.starter.settings.auto:
            return
        for queue, diagnoser in self.diagnosis.diagnosers.items():
            verdict = diagnoser.verdict
            if verdict is None:
                continue
            key = (queue, verdict.cause, verdict.since)
            if key in self.answered:
                continue
            playbooks = self.wanted(verdict.cause, verdict.confidence)
            if not playbooks:
                continue
            self.answered.add(key)
            trigger = f"auto: {verdict.cause} ({verdict.confidence:.0%})"
            for playbook in playbooks:
                self.starter.start(queue, playbook, trigger, verdict)


def _report(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("an alert's playbook could not start: %s", future.exception())


@dataclass(frozen=True)
class _Alert:
    labels: dict[str, str]
    fingerprint: str
    starts_at: str
    status: str


class AlertmanagerReceiver:
    """``daemon.routes[WEBHOOK_PATH] = AlertmanagerReceiver(daemon, starter, secret)``."""

    def __init__(self, daemon: Daemon, starter: Starter, secret: str) -> None:
        if not secret:
            raise ValueError("the Alertmanager receiver needs a shared secret")
        self.daemon = daemon
        self.starter = starter
        self._secret = secret.encode()
        self._seen: set[tuple[str, str]] = set()
        self._pending: set[Any] = set()

    def _done(self, future: Any) -> None:
        self._pending.discard(future)
        _report(future)

    def __call__(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, Mapping[str, Any]]:
        presented = headers.get("authorization", "").removeprefix("Bearer ").strip().encode()
        if not hmac.compare_digest(presented, self._secret):
            return 401, {"error": "a bearer token with the webhook's shared secret is required"}
        try:
            alerts = self.parse(body)
        except ValueError as error:
            return 400, {"error": str(error)}
        loop = self.daemon.loop
        if loop is None:
            return 503, {"error": "the daemon is starting; retry"}
        started, duplicates, unmatched = [], [], []
        for alert in alerts:
            if alert.status != "firing":
                continue
            mapping = self.match(alert)
            if mapping is None:
                unmatched.append(alert.fingerprint)
                continue
            key = (alert.fingerprint, alert.starts_at)
            if key in self._seen or self._recorded(key):
                duplicates.append(alert.fingerprint)
                continue
            self._seen.add(key)
            playbook = self.starter.catalog.get(mapping.playbook)
            if playbook is None:
                unmatched.append(alert.fingerprint)
                log.error("alert %s maps to unknown playbook %s", alert.fingerprint,
                          mapping.playbook)  # fmt: skip
                continue
            queue = alert.labels.get("target") or self._first_queue()
            trigger = f"alert: {alert.labels.get('alertname', '?')} ({alert.fingerprint})"
            future = asyncio.run_coroutine_threadsafe(
                self._start(queue, playbook, trigger, mapping, alert), loop
            )
            # The loop holds its tasks weakly; an unreferenced one can vanish mid-run.
            self._pending.add(future)
            future.add_done_callback(self._done)
            started.append({"fingerprint": alert.fingerprint, "playbook": playbook.name})
        return 202, {"started": started, "duplicates": duplicates, "unmatched": unmatched}

    @staticmethod
    def parse(body: bytes) -> list[_Alert]:
        try:
            payload = json.loads(body)
        except ValueError:
            raise ValueError("the body is not JSON") from None
        if not isinstance(payload, dict):
            raise ValueError("the body must be a JSON object")
        if str(payload.get("version", "")) != "4":
            raise ValueError(f"expected webhook payload version 4, got {payload.get('version')!r}")
        raw = payload.get("alerts")
        if not isinstance(raw, list) or len(raw) > MAX_ALERTS:
            raise ValueError(f"alerts must be a list of at most {MAX_ALERTS}")
        alerts = []
        for index, item in enumerate(raw):
            if not isinstance(item, dict) or not isinstance(item.get("labels"), dict):
                raise ValueError(f"alerts[{index}] needs labels")
            fingerprint = item.get("fingerprint")
            if not isinstance(fingerprint, str) or not fingerprint:
                raise ValueError(f"alerts[{index}] needs a fingerprint")
            alerts.append(
                _Alert(
                    {str(k): str(v) for k, v in item["labels"].items()},
                    fingerprint[:64],
                    str(item.get("startsAt", ""))[:64],
                    str(item.get("status", payload.get("status", ""))),
                )
            )
        return alerts

    def match(self, alert: _Alert) -> AlertPlaybook | None:
        for mapping in self.starter.settings.alerts:
            if all(alert.labels.get(k) == v for k, v in mapping.labels.items()):
                return mapping
        return None

    def _first_queue(self) -> str:
        from collectors.diagnosis_loop import queues_of

        return next(iter(queues_of(self.starter.config)), "gateway")

    def _recorded(self, key: tuple[str, str]) -> bool:
        """Whether an earlier daemon already accepted this alert (the store remembers)."""
        import sqlite3

        try:
            with sqlite3.connect(
                f"file:{self.starter.config.store.path.resolve()}?mode=ro", uri=True, timeout=2
            ) as db:
                row = db.execute(
                    "SELECT 1 FROM alerts WHERE source = 'alertmanager' AND fingerprint = ?"
                    " AND json_extract(payload_json, '$.startsAt') = ? LIMIT 1",
                    key,
                ).fetchone()
        except sqlite3.Error:
            return False
        return row is not None

    async def _start(
        self, queue: str, playbook: Playbook, trigger: str, mapping: AlertPlaybook, alert: _Alert
    ) -> None:
        journal = Journal(self.starter.config.store.path)
        try:
            journal.record_alert(
                time.time(), alert.labels.get("alertname", ""), queue, alert.status,
                alert.fingerprint, {"labels": alert.labels, "startsAt": alert.starts_at,
                                    "playbook": playbook.name},
            )  # fmt: skip
        finally:
            journal.close()
        self.starter.start(queue, playbook, trigger, None, mapping.params)
