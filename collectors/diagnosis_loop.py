"""Diagnosis inside the daemon: every tick, every watched queue, recorded and announced.

Each queue target (a target no other names as its ``replica_of``) gets a
``Diagnoser`` fed with the tick's samples of the queue, its replicas and the
host. Verdicts open, change and close incidents in the store; alert rules
are evaluated on the same numbers and their notifications recorded and sent.
The verdict, time to full and occupancy are written back as samples, so the
console and a Prometheus server scraping the daemon see them too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from collectors.alerts import DEFAULT_RULES, Alerter, LogRoute, Notification, Route, alert_values
from collectors.diagnosis import CAUSES, Change, Diagnoser
from collectors.model import Sample, labels
from collectors.watch import observation

if TYPE_CHECKING:
    from collectors.config import Config
    from collectors.daemon import Daemon
    from collectors.store import Store

log = logging.getLogger("quell.diagnosis")

HOST_SOURCES = ("host", "gpu")


def queues_of(config: Config) -> dict[str, list[str]]:
    """Queue target -> the names of its replicas."""
    queues: dict[str, list[str]] = {t.name: [] for t in config.targets if t.replica_of is None}
    for target in config.targets:
        if target.replica_of in queues:
            queues[target.replica_of].append(target.name)
    return queues


class DiagnosisLoop:
    """A tick hook: ``daemon.on_tick.append(DiagnosisLoop(daemon))``."""

    def __init__(
        self,
        daemon: Daemon,
        routes: Sequence[Route] = (LogRoute(),),
        rules: Sequence[object] = DEFAULT_RULES,
        samples: Callable[[], Mapping[str, Sequence[Sample]]] | None = None,
    ) -> None:
        self.daemon = daemon
        self.routes = list(routes)
        self.alerter = Alerter(rules)  # type: ignore[arg-type]
        self.diagnosers: dict[str, Diagnoser] = {}
        self.incidents: dict[str, int] = {}
        self._samples = samples or (lambda: daemon.last_samples)
        self._deliveries: set[asyncio.Task[list[str]]] = set()

    async def __call__(self, store: Store, now: float) -> None:
        by_source = self._samples()
        queues = queues_of(self.daemon.config)
        for gone in set(self.diagnosers) - set(queues):
            del self.diagnosers[gone]
        host = [s for name in HOST_SOURCES for s in by_source.get(name, ())]
        written: list[Sample] = []
        for queue, replicas in queues.items():
            if not by_source.get(queue):
                continue  # a failed scrape is a gap, not a healthy tick
            diagnoser = self.diagnosers.setdefault(queue, Diagnoser(queue))
            obs = observation(
                now, by_source[queue], {r: by_source.get(r, ()) for r in replicas}, host
            )
            for change in diagnoser.observe(obs):
                await self._record(store, queue, change)
            assessment = diagnoser.last
            if assessment is None:
                continue
            notes = self.alerter.evaluate(
                queue, now, alert_values(assessment, obs), diagnoser.verdict
            )
            for note in notes:
                await store.record_alert(
                    note.at, note.rule, note.target, note.status, note.fingerprint,
                    note.as_dict(), self.incidents.get(queue),
                )  # fmt: skip
                self._send(note)
            written.extend(self._outputs(queue, now, diagnoser))
        if written:
            count = await store.write_tick(written)
            # Counted with the daemon's own writes, so "samples written" is
            # what the store holds.
            self.daemon.samples_written += count
            self.daemon.exporter.samples_written.inc(count)
            self.daemon.exporter.series.update("diagnosis", written)

    def _outputs(self, queue: str, now: float, diagnoser: Diagnoser) -> list[Sample]:
        verdict = diagnoser.verdict
        out = [
            Sample("verdict", labels(("cause", cause), target=queue), now,
                   verdict.confidence if verdict is not None and verdict.cause == cause else 0.0)
            for cause in CAUSES
        ]  # fmt: skip
        out.append(Sample("imbalance", labels(target=queue), now, 1.0 if verdict else 0.0))
        last = diagnoser.last
        if last is not None and last.time_to_full is not None:
            out.append(Sample("time_to_full_seconds", labels(target=queue), now, last.time_to_full))
        if last is not None and last.occupancy is not None:
            out.append(Sample("occupancy", labels(target=queue), now, last.occupancy))
        return out

    async def _record(self, store: Store, queue: str, change: Change) -> None:
        verdict = change.verdict
        log.warning(
            "%s %s: %s (confidence %.0f%%)",
            queue, change.kind, verdict.cause, 100 * verdict.confidence,
        )  # fmt: skip
        if change.kind == "opened":
            self.incidents[queue] = await store.open_incident(
                queue, verdict.cause, change.ts, verdict.confidence, verdict.evidence
            )
            return
        incident = self.incidents.get(queue)
        if incident is None:
            return
        closed = change.kind == "closed"
        await store.note_incident(
            incident, change.ts, change.kind, verdict.cause, verdict.confidence,
            verdict.evidence, closed=closed,
        )  # fmt: skip
        if closed:
            del self.incidents[queue]

    def _send(self, note: Notification) -> None:
        # Delivery runs beside the tick: a slow webhook must not stall sampling.
        from collectors.alerts import deliver

        task = asyncio.get_running_loop().create_task(deliver(note, self.routes))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
