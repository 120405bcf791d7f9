"""Faults injected at run time through the engine's admin API, for drills and labs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MAX_SLOWDOWN = 1000.0
MAX_DEPENDENCY_MS = 600_000.0
MAX_SLOTS = 4096


class InvalidFault(ValueError):
    """A fault setting the engine refuses, with the reason for the operator."""


@dataclass(slots=True)
class Faults:
    slowdown: float = 1.0
    stalled: bool = False
    error_rate: float = 0.0
    dependency_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFault(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidFault(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def validate_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Check every requested change before any is applied: all or nothing."""
    known = {"slowdown", "stalled", "error_rate", "dependency_ms", "slots"}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise InvalidFault(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if not changes:
        raise InvalidFault(f"no setting given; known: {', '.join(sorted(known))}")
    clean: dict[str, Any] = {}
    if "slowdown" in changes:
        clean["slowdown"] = _number("slowdown", changes["slowdown"], 1.0, MAX_SLOWDOWN)
    if "error_rate" in changes:
        clean["error_rate"] = _number("error_rate", changes["error_rate"], 0.0, 1.0)
    if "dependency_ms" in changes:
        clean["dependency_ms"] = _number(
            "dependency_ms", changes["dependency_ms"], 0.0, MAX_DEPENDENCY_MS
        )
    if "stalled" in changes:
        if not isinstance(changes["stalled"], bool):
            raise InvalidFault("stalled must be true or false")
        clean["stalled"] = changes["stalled"]
    if "slots" in changes:
        slots = changes["slots"]
        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
            raise InvalidFault(f"slots must be a whole number from 1 to {MAX_SLOTS}, got {slots!r}")
        clean["slots"] = slots
    return clean
