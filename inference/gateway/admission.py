"""The works queue in front of the worker pool.

The pool is a counter, not a set of worker tasks: a request runs at once
while fewer than ``workers`` are in flight; otherwise it waits as a future in
its priority class's deque, and whoever finishes hands its slot straight to
the next waiter (critical, then standard, then sheddable; FIFO within a
class). Nothing polls and nothing is spawned per request.

Waiters that time out or are cancelled stay in their deque and are skipped
when reached: removing them from the middle would cost O(depth) each, and a
mass time-out is exactly when that would hurt. The depth counters are kept
exact separately.
"""

from __future__ import annotations

import asyncio
from collections import deque

from inference.gateway.config import PRIORITIES


class QueueFull(Exception):
    """No free worker and no room in the works queue."""


class QueueTimeout(Exception):
    """The request waited longer than the queue timeout."""


class Admission:
    def __init__(self, workers: int, capacity: int, timeout_s: float) -> None:
        self.workers = workers
        self.capacity = capacity
        self.timeout_s = timeout_s
        self.in_flight = 0
        self.depth = 0
        self.class_depth = [0] * len(PRIORITIES)
        self.completed = 0
        self._waiters: tuple[deque[asyncio.Future[None]], ...] = tuple(deque() for _ in PRIORITIES)

    def full(self) -> bool:
        """True when a new request would be rejected right now."""
        return self.depth >= self.capacity and self.in_flight >= self.workers

    async def acquire(self, priority: int) -> None:
        """Wait for a worker slot; the caller must ``release()`` it afterwards."""
        if self.in_flight < self.workers and not self.depth:
            self.in_flight += 1
            return
        if self.depth >= self.capacity:
            raise QueueFull
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters[priority].append(waiter)
        self.depth += 1
        self.class_depth[priority] += 1
        timer = loop.call_later(self.timeout_s, self._expire, waiter, priority)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                self._forget(priority)
            elif waiter.exception() is None:
                # Handed a slot in the same tick as the cancellation.
                self.release()
            raise
        finally:
            timer.cancel()

    def _forget(self, priority: int) -> None:
        self.depth -= 1
        self.class_depth[priority] -= 1

    def _expire(self, waiter: asyncio.Future[None], priority: int) -> None:
        if not waiter.done():
            waiter.set_exception(QueueTimeout())
            self._forget(priority)

    def release(self) -> None:
        self.completed += 1
        if self.depth and self.in_flight <= self.workers and self._hand_over():
            return
        self.in_flight -= 1

    def _hand_over(self) -> bool:
        for priority, waiters in enumerate(self._waiters):
            while waiters:
                waiter = waiters.popleft()
                if waiter.done():
                    continue
                self._forget(priority)
                waiter.set_result(None)
                return True
        return False

    def set_workers(self, workers: int) -> None:
        """Resize the pool; extra slots go to waiters now, lost ones as requests finish."""
        self.workers = workers
        while self.in_flight < self.workers and self.depth:
            self.in_flight += 1
            if not self._hand_over():
                self.in_flight -= 1
                break

    def set_capacity(self, capacity: int) -> None:
        # Requests already waiting keep their place; only new ones see the bound.
        self.capacity = capacity
