"""What a playbook file says, once it has been read and checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PARAM_TYPES = ("int", "float", "str", "bool", "list")
StepKind = Literal["action", "wait", "verify"]

# Exit statuses of `quell play`, part of its interface for scripts.
EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_VERIFY_FAILED = 3
EXIT_PRECONDITION = 4
EXIT_BUSY = 5
EXIT_ACTION_FAILED = 6


class PlaybookError(ValueError):
    """A playbook that cannot be loaded or run as written; the text names where."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Step:
    """One thing a run does: an action, a wait, or a verification against the signals."""

    kind: StepKind
    line: int
    name: str = ""
    action: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    condition: str = ""
    within_s: float = 30.0
    for_s: float = 0.0

    def describe(self) -> str:
        if self.kind == "wait":
            return f"wait {self.seconds:g} s"
        if self.kind == "verify":
            held = f", held {self.for_s:g} s" if self.for_s else ""
            return f"verify {self.condition} within {self.within_s:g} s{held}"
        return self.name or self.action


@dataclass(frozen=True)
class Preconditions:
    verdicts: tuple[str, ...] = ()
    min_confidence: float = 0.0
    conditions: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.verdicts and not self.conditions


@dataclass(frozen=True)
class Auto:
    """When the daemon may start a playbook with nobody at the keyboard."""

    verdicts: tuple[str, ...]
    min_confidence: float


@dataclass(frozen=True)
class Playbook:
    name: str
    description: str
    path: Path
    answers: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    preconditions: Preconditions = Preconditions()
    steps: tuple[Step, ...] = ()
    # None: undo every applied change in reverse, from the recorded before values.
    rollback: tuple[Step, ...] | None = None
    cooldown_s: float = 0.0
    max_runs_per_hour: int = 0
    dangerous: bool = False
    warning: str = ""
    auto: Auto | None = None

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)
