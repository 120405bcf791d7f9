"""The signals a run reads: for defaults, preconditions and verification.

A run watches the same queue the collectors watch, once a second, through
the same collector code (``collectors.watch``), and keeps a diagnoser fed so
a verdict is at hand when nothing else supplied one. Verification reads a
five-tick moving mean rather than one tick: a one-second rate of a Poisson
arrival stream swings by a third at lab rates (a 3-tick mean still let a
recovered queue at 26 req/s read as service at 94% of offered and fail a
95% check), and a verification that passes on one lucky tick has verified
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from typing import Any

from collectors.diagnosis import Diagnoser, Observation, Verdict
from collectors.watch import Topology, watch

SMOOTH_TICKS = 5


def view(observations: list[Observation]) -> dict[str, float]:
    """The mean of each signal over ``observations``, plus the words playbooks use."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for obs in observations:
        for key, value in obs.signals.items():
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
    signals = {k: sums[k] / counts[k] for k in sums}
    if "completed_rate" in signals:
        signals.setdefault("service_rate", signals["completed_rate"])
    depth, capacity = signals.get("depth"), signals.get("capacity")
    if depth is not None and capacity:
        signals["occupancy"] = depth / capacity
    if observations:
        signals["replicas"] = float(len(observations[-1].replicas))
        for key, value in observations[-1].host.items():
            signals.setdefault(key, value)
    return signals


class LiveSignals:
    """A background watch of one queue; ``await started()`` before reading."""

    def __init__(self, topology: Topology, interval_s: float = 1.0) -> None:
        self.topology = topology
        self.interval_s = interval_s
        self.diagnoser = Diagnoser(topology.name)
        self.recent: deque[Observation] = deque(maxlen=60)
        self._tick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        try:
            async for obs in watch(self.topology, self.interval_s, host=True):
                if not obs.signals:
                    continue  # a failed scrape is a gap
                self.recent.append(obs)
                self.diagnoser.observe(obs)
                self._tick.set()
        except Exception as error:  # surfaced to the waiting run
            self.error = error
            self._tick.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def next_tick(self, timeout_s: float = 10.0) -> None:
        self._tick.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tick.wait(), timeout_s)
        if self.error is not None:
            raise self.error

    async def warm(self, ticks: int, timeout_s: float = 30.0) -> None:
        """Wait until ``ticks`` observations are in hand (rates need two scrapes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.recent) < ticks and loop.time() < deadline:
            await self.next_tick(max(0.1, deadline - loop.time()))

    def signals(self, ticks: int = SMOOTH_TICKS) -> dict[str, float]:
        return view(list(self.recent)[-ticks:])

    @property
    def verdict(self) -> Verdict | None:
        return self.diagnoser.verdict


def verdict_scope(verdict: Verdict | Mapping[str, Any] | None) -> dict[str, Any]:
    if verdict is None:
        return {"cause": "", "confidence": 0.0, "evidence": {}, "since": 0.0}
    if isinstance(verdict, Verdict):
        return {
            "cause": verdict.cause,
            "confidence": verdict.confidence,
            "evidence": verdict.evidence,
            "since": verdict.since,
        }
    return {
        "cause": verdict.get("cause", ""),
        "confidence": float(verdict.get("confidence", 0.0)),
        "evidence": dict(verdict.get("evidence", {})),
        "since": float(verdict.get("since", verdict.get("opened", 0.0))),
    }
