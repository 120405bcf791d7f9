"""Which moment the console shows: now, or a replay cursor over recorded data.

Every screen reads the store "as of" ``clock.now()``; live and replay
differ only in how that moment moves. The replay clock moves by real time
times its speed while playing and stops at the end of the recording; steps
and seeks pause it, so the moment a person looks at stays put.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from console.tui.keys import LIVE, REPLAY

MIN_SPEED = 1 / 64
MAX_SPEED = 4096.0


class LiveClock:
    mode = LIVE
    playing = True

    def now(self) -> float:
        return time.time()


@dataclass
class ReplayClock:
    start: float
    end: float
    position: float
    speed: float = 1.0
    playing: bool = False
    step_s: float = 1.0  # one tick of the recording
    mode: str = REPLAY

    def now(self) -> float:
        return self.position

    def advance(self, real_seconds: float) -> bool:
        """Move with the wall clock while playing; True when the position changed."""
        if not self.playing or real_seconds <= 0:
            return False
        before = self.position
        self.position = min(self.end, self.position + real_seconds * self.speed)
        if self.position >= self.end:
            self.playing = False
        return self.position != before

    def toggle(self) -> None:
        if not self.playing and self.position >= self.end:
            # Play at the end starts over, as a media player does.
            self.position = self.start
        self.playing = not self.playing

    def step(self, ticks: int) -> None:
        self.playing = False
        self.seek_to(self.position + ticks * self.step_s)

    def seek(self, seconds: float) -> None:
        self.seek_to(self.position + seconds)

    def seek_to(self, ts: float) -> None:
        self.position = min(self.end, max(self.start, ts))

    def scale(self, factor: float) -> None:
        self.speed = min(MAX_SPEED, max(MIN_SPEED, self.speed * factor))

    def extend(self, end: float) -> None:
        """The recording grew (a replay of a store that is still being written)."""
        self.end = max(self.end, end)

    @property
    def progress(self) -> float:
        span = self.end - self.start
        return 1.0 if span <= 0 else (self.position - self.start) / span
