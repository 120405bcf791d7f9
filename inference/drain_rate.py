"""How fast a queue drains, smoothed, and the Retry-After hint that follows from it.

The engine and the gateway both tell a refused client when to come back:
the time the requests already queued take to drain at the current
completion rate.
"""

from __future__ import annotations

import time

# Clients are told to come back no sooner than this, and never later than
# 30 s, well inside the 60 s past which the OpenAI SDKs ignore Retry-After.
MIN_RETRY_AFTER_S = 0.5
MAX_RETRY_AFTER_S = 30.0
# With nothing completing to estimate from (everything stalled).
UNKNOWN_DRAIN_RETRY_AFTER_S = 2.0


class DrainRate:
    """Completions per second, smoothed, for the Retry-After estimate."""

    def __init__(self, completed: int = 0, now: float | None = None) -> None:
        self.per_second = 0.0
        self._last_count = completed
        self._last_time = time.monotonic() if now is None else now

    def update(self, completed: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        elapsed = now - self._last_time
        if elapsed <= 0:
            return
        instant = (completed - self._last_count) / elapsed
        self.per_second = instant if self.per_second == 0 else 0.5 * self.per_second + 0.5 * instant
        self._last_count = completed
        self._last_time = now

    def retry_after(self, queued: int) -> float:
        """Seconds until the ``queued`` requests ahead have drained, within bounds."""
        if self.per_second < 0.01:
            return UNKNOWN_DRAIN_RETRY_AFTER_S
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, (queued + 1) / self.per_second))
