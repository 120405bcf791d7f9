"""A per-upstream circuit breaker.

Closed, it counts outcomes: it opens after N consecutive failures, or when
the failure ratio over a sliding window passes a threshold once the window
holds enough requests (so three failures out of four at 3 a.m. do not open
it). Open, it refuses until the cool-down has passed, then lets exactly one
probe through (half-open): success closes it, failure opens it again. An
operator's trip holds it open until an operator resets it.

Time is passed in, so the state machine is tested without sleeping.
"""

from __future__ import annotations

from enum import IntEnum

WINDOW_BUCKETS = 10


class BreakerState(IntEnum):
    # The values are the exported gauge: 0 closed, 1 half-open, 2 open.
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        consecutive_failures: int,
        error_ratio: float,
        window_s: float,
        min_requests: int,
        cooldown_s: float,
    ) -> None:
        self.consecutive_limit = consecutive_failures
        self.error_ratio = error_ratio
        self.min_requests = min_requests
        self.cooldown_s = cooldown_s
        self.state = BreakerState.CLOSED
        self.tripped = False
        self.opened_at = 0.0
        self.consecutive = 0
        self.opened_count = 0
        self._probing = False
        self._bucket_s = window_s / WINDOW_BUCKETS
        # Each bucket: [bucket number, requests, failures].
        self._buckets = [[-1, 0, 0] for _ in range(WINDOW_BUCKETS)]

    def available(self, now: float) -> bool:
        """Whether ``allow`` would let a request through; takes nothing."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return not self._probing
        return not self.tripped and now - self.opened_at >= self.cooldown_s

    def allow(self, now: float) -> bool:
        """Admit a request; in half-open state only the single probe passes."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if not self.available(now):
            return False
        self.state = BreakerState.HALF_OPEN
        self._probing = True
        return True

    def record(self, success: bool, now: float) -> None:
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._probing = False
            if success:
                self._close()
            else:
                self._open(now)
            return
        if state is BreakerState.OPEN:
            # An answer to a request sent before the breaker opened.
            return
        number = int(now / self._bucket_s)
        bucket = self._buckets[number % WINDOW_BUCKETS]
        if bucket[0] != number:
            bucket[0] = number
            bucket[1] = bucket[2] = 0
        bucket[1] += 1
        if success:
            self.consecutive = 0
            return
        bucket[2] += 1
        self.consecutive += 1
        if self.consecutive >= self.consecutive_limit:
            self._open(now)
            return
        requests, failures = self.window_counts(now)
        if requests >= self.min_requests and failures >= self.error_ratio * requests:
            self._open(now)

    def window_counts(self, now: float) -> tuple[int, int]:
        oldest = int(now / self._bucket_s) - WINDOW_BUCKETS + 1
        requests = failures = 0
        for number, total, failed in self._buckets:
            if number >= oldest:
                requests += total
                failures += failed
        return requests, failures

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.opened_count += 1
        self._probing = False

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self._probing = False
        for bucket in self._buckets:
            bucket[0] = -1
            bucket[1] = bucket[2] = 0

    def trip(self, now: float) -> None:
        self._open(now)
        self.tripped = True

    def reset(self) -> None:
        self.tripped = False
        self._close()

    def describe(self, now: float) -> dict[str, object]:
        requests, failures = self.window_counts(now)
        return {
            "state": self.state.name.lower(),
            "tripped": self.tripped,
            "consecutive_failures": self.consecutive,
            "window_requests": requests,
            "window_failures": failures,
            "times_opened": self.opened_count,
        }
