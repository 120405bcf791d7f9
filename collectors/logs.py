"""Log files as Events and per-kind rates.

Each new line is classified (collectors.log_lines); a line of a known kind
becomes an Event, and every kind's count over the interval becomes
``log_events_rate{kind,source}``. At tens of thousands of rejections a
second the access log says ``works_queue_full`` tens of thousands of times:
the rate carries that, and only the first few lines of each kind per tick
become Events, so the store holds examples, not a copy of the log.

A line over 64 KiB or one that is not UTF-8 text (a NUL byte, bad UTF-8) is
skipped and counted in ``log_lines_skipped_total``; a log is not a reason
for the collector to stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from collectors.log_lines import FORMATS, LogRule, classify
from collectors.model import OK, CollectResult, Event, Labels, Sample, error
from collectors.tail import FileTailer

MAX_EVENTS_PER_KIND = 20
MAX_EVENT_TEXT = 1000


def decode_line(raw: bytes) -> str | None:
    """The line as text, or None when it is binary."""
    if b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class LogCollector:
    def __init__(
        self,
        path: Path | str,
        *,
        name: str | None = None,
        fmt: str = "auto",
        rules: Sequence[LogRule] = (),
        from_start: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r}; known: {', '.join(FORMATS)}")
        self.path = Path(path)
        self.name = name or str(self.path)
        self.fmt = fmt
        self.rules = tuple(rules)
        self._tailer = FileTailer(self.path, from_start=from_start)
        self._skipped_binary = 0
        self._kinds_seen: set[str] = set()
        self._last_poll: float | None = None

    @property
    def skipped(self) -> int:
        return self._skipped_binary + self._tailer.skipped_long

    async def collect(self, now: float) -> CollectResult:
        started = time.perf_counter()
        try:
            # A read may wait on a slow disk or a network mount, so it runs in
            # a thread; a stat first spares that hop when nothing was added.
            tailer = self._tailer
            raw_lines = [] if tailer.unchanged() else await asyncio.to_thread(tailer.poll)
        except OSError as problem:
            status = error(f"cannot read {self.path}: {problem.strerror or problem}")
            return CollectResult([], [], status, time.perf_counter() - started)
        events: list[Event] = []
        counts: dict[str, int] = {}
        for raw in raw_lines:
            line = decode_line(raw)
            if line is None:
                self._skipped_binary += 1
                continue
            for finding in classify(line, self.fmt, self.rules):
                seen = counts.get(finding.kind, 0)
                counts[finding.kind] = seen + 1
                if seen < MAX_EVENTS_PER_KIND:
                    events.append(
                        Event(
                            finding.ts if finding.ts is not None else now,
                            finding.kind,
                            self.name,
                            line[:MAX_EVENT_TEXT],
                            finding.severity,
                        )
                    )
        samples = self._samples(now, len(raw_lines), counts)
        status = OK
        if not self.path.exists():
            status = error(f"{self.path} does not exist (yet); waiting for it")
        return CollectResult(samples, events, status, time.perf_counter() - started)

    def _samples(self, now: float, lines: int, counts: dict[str, int]) -> list[Sample]:
        source: Labels = (("source", self.name),)
        samples = [Sample("log_lines_skipped_total", source, now, float(self.skipped))]
        previous, self._last_poll = self._last_poll, now
        self._kinds_seen.update(counts)
        if previous is None or now <= previous:
            return samples
        elapsed = now - previous
        samples.append(Sample("log_lines_rate", source, now, lines / elapsed))
        # Kinds seen before and quiet now report 0, so a burst visibly ends.
        for kind in sorted(self._kinds_seen):
            labels = (("kind", kind), ("source", self.name))
            samples.append(Sample("log_events_rate", labels, now, counts.get(kind, 0) / elapsed))
        return samples

    def close(self) -> None:
        self._tailer.close()
