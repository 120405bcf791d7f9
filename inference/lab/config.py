"""Lab settings: how many engines, how fast they are, the gateway's knobs, the client keys.

The defaults make a lab that a 2-core machine runs comfortably beside the
console and the traffic: two replicas of about 22 requests/s each for the
default scenarios' token sizes, a gateway with one worker per engine slot
and a works queue of 128.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from inference.engine.cost_model import CostModel

PRIORITIES = ("critical", "standard", "sheddable")


class LabConfigError(ValueError):
    """A lab config file that cannot be used, naming the key at fault."""


@dataclass(frozen=True)
class EngineSettings:
    slots: int = 16
    max_waiting: int = 64
    kv_tokens: int = 65536
    decode_step_ms: float = 20.0
    decode_ms_per_seq: float = 0.1
    prefill_ms_per_token: float = 0.02

    def flags(self) -> list[str]:
        return [
            "--slots", str(self.slots),
            "--max-waiting", str(self.max_waiting),
            "--kv-tokens", str(self.kv_tokens),
            "--decode-step-ms", str(self.decode_step_ms),
            "--decode-ms-per-seq", str(self.decode_ms_per_seq),
            "--prefill-ms-per-token", str(self.prefill_ms_per_token),
        ]  # fmt: skip

    def cost(self) -> CostModel:
        return CostModel(self.prefill_ms_per_token, self.decode_step_ms, self.decode_ms_per_seq)


@dataclass(frozen=True)
class GatewaySettings:
    workers: int = 32
    capacity: int = 128
    timeout_s: float = 10.0


@dataclass(frozen=True)
class KeySpec:
    name: str
    priority: str
    requests_per_second: float = 0.0
    burst: int = 0


DEFAULT_KEYS = (
    KeySpec("interactive", "critical"),
    KeySpec("standard", "standard"),
    KeySpec("batch", "sheddable"),
)


@dataclass(frozen=True)
class LabConfig:
    replicas: int = 2
    engine: EngineSettings = field(default_factory=EngineSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    keys: tuple[KeySpec, ...] = DEFAULT_KEYS


def _finite(value: float) -> bool:
    """math.isfinite that answers False for an integer too large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _key_limit(entry: dict[str, Any], key: str, where: str, whole: bool) -> Any:
    value = entry.get(key, 0)
    if (
        isinstance(value, bool)
        or not isinstance(value, int if whole else int | float)
        or not _finite(value)
        or value < 0
    ):
        kind = "a whole number" if whole else "a number"
        raise LabConfigError(f"{where}.{key} must be {kind} >= 0, got {value!r}")
    return value


def _section(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise LabConfigError(f"{where} must be a table")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise LabConfigError(f"{where}: unknown key '{key}'; known: {', '.join(known)}")
        default = getattr(cls(), key)
        if isinstance(default, bool) or isinstance(value, bool):
            raise LabConfigError(f"{where}.{key} must be a number")
        if isinstance(default, int) and not isinstance(value, int):
            raise LabConfigError(f"{where}.{key} must be a whole number")
        if not isinstance(value, int | float) or not _finite(value) or value < 0:
            raise LabConfigError(f"{where}.{key} must be a finite number >= 0")
        values[key] = value
    section = cls(**values)
    for key in ("slots", "workers", "kv_tokens"):
        if getattr(section, key, 1) < 1:
            raise LabConfigError(f"{where}.{key} must be at least 1")
    return section


def parse_lab_config(text: str, source: str) -> LabConfig:
    try:
        table = tomllib.loads(text)
    except ValueError as error:
        # TOMLDecodeError, or an integer past Python's 4300-digit limit,
        # which tomllib lets through as a plain ValueError.
        raise LabConfigError(f"{source}: not valid TOML: {error}") from None
    unknown = sorted(set(table) - {"replicas", "engine", "gateway", "keys"})
    if unknown:
        raise LabConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    replicas = table.get("replicas", 2)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 32:
        raise LabConfigError(f"{source}: replicas must be a whole number from 1 to 32")
    keys: tuple[KeySpec, ...] = DEFAULT_KEYS
    if "keys" in table:
        raw = table["keys"]
        if not isinstance(raw, list) or not raw:
            raise LabConfigError(f"{source}: keys must be a non-empty array of [[keys]] tables")
        parsed = []
        for index, entry in enumerate(raw):
            where = f"{source}: keys[{index}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise LabConfigError(f"{where} needs a name")
            if entry.get("priority", "standard") not in PRIORITIES:
                raise LabConfigError(f"{where}.priority must be one of {', '.join(PRIORITIES)}")
            extra = sorted(set(entry) - {"name", "priority", "requests_per_second", "burst"})
            if extra:
                raise LabConfigError(f"{where}: unknown key(s) {', '.join(extra)}")
            parsed.append(
                KeySpec(
                    entry["name"],
                    entry.get("priority", "standard"),
                    float(_key_limit(entry, "requests_per_second", where, whole=False)),
                    int(_key_limit(entry, "burst", where, whole=True)),
                )
            )
        keys = tuple(parsed)
    return LabConfig(
        replicas=replicas,
        engine=_section(EngineSettings, table.get("engine", {}), f"{source}: [engine]"),
        gateway=_section(GatewaySettings, table.get("gateway", {}), f"{source}: [gateway]"),
        keys=keys,
    )


def load_lab_config(path: Path | None) -> LabConfig:
    if path is None:
        return LabConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise LabConfigError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise LabConfigError(f"{path}: not UTF-8 text") from None
    return parse_lab_config(text, str(path))
