"""Scenario files: traffic, faults and the cause they produce, for rehearsals and scoring.

A scenario is a TOML file. It names the cause it produces and when that
cause begins (``onset_s``), so diagnosis can be scored against it:

    name = "producer_surge"
    cause = "producer_surge"        # or "none" for a benign scenario
    onset_s = 20
    duration_s = 60
    description = "..."
    precursors = [{at_s = 10, cause = "producer_surge"}]   # causes that rightly show
                                    # before the onset (a surge before a retry storm)

    [traffic]
    arrival = "poisson"             # or "constant"
    unit = "capacity"               # profile levels: "capacity" (fraction of the
                                    # lab's predicted capacity) or "rps"
    profile = [[0, 0.6], [20, 0.6], [20, 2.0], [40, 2.0], [40, 0.6]]
    prompt_tokens = {dist = "lognormal", median = 120, sigma = 0.5, min = 8, max = 2000}
    max_tokens = {dist = "uniform", low = 16, high = 48}
    stream_share = 0.1
    keys = {standard = 0.8, batch = 0.2}      # key name -> weight
    client = "none"                 # "none", "naive_retry", "backoff"
    max_retries = 3
    timeout_s = 30

    [[traffic.phases]]              # from at_s on, these request shapes replace
    at_s = 20                       # the ones above (prompt_tokens, max_tokens,
    prompt_tokens = {dist = "uniform", low = 4000, high = 6000}   # stream_share, keys)

    [[faults]]
    at_s = 20
    replica = 0                     # an index or "all"
    set = {slowdown = 4.0}          # engine admin settings; or clear = true,
                                    # crash = true, cpu_hog = {workers = 2, seconds = 30},
                                    # gateway_queue = {capacity = 4} (the gateway's
                                    # queue knobs, put back when the run ends)

The profile is piecewise linear between its points; two points at the same
time make a step. Before the first point and after the last the level holds.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

CAUSES = (
    "none",
    "producer_surge",
    "consumer_slowdown",
    "stalled_consumers",
    "dependency_slow",
    "resource_saturation",
    "hot_replica",
    "undersized_queue",
    "retry_amplification",
)
CLIENTS = ("none", "naive_retry", "backoff")
ENGINE_SETTINGS = ("slowdown", "stalled", "error_rate", "dependency_ms", "slots")
MAX_TOKENS = 1_000_000


class ScenarioError(ValueError):
    """A scenario file that cannot be used, with where and why."""


@dataclass(frozen=True, slots=True)
class Distribution:
    """Token counts drawn per request: constant, uniform or lognormal, clamped."""

    kind: str
    a: float
    b: float = 0.0
    low: int = 1
    high: int = 1_000_000

    def mean(self) -> float:
        if self.kind == "constant":
            value = self.a
        elif self.kind == "uniform":
            value = (self.a + self.b) / 2
        else:  # lognormal: a is the median, b the sigma of the log
            value = self.a * math.exp(self.b * self.b / 2)
        return min(max(value, self.low), self.high)


@dataclass(frozen=True, slots=True)
class FaultStep:
    at_s: float
    replica: int | str  # an index, or "all"
    settings: dict[str, Any] = field(default_factory=dict)
    clear: bool = False
    crash: bool = False
    cpu_hog_workers: int = 0
    cpu_hog_seconds: float = 0.0
    gateway_queue: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        target = f"replica {self.replica}" if self.replica != "all" else "every replica"
        if self.clear:
            return f"clear faults on {target}"
        if self.crash:
            return f"crash {target}"
        if self.gateway_queue:
            settings = ", ".join(f"{k}={v}" for k, v in self.gateway_queue.items())
            return f"set gateway queue {settings}"
        if self.cpu_hog_workers:
            return f"CPU hog: {self.cpu_hog_workers} busy processes for {self.cpu_hog_seconds:g} s"
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"set {settings} on {target}"


@dataclass(frozen=True, slots=True)
class Phase:
    """Request shapes from ``at_s`` on; None keeps what was there before."""

    at_s: float
    prompt_tokens: Distribution | None = None
    max_tokens: Distribution | None = None
    stream_share: float | None = None
    keys: tuple[tuple[str, float], ...] | None = None


@dataclass(frozen=True, slots=True)
class Traffic:
    profile: tuple[tuple[float, float], ...]
    unit: str = "capacity"
    arrival: str = "poisson"
    prompt_tokens: Distribution = Distribution("lognormal", 120, 0.5, 8, 2000)
    max_tokens: Distribution = Distribution("uniform", 16, 48, 1, 4096)
    stream_share: float = 0.0
    keys: tuple[tuple[str, float], ...] = ()
    client: str = "none"
    max_retries: int = 3
    timeout_s: float = 30.0
    phases: tuple[Phase, ...] = ()

    def shapes_at(
        self, t: float
    ) -> tuple[Distribution, Distribution, float, tuple[tuple[str, float], ...]]:
        """Prompt and output sizes, streaming share and key mix in force at ``t``."""
        prompt, output, stream, keys = (
            self.prompt_tokens,
            self.max_tokens,
            self.stream_share,
            self.keys,
        )
        for phase in self.phases:
            if phase.at_s > t:
                break
            prompt = phase.prompt_tokens or prompt
            output = phase.max_tokens or output
            stream = stream if phase.stream_share is None else phase.stream_share
            keys = keys if phase.keys is None else phase.keys
        return prompt, output, stream, keys

    def level_at(self, t: float) -> float:
        points = self.profile
        if t <= points[0][0]:
            return points[0][1]
        for (t0, v0), (t1, v1) in itertools.pairwise(points):
            if t0 <= t < t1:
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        return points[-1][1]

    def peak_level(self) -> float:
        return max(level for _, level in self.profile)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    cause: str
    onset_s: float
    duration_s: float
    description: str
    traffic: Traffic
    faults: tuple[FaultStep, ...] = ()
    source: str = ""
    precursors: tuple[tuple[float, str], ...] = ()

    def expected_at(self, t: float) -> str | None:
        """The cause a correct diagnosis names at ``t``; None before anything starts."""
        cause = None
        for at_s, precursor in self.precursors:
            if t >= at_s:
                cause = precursor
        return self.cause if t >= self.onset_s else cause


def _expect(table: dict[str, Any], key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise ScenarioError(f"{where}: '{key}' is required")
    value = table[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ScenarioError(f"{where}: '{key}' has the wrong type (bool)")
    if not isinstance(value, kinds):
        names = (
            kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
        )
        raise ScenarioError(f"{where}: '{key}' must be {names}, got {type(value).__name__}")
    return value


def _finite(value: float) -> bool:
    """math.isfinite that answers False for an integer too large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number(table: dict[str, Any], key: str, where: str, default: float | None = None,
            low: float = 0.0, high: float = math.inf) -> float:  # fmt: skip
    if key not in table and default is not None:
        return default
    raw = _expect(table, key, (int, float), where)
    if not _finite(raw):
        raise ScenarioError(f"{where}: '{key}' must be between {low:g} and {high:g}")
    value = float(raw)
    if not math.isfinite(value) or not low <= value <= high:
        raise ScenarioError(f"{where}: '{key}' must be between {low:g} and {high:g}, got {value:g}")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}"
        )


def _distribution(value: Any, where: str, default: Distribution) -> Distribution:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_TOKENS:
            raise ScenarioError(f"{where}: must be from 1 to {MAX_TOKENS}, got {value}")
        return Distribution("constant", value, low=value, high=value)
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: must be a whole number or a table with 'dist'")
    kind = value.get("dist")
    low = int(_number(value, "min", where, default=1, low=1, high=MAX_TOKENS))
    high = int(_number(value, "max", where, default=MAX_TOKENS, low=low, high=MAX_TOKENS))
    if kind == "constant":
        _check_keys(value, {"dist", "value"}, where)
        n = _number(value, "value", where, low=1)
        return Distribution("constant", n, low=int(n), high=int(n))
    if kind == "uniform":
        _check_keys(value, {"dist", "low", "high", "min", "max"}, where)
        a = _number(value, "low", where, low=1)
        b = _number(value, "high", where, low=a)
        return Distribution("uniform", a, b, max(low, int(a)), min(high, int(b)))
    if kind == "lognormal":
        _check_keys(value, {"dist", "median", "sigma", "min", "max"}, where)
        return Distribution(
            "lognormal", _number(value, "median", where, low=1),
            _number(value, "sigma", where, low=0, high=5), low, high,
        )  # fmt: skip
    raise ScenarioError(f"{where}: 'dist' must be constant, uniform or lognormal, got {kind!r}")


def _key_mix(value: Any, where: str) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(w, int | float) and not isinstance(w, bool) and w > 0 and _finite(w)
        for w in value.values()
    ):
        raise ScenarioError(f"{where}: 'keys' must map key names to positive weights")
    return tuple((str(k), float(w)) for k, w in value.items())


_ONE = Distribution("constant", 1)


def _phase(table: Any, where: str, previous: float) -> Phase:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: each [[traffic.phases]] entry must be a table")
    _check_keys(table, {"at_s", "prompt_tokens", "max_tokens", "stream_share", "keys"}, where)
    at_s = _number(table, "at_s", where)
    if at_s < previous:
        raise ScenarioError(f"{where}: phases must be in time order")
    return Phase(
        at_s=at_s,
        prompt_tokens=(
            _distribution(table["prompt_tokens"], f"{where}.prompt_tokens", _ONE)
            if "prompt_tokens" in table else None
        ),
        max_tokens=(
            _distribution(table["max_tokens"], f"{where}.max_tokens", _ONE)
            if "max_tokens" in table else None
        ),
        stream_share=(
            _number(table, "stream_share", where, high=1.0) if "stream_share" in table else None
        ),
        keys=_key_mix(table["keys"], where) if "keys" in table else None,
    )  # fmt: skip


def _traffic(table: Any, where: str) -> Traffic:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: [traffic] is required")
    _check_keys(
        table,
        {"arrival", "unit", "profile", "prompt_tokens", "max_tokens", "stream_share", "keys",
         "client", "max_retries", "timeout_s", "phases"},
        where,
    )  # fmt: skip
    raw_profile = _expect(table, "profile", list, where)
    profile: list[tuple[float, float]] = []
    for index, point in enumerate(raw_profile):
        ok = isinstance(point, list) and len(point) == 2
        ok = ok and all(isinstance(x, int | float) and not isinstance(x, bool) for x in point)
        if not ok or point[0] < 0 or point[1] < 0 or not all(_finite(x) for x in point):
            raise ScenarioError(
                f"{where}: profile[{index}] must be [seconds, level] with both >= 0, got {point!r}"
            )
        if profile and point[0] < profile[-1][0]:
            raise ScenarioError(f"{where}: profile times must not go back (profile[{index}])")
        profile.append((float(point[0]), float(point[1])))
    if not profile:
        raise ScenarioError(f"{where}: profile needs at least one [seconds, level] point")
    unit = table.get("unit", "capacity")
    if unit not in ("capacity", "rps"):
        raise ScenarioError(f"{where}: 'unit' must be 'capacity' or 'rps', got {unit!r}")
    arrival = table.get("arrival", "poisson")
    if arrival not in ("poisson", "constant"):
        raise ScenarioError(f"{where}: 'arrival' must be 'poisson' or 'constant', got {arrival!r}")
    client = table.get("client", "none")
    if client not in CLIENTS:
        raise ScenarioError(
            f"{where}: 'client' must be one of {', '.join(CLIENTS)}, got {client!r}"
        )
    raw_phases = table.get("phases", [])
    if not isinstance(raw_phases, list):
        raise ScenarioError(f"{where}: 'phases' must be an array of tables ([[traffic.phases]])")
    phases: list[Phase] = []
    for index, raw in enumerate(raw_phases):
        phases.append(_phase(raw, f"{where}.phases[{index}]", phases[-1].at_s if phases else 0.0))
    defaults = Traffic(profile=((0.0, 0.0),))
    return Traffic(
        profile=tuple(profile),
        unit=unit,
        arrival=arrival,
        prompt_tokens=_distribution(
            table.get("prompt_tokens"), f"{where}.prompt_tokens", defaults.prompt_tokens
        ),
        max_tokens=_distribution(
            table.get("max_tokens"), f"{where}.max_tokens", defaults.max_tokens
        ),
        stream_share=_number(table, "stream_share", where, default=0.0, high=1.0),
        keys=_key_mix(table.get("keys", {}), where),
        client=client,
        max_retries=int(_number(table, "max_retries", where, default=3, high=100)),
        timeout_s=_number(table, "timeout_s", where, default=30.0, low=0.1, high=3600),
        phases=tuple(phases),
    )


def _fault(table: Any, where: str) -> FaultStep:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: each [[faults]] entry must be a table")
    _check_keys(
        table, {"at_s", "replica", "set", "clear", "crash", "cpu_hog", "gateway_queue"}, where
    )
    at_s = _number(table, "at_s", where)
    replica = table.get("replica", "all")
    if not (replica == "all" or (isinstance(replica, int) and not isinstance(replica, bool)
                                 and replica >= 0)):  # fmt: skip
        raise ScenarioError(f"{where}: 'replica' must be an index (0, 1, ...) or \"all\"")
    kinds = ("set", "clear", "crash", "cpu_hog", "gateway_queue")
    actions = [name for name in kinds if name in table]
    if len(actions) != 1:
        raise ScenarioError(f"{where}: give exactly one of {', '.join(kinds)}")
    if "gateway_queue" in table:
        queue = table["gateway_queue"]
        if not isinstance(queue, dict) or not queue:
            raise ScenarioError(f"{where}: 'gateway_queue' must be a table of queue settings")
        _check_keys(queue, {"workers", "capacity", "timeout_s"}, f"{where}.gateway_queue")
        for key in queue:
            _number(queue, key, f"{where}.gateway_queue", low=0 if key == "capacity" else 0.001)
        return FaultStep(at_s, "all", gateway_queue=dict(queue))
    if "set" in table:
        settings = table["set"]
        if not isinstance(settings, dict) or not settings:
            raise ScenarioError(f"{where}: 'set' must be a table of engine settings")
        _check_keys(settings, set(ENGINE_SETTINGS), f"{where}.set")
        return FaultStep(at_s, replica, dict(settings))
    if "cpu_hog" in table:
        hog = table["cpu_hog"]
        if not isinstance(hog, dict):
            raise ScenarioError(f"{where}: 'cpu_hog' must be a table with workers and seconds")
        _check_keys(hog, {"workers", "seconds"}, f"{where}.cpu_hog")
        return FaultStep(
            at_s, replica,
            cpu_hog_workers=int(_number(hog, "workers", where, low=1, high=64)),
            cpu_hog_seconds=_number(hog, "seconds", where, low=0.1, high=3600),
        )  # fmt: skip
    flag = actions[0]
    if table[flag] is not True:
        raise ScenarioError(f"{where}: '{flag}' must be true")
    return FaultStep(at_s, replica, clear=flag == "clear", crash=flag == "crash")


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        table = tomllib.loads(text)
    except ValueError as error:
        # TOMLDecodeError, or an integer past Python's 4300-digit limit,
        # which tomllib lets through as a plain ValueError.
        raise ScenarioError(f"{source}: not valid TOML: {error}") from None
    _check_keys(
        table,
        {
            "name",
            "cause",
            "onset_s",
            "duration_s",
            "description",
            "traffic",
            "faults",
            "precursors",
        },
        source,
    )
    name = _expect(table, "name", str, source)
    cause = table.get("cause", "none")
    if cause not in CAUSES:
        raise ScenarioError(f"{source}: 'cause' must be one of {', '.join(CAUSES)}, got {cause!r}")
    duration = _number(table, "duration_s", source, low=0.1, high=86400)
    onset = _number(table, "onset_s", source, default=0.0, high=duration)
    faults = table.get("faults", [])
    if not isinstance(faults, list):
        raise ScenarioError(f"{source}: 'faults' must be an array of tables ([[faults]])")
    steps = tuple(_fault(f, f"{source}: faults[{i}]") for i, f in enumerate(faults))
    raw_precursors = table.get("precursors", [])
    if not isinstance(raw_precursors, list):
        raise ScenarioError(f"{source}: 'precursors' must be an array of tables")
    precursors = []
    for index, entry in enumerate(raw_precursors):
        where = f"{source}: precursors[{index}]"
        if not isinstance(entry, dict) or entry.get("cause") not in CAUSES[1:]:
            raise ScenarioError(f"{where} needs a cause, one of {', '.join(CAUSES[1:])}")
        _check_keys(entry, {"at_s", "cause"}, where)
        at_s = _number(entry, "at_s", where, high=onset)
        precursors.append((at_s, str(entry["cause"])))
    return Scenario(
        name=name,
        cause=cause,
        onset_s=onset,
        duration_s=duration,
        description=str(table.get("description", "")).strip(),
        traffic=_traffic(table.get("traffic"), f"{source}: traffic"),
        faults=tuple(sorted(steps, key=lambda s: s.at_s)),
        source=source,
        precursors=tuple(sorted(precursors)),
    )


def builtin_names() -> list[str]:
    folder = resources.files("inference.lab") / "scenarios"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a user's file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ScenarioError(f"cannot read {path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ScenarioError(f"{path}: not UTF-8 text") from None
        return parse_scenario(text, str(path))
    folder = resources.files("inference.lab") / "scenarios"
    candidate = folder / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise ScenarioError(
            f"no scenario named {name_or_path!r}; built-in: {', '.join(builtin_names())}, "
            "or give a path to a .toml file"
        )
    return parse_scenario(candidate.read_text(), f"{name_or_path}.toml")


def scaled(scenario: Scenario, time_scale: float) -> Scenario:
    """The same scenario compressed in time (tests, quick rehearsals)."""
    traffic = scenario.traffic
    return Scenario(
        name=scenario.name,
        cause=scenario.cause,
        onset_s=scenario.onset_s * time_scale,
        duration_s=scenario.duration_s * time_scale,
        description=scenario.description,
        traffic=Traffic(
            profile=tuple((t * time_scale, v) for t, v in traffic.profile),
            unit=traffic.unit,
            arrival=traffic.arrival,
            prompt_tokens=traffic.prompt_tokens,
            max_tokens=traffic.max_tokens,
            stream_share=traffic.stream_share,
            keys=traffic.keys,
            client=traffic.client,
            max_retries=traffic.max_retries,
            timeout_s=traffic.timeout_s,
            phases=tuple(
                Phase(
                    ph.at_s * time_scale, ph.prompt_tokens, ph.max_tokens, ph.stream_share, ph.keys
                )
                for ph in traffic.phases
            ),
        ),
        faults=tuple(
            FaultStep(
                f.at_s * time_scale,
                f.replica,
                f.settings,
                f.clear,
                f.crash,
                f.cpu_hog_workers,
                f.cpu_hog_seconds * time_scale,
                f.gateway_queue,
            )
            for f in scenario.faults
        ),
        source=scenario.source,
        precursors=tuple((at * time_scale, cause) for at, cause in scenario.precursors),
    )


LAB_KEY_MIX = {"interactive": 0.2, "standard": 0.6, "batch": 0.2}


def lab_traffic(
    name: str,
    profile: Sequence[tuple[float, float]],
    duration_s: float,
    *,
    cause: str = "none",
    onset_s: float = 0.0,
    keys: Mapping[str, float] | None = None,
    description: str = "",
) -> Scenario:
    """A scenario with the built-ins' traffic shape (sizes, streaming share, key mix)
    and its own arrival profile, in fractions of capacity: for drills, the demo
    and soaks, which script their own faults."""
    text = lab_traffic_text(
        name, profile, duration_s, cause=cause, onset_s=onset_s, keys=keys,
        description=description,
    )  # fmt: skip
    return parse_scenario(text, f"<{name}>")


def lab_traffic_text(
    name: str,
    profile: Sequence[tuple[float, float]],
    duration_s: float,
    *,
    cause: str = "none",
    onset_s: float = 0.0,
    keys: Mapping[str, float] | None = None,
    description: str = "",
) -> str:
    """``lab_traffic`` as scenario TOML, for `quell load --scenario FILE`."""
    mix = ", ".join(f"{k} = {v}" for k, v in (keys or LAB_KEY_MIX).items())
    points = ", ".join(f"[{t}, {level}]" for t, level in profile)
    text = f"""
name = "{name}"
cause = "{cause}"
onset_s = {onset_s}
duration_s = {duration_s}
description = "{description or name}"

[traffic]
arrival = "poisson"
unit = "capacity"
prompt_tokens = {{dist = "lognormal", median = 120, sigma = 0.5, min = 16, max = 2000}}
max_tokens = {{dist = "uniform", low = 16, high = 48}}
stream_share = 0.1
keys = {{{mix}}}
profile = [{points}]
"""
    return text
