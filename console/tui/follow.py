"""Following the store's events as the shown moment moves, each event once.

Log events carry the time of their log line, which is earlier than the tick
that wrote them, so "everything after the last query" would miss some.
Each read looks back ``LOOKBACK_S`` before the previous moment and drops
what it has already seen. A jump (a seek, or a replay faster than the
look-back) starts over from the ``INITIAL_S`` before the new moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from collectors.model import Event

if TYPE_CHECKING:
    from collectors.store import Store

LOOKBACK_S = 15.0
INITIAL_S = 300.0
MAX_FOLLOW_S = 600.0  # a move forward by more than this is a jump
READ_LIMIT = 2000

EventKey = tuple[float, str, str, str]


@dataclass
class EventFollower:
    last_now: float | None = None
    _seen: dict[EventKey, float] = field(default_factory=dict)

    async def read(self, store: Store, now: float) -> tuple[list[Event], bool]:
        """(events new since the last read, oldest first; True when the list starts over)."""
        reset = self.last_now is None or now < self.last_now or now - self.last_now > MAX_FOLLOW_S
        if reset:
            self._seen.clear()
            start = now - INITIAL_S
        else:
            assert self.last_now is not None
            start = self.last_now - LOOKBACK_S
        events = await store.events(start, now + 0.001, limit=READ_LIMIT)
        fresh = []
        for event in events:
            key = (event.ts, event.kind, event.source, event.text)
            if key in self._seen:
                continue
            self._seen[key] = event.ts
            fresh.append(event)
        floor = now - LOOKBACK_S - 1.0
        for key in [k for k, ts in self._seen.items() if ts < floor]:
            del self._seen[key]
        self.last_now = now
        return fresh, reset
