"""A token bucket: a steady rate with room for a burst.

Time is passed in rather than read, so the arithmetic is tested without
sleeping and the hot path reads the clock once per request for everything.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def _refill(self, now: float) -> float:
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
            self.updated = now
        return self.tokens

    def take(self, amount: float, now: float) -> float:
        """Take ``amount`` tokens: 0.0 when granted, else the seconds until it would be.

        An amount larger than the whole bucket is charged as a full bucket,
        otherwise such a request could never pass however long it waited.
        """
        amount = min(amount, self.capacity)
        tokens = self._refill(now)
        if tokens >= amount:
            self.tokens = tokens - amount
            return 0.0
        return (amount - tokens) / self.rate

    def remaining(self, now: float) -> int:
        return int(self._refill(now))

    def reset_after(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self._refill(now)) / self.rate

    def reconfigure(self, rate: float, capacity: float, now: float) -> None:
        """Change rate and size without handing out a fresh burst."""
        self._refill(now)
        self.rate = rate
        self.capacity = capacity
        self.tokens = min(self.tokens, capacity)
