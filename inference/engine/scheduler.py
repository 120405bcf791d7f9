"""Continuous batching over a fixed number of slots, with a KV-token budget.

Requests wait in a bounded FIFO queue. Each scheduler step first admits
waiting requests into free slots while the KV budget can hold their prompt
plus the tokens they will generate (first come, first served: the head of
the queue blocks the rest, as in vLLM), then advances every running sequence
by one token and sleeps for the step's cost (``cost_model.py``).

Steps are paced against a deadline rather than "sleep after work", so timer
overshoot does not accumulate and measured throughput matches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from inference.engine.cost_model import CostModel
from inference.engine.faults import Faults

# After a stall or a CPU hiccup the scheduler restarts its clock instead of
# running a burst of zero-length steps to "catch up", which no GPU does.
MAX_LAG_SECONDS = 0.05


class QueueFull(Exception):
    """The waiting queue is at capacity."""


class InjectedFailure(Exception):
    """The error-rate fault chose this request."""


@dataclass(slots=True, eq=False)
class Sequence:
    """One request as the scheduler sees it."""

    request_id: str
    prompt_tokens: int
    output_tokens: int
    arrival: float
    streaming: bool = False
    # "length" when the client's max_tokens ends it, "stop" for a natural end.
    stop_reason: str = "length"
    generated: int = 0
    admitted_at: float = 0.0
    ready_at: float = 0.0
    first_token_at: float = 0.0
    finished_at: float = 0.0
    finish_reason: str = ""
    aborted: bool = False
    done: asyncio.Future[None] | None = None
    progress: asyncio.Queue[int] | None = None

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


class Observer:
    """What the scheduler reports as it works; the metrics implement it."""

    def on_step(self, running: int, prefill_tokens: int, generated_tokens: int) -> None:
        return None

    def on_admit(self, seq: Sequence) -> None:
        return None

    def on_finish(self, seq: Sequence) -> None:
        return None


class Scheduler:
    def __init__(
        self,
        cost: CostModel,
        slots: int,
        kv_tokens: int,
        max_waiting: int,
        faults: Faults | None = None,
        observer: Observer | None = None,
        seed: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.cost = cost
        self.slots = slots
        self.kv_tokens = kv_tokens
        self.max_waiting = max_waiting
        self.faults = faults or Faults()
        self.observer = observer or Observer()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.kv_reserved = 0
        self.kv_in_use = 0
        self.completed = 0
        self._rng = random.Random(seed)
        self._wake = asyncio.Event()
        self._unstalled = asyncio.Event()
        self._unstalled.set()
        self._ids = itertools.count()
        self._clock = clock

    # -- admission -------------------------------------------------------

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def next_id(self) -> str:
        return f"{next(self._ids):x}"

    def submit(self, seq: Sequence) -> None:
        """Queue a request, or refuse it when the waiting queue is full.

        Requests that will be admitted at the next step because a slot is free
        do not count against ``max_waiting``: a burst that fits the free slots
        is never refused.
        """
        if self.faults.error_rate > 0 and self._rng.random() < self.faults.error_rate:
            raise InjectedFailure
        free_slots = max(0, self.slots - len(self.running))
        if len(self.waiting) >= self.max_waiting + free_slots:
            raise QueueFull
        self.waiting.append(seq)
        self._wake.set()

    def abort(self, seq: Sequence) -> None:
        """The client went away: stop spending steps on it."""
        seq.aborted = True
        self._wake.set()

    @property
    def waiting_count(self) -> int:
        return len(self.waiting)

    @property
    def running_count(self) -> int:
        return len(self.running)

    def kv_usage(self) -> float:
        return self.kv_in_use / self.kv_tokens if self.kv_tokens else 0.0

    # -- faults ----------------------------------------------------------

    def set_stalled(self, stalled: bool) -> None:
        self.faults.stalled = stalled
        if stalled:
            self._unstalled.clear()
        else:
            self._unstalled.set()
        self._wake.set()

    def set_slots(self, slots: int) -> None:
        # Fewer slots take effect as running sequences finish; nothing is
        # preempted mid-generation.
        self.slots = slots
        self._wake.set()

    # -- the loop --------------------------------------------------------

    def _admit(self, now: float) -> None:
        waiting = self.waiting
        while waiting and len(self.running) < self.slots:
            seq = waiting[0]
            if seq.aborted:
                waiting.popleft()
                self._finish(seq, now, "abort")
                continue
            if self.kv_reserved + seq.kv_tokens > self.kv_tokens:
                break
            waiting.popleft()
            seq.admitted_at = now
            seq.ready_at = now + self.faults.dependency_ms / 1000.0
            self.kv_reserved += seq.kv_tokens
            self.running.append(seq)
            self.observer.on_admit(seq)

    def _finish(self, seq: Sequence, now: float, reason: str) -> None:
        seq.finished_at = now
        seq.finish_reason = reason
        if seq.admitted_at:
            self.kv_reserved -= seq.kv_tokens
            if seq.generated:
                self.kv_in_use -= seq.prompt_tokens + seq.generated
        if reason != "abort":
            self.completed += 1
        self.observer.on_finish(seq)
        if seq.progress is not None:
            seq.progress.put_nowait(-1)
        if seq.done is not None and not seq.done.done():
            seq.done.set_result(None)

    async def _idle(self, at_most: float | None) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), at_most)

    def _stalled(self) -> bool:
        return self.faults.stalled

    async def run(self) -> None:
        deadline = self.now()
        while True:
            if self.faults.stalled:
                await self._unstalled.wait()
                deadline = self.now()
                continue
            now = self.now()
            self._admit(now)
            if any(seq.aborted for seq in self.running):
                for seq in [s for s in self.running if s.aborted]:
                    self.running.remove(seq)
                    self._finish(seq, now, "abort")
                # The freed slots go to the waiting requests before anything
                # else: with every running sequence aborted at once, going on
                # would find nothing active and idle with requests waiting.
                continue
            active = [seq for seq in self.running if seq.ready_at <= now]
            if not active:
                if self.running:
                    # Every slot is held by a request waiting on its slow
                    # dependency: the GPU idles while the slots stay full.
                    await self._idle(min(seq.ready_at for seq in self.running) - now)
                else:
                    await self._idle(None)
                deadline = self.now()
                continue
            prefill = 0
            for seq in active:
                if seq.generated == 0:
                    prefill += seq.prompt_tokens
            step = self.cost.step_seconds(len(active), prefill, self.faults.slowdown)
            deadline += step
            if deadline < now - MAX_LAG_SECONDS:
                deadline = now + step
            delay = deadline - self.now()
            await asyncio.sleep(delay if delay > 0 else 0)
            if self._stalled():
                # The hang struck mid-step: its work is lost and redone later.
                continue
            self._advance(active, prefill)

    def _advance(self, active: list[Sequence], prefill: int) -> None:
        now = self.now()
        finished: list[Sequence] = []
        for seq in active:
            if seq.aborted:
                continue
            if seq.generated == 0:
                seq.first_token_at = now
                self.kv_in_use += seq.prompt_tokens
            seq.generated += 1
            self.kv_in_use += 1
            if seq.progress is not None:
                seq.progress.put_nowait(seq.generated)
            if seq.generated >= seq.output_tokens:
                finished.append(seq)
        self.observer.on_step(len(active), prefill, len(active))
        if finished:
            done = set(finished)
            self.running = [seq for seq in self.running if seq not in done]
            for seq in finished:
                self._finish(seq, now, seq.stop_reason)
