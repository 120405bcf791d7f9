"""The values every source produces, and the shape of a source.

A Sample is one number of one series at one time; an Event is one thing that
happened (a log line that matters, a state change). Both are frozen values so
they can be batched, queued and stored without copying.

Sources never raise for trouble in the outside world: an unreachable target,
a missing driver or an unreadable file becomes the ``status`` of a
CollectResult, and the loop keeps going.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Labels = tuple[tuple[str, str], ...]

OK = "ok"


def labels(*pairs: tuple[str, str], **named: str) -> Labels:
    """Canonical label tuple: sorted by name, so equal label sets compare equal."""
    merged = dict(pairs)
    merged.update(named)
    return tuple(sorted(merged.items()))


def labels_from(mapping: Mapping[str, str]) -> Labels:
    return tuple(sorted(mapping.items()))


def error(message: str) -> str:
    """A status that says what went wrong, in one line."""
    return "error: " + " ".join(message.split())


@dataclass(frozen=True, slots=True)
class Sample:
    series: str
    labels: Labels
    ts: float
    value: float

    def label(self, name: str, default: str = "") -> str:
        for key, value in self.labels:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class Event:
    ts: float
    kind: str
    source: str
    text: str
    severity: str = "info"


SEVERITIES = ("info", "warning", "error", "critical")


@dataclass(slots=True)
class CollectResult:
    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    status: str = OK
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == OK


@runtime_checkable
class Collector(Protocol):
    name: str

    async def collect(self, now: float) -> CollectResult: ...
