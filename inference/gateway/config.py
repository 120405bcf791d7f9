"""The gateway's TOML configuration, checked before anything starts.

Every mistake becomes one ``ConfigError`` line that names the offending key
(``queue.workers``, ``keys[1].sha256``), because the person reading it is
usually fixing a config in a hurry during an incident.
"""

from __future__ import annotations

import hashlib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PRIORITIES = ("critical", "standard", "sheddable")
ADMIN_TOKEN_ENV = "QUELL_GATEWAY_ADMIN_TOKEN"  # noqa: S105 (a variable name, not a secret)
LIMIT_FIELDS = ("requests_per_second", "burst", "tokens_per_minute")
MAX_WORKERS = 100_000
MAX_CAPACITY = 10_000_000
MAX_RATE = 1e9
# The shortest timeout, interval or window an upstream may have. Below it a
# breaker's window buckets round to zero seconds (found by fuzzing the admin
# API with breaker_window_s = 5e-324: a ZeroDivisionError, a 500, for every
# request that touched the upstream).
MIN_SECONDS = 0.001


class ConfigError(ValueError):
    """A configuration the gateway refuses, with the key at fault."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1 << 20
    max_header_bytes: int = 16384
    # A client that opens a request and trickles its body ties up a
    # connection and a coroutine; past this it gets 408.
    body_timeout_s: float = 5.0
    state_file: Path | None = None
    access_log: Path | None = None
    access_log_max_bytes: int = 10 << 20
    access_log_backups: int = 3


@dataclass(frozen=True, slots=True)
class QueueConfig:
    workers: int = 32
    capacity: int = 256
    timeout_s: float = 5.0
    max_tokens_cap: int = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-key request and token rates; 0 means unlimited."""

    requests_per_second: float = 0.0
    burst: int = 0
    tokens_per_minute: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "requests_per_second": self.requests_per_second,
            "burst": self.burst,
            "tokens_per_minute": self.tokens_per_minute,
        }


@dataclass(frozen=True, slots=True)
class KeyConfig:
    name: str
    digest: bytes = field(repr=False)
    priority: str = "standard"
    # Only the limits the key sets itself; the rest follow [limits].
    overrides: Mapping[str, float | int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    connect_timeout_s: float = 1.0
    read_timeout_s: float = 30.0
    health_path: str = "/health"
    health_interval_s: float = 1.0
    breaker_consecutive_failures: int = 5
    breaker_error_ratio: float = 0.5
    breaker_window_s: float = 10.0
    breaker_min_requests: int = 20
    breaker_cooldown_s: float = 5.0


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    url: str
    settings: UpstreamSettings = field(default_factory=UpstreamSettings)
    # The name of an environment variable holding the upstream's bearer
    # key, so no secret has to sit in the file.
    api_key_env: str | None = None


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = False
    ttl_s: float = 60.0
    max_entries: int = 1024


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    admin_digest: bytes | None = field(default=None, repr=False)
    queue: QueueConfig = field(default_factory=QueueConfig)
    limits: Limits = field(default_factory=Limits)
    keys: tuple[KeyConfig, ...] = ()
    upstream_defaults: UpstreamSettings = field(default_factory=UpstreamSettings)
    upstreams: tuple[UpstreamConfig, ...] = ()
    cache: CacheConfig = field(default_factory=CacheConfig)


# -- value checks shared with the admin API and the state file ---------------


def whole(where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{where} must be from {low} to {high}, got {value}")
    return value


def number(where: str, value: Any, low: float, high: float, *, above_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    result = float(value)
    if not math.isfinite(result) or result < low or result > high or (above_low and result == low):
        bound = f"above {low:g}" if above_low else f"at least {low:g}"
        raise ConfigError(f"{where} must be {bound} and at most {high:g}, got {value!r}")
    return result


def text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
    return value


def flag(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    return value


def priority(where: str, value: Any) -> str:
    if value not in PRIORITIES:
        raise ConfigError(f"{where} must be one of {', '.join(PRIORITIES)}, got {value!r}")
    return str(value)


def name(where: str, value: Any) -> str:
    result = text(where, value)
    # Names go into headers, metric labels and log lines: printable only.
    if (
        any(c.isspace() or c in '/"\\' for c in result)
        or not result.isprintable()
        or len(result) > 64
    ):
        raise ConfigError(
            f"{where} must be at most 64 printable characters without spaces, slashes or "
            f"quotes, got {value!r}"
        )
    return result


def _request_line_safe(where: str, value: str) -> None:
    # The URL's host and path go into a request line and a Host header as they are: a space,
    # a control character or a non-ASCII one would make a broken request to every upstream.
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ConfigError(
            f"{where} must be printable ASCII without spaces (percent-encode the path, "
            f"write an international host name in its xn-- form), got {value!r}"
        )


def upstream_url(where: str, value: Any) -> str:
    raw = text(where, value)
    _request_line_safe(where, raw)
    try:
        parts = urlsplit(raw)
    except ValueError:
        # "http://[(": an unclosed IPv6 bracket (found by fuzzing the admin API).
        raise ConfigError(f"{where} is not a URL: {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} must be an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where} must not have a query or fragment, got {value!r}")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError:
        raise ConfigError(f"{where} has an invalid port: {value!r}") from None
    return raw.rstrip("/")


def limit_value(where: str, field_name: str, value: Any) -> float | int:
    if field_name == "requests_per_second":
        return number(where, value, 0.0, MAX_RATE)
    return whole(where, value, 0, int(MAX_RATE))


def queue_value(where: str, field_name: str, value: Any) -> float | int:
    if field_name == "workers":
        return whole(where, value, 1, MAX_WORKERS)
    if field_name == "capacity":
        return whole(where, value, 0, MAX_CAPACITY)
    if field_name == "timeout_s":
        return number(where, value, 0.0, 3600.0, above_low=True)
    return whole(where, value, 0, 10_000_000)


def cache_value(where: str, field_name: str, value: Any) -> float | int | bool:
    if field_name == "enabled":
        return flag(where, value)
    if field_name == "ttl_s":
        return number(where, value, 0.0, 86400.0 * 30, above_low=True)
    return whole(where, value, 1, 10_000_000)


# -- reading the file ---------------------------------------------------------


def _table(raw: Any, where: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{unknown[0]}; known keys in [{where.split('[')[0]}]: "
            f"{', '.join(known)}"
        )
    return raw


def _server(raw: dict[str, Any]) -> ServerConfig:
    known = tuple(ServerConfig.__dataclass_fields__)
    t = _table(raw, "server", known)
    d = ServerConfig()

    def path(key: str) -> Path | None:
        if key not in t:
            return None
        return Path(text(f"server.{key}", t[key]))

    return ServerConfig(
        host=text("server.host", t.get("host", d.host)),
        port=whole("server.port", t.get("port", d.port), 0, 65535),
        max_body_bytes=whole(
            "server.max_body_bytes", t.get("max_body_bytes", d.max_body_bytes), 1024, 1 << 30
        ),
        max_header_bytes=whole(
            "server.max_header_bytes", t.get("max_header_bytes", d.max_header_bytes), 256, 1 << 20
        ),
        body_timeout_s=number(
            "server.body_timeout_s",
            t.get("body_timeout_s", d.body_timeout_s),
            0.0,
            600.0,
            above_low=True,
        ),
        state_file=path("state_file"),
        access_log=path("access_log"),
        access_log_max_bytes=whole(
            "server.access_log_max_bytes",
            t.get("access_log_max_bytes", d.access_log_max_bytes),
            4096,
            1 << 40,
        ),
        access_log_backups=whole(
            "server.access_log_backups", t.get("access_log_backups", d.access_log_backups), 0, 100
        ),
    )


def _admin(raw: dict[str, Any], env: Mapping[str, str]) -> bytes | None:
    t = _table(raw, "admin", ("token_sha256",))
    from_env = env.get(ADMIN_TOKEN_ENV, "").strip()
    if from_env:
        return hashlib.sha256(from_env.encode()).digest()
    if "token_sha256" in t:
        return _digest("admin.token_sha256", t["token_sha256"])
    return None


def _digest(where: str, value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise ConfigError(
            f"{where} must be 64 hex digits (run `quell gateway hash-key`), got {value!r}"
        )
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ConfigError(f"{where} must be 64 hex digits, got {value!r}") from None


def _queue(raw: dict[str, Any]) -> QueueConfig:
    known = tuple(QueueConfig.__dataclass_fields__)
    t = _table(raw, "queue", known)
    d = QueueConfig()
    values = {k: queue_value(f"queue.{k}", k, t.get(k, getattr(d, k))) for k in known}
    return QueueConfig(**values)  # type: ignore[arg-type]


def _limits(raw: dict[str, Any]) -> Limits:
    t = _table(raw, "limits", LIMIT_FIELDS)
    values = {k: limit_value(f"limits.{k}", k, t.get(k, 0)) for k in LIMIT_FIELDS}
    return Limits(**values)  # type: ignore[arg-type]


def _keys(raw: Any) -> tuple[KeyConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("keys must be an array of tables ([[keys]])")
    keys: list[KeyConfig] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for index, entry in enumerate(raw):
        where = f"keys[{index}]"
        t = _table(entry, where, ("name", "sha256", "priority", *LIMIT_FIELDS))
        if "name" not in t:
            raise ConfigError(f"{where}.name is required")
        if "sha256" not in t:
            raise ConfigError(f"{where}.sha256 is required (run `quell gateway hash-key`)")
        key_name = name(f"{where}.name", t["name"])
        if key_name in names:
            raise ConfigError(f"{where}.name {key_name!r} is used by another key")
        digest = _digest(f"{where}.sha256", t["sha256"])
        if digest in digests:
            raise ConfigError(f"{where}.sha256 is the same key as another entry")
        names.add(key_name)
        digests.add(digest)
        overrides = {k: limit_value(f"{where}.{k}", k, t[k]) for k in LIMIT_FIELDS if k in t}
        keys.append(
            KeyConfig(
                name=key_name,
                digest=digest,
                priority=priority(f"{where}.priority", t.get("priority", "standard")),
                overrides=overrides,
            )
        )
    return tuple(keys)


def upstream_settings(
    raw: Mapping[str, Any], where: str, base: UpstreamSettings
) -> UpstreamSettings:
    def get(key: str) -> Any:
        return raw.get(key, getattr(base, key))

    health_path = text(f"{where}.health_path", get("health_path"))
    if not health_path.startswith("/"):
        raise ConfigError(f"{where}.health_path must start with '/', got {health_path!r}")
    _request_line_safe(f"{where}.health_path", health_path)

    def seconds(key: str, high: float) -> float:
        return number(f"{where}.{key}", get(key), MIN_SECONDS, high)

    return UpstreamSettings(
        connect_timeout_s=seconds("connect_timeout_s", 600.0),
        read_timeout_s=seconds("read_timeout_s", 3600.0),
        health_path=health_path,
        health_interval_s=seconds("health_interval_s", 3600.0),
        breaker_consecutive_failures=whole(
            f"{where}.breaker_consecutive_failures",
            get("breaker_consecutive_failures"),
            1,
            1_000_000,
        ),
        breaker_error_ratio=number(
            f"{where}.breaker_error_ratio", get("breaker_error_ratio"), 0.0, 1.0, above_low=True
        ),
        breaker_window_s=seconds("breaker_window_s", 86400.0),
        breaker_min_requests=whole(
            f"{where}.breaker_min_requests", get("breaker_min_requests"), 1, 1_000_000_000
        ),
        breaker_cooldown_s=seconds("breaker_cooldown_s", 86400.0),
    )


SETTINGS_FIELDS = tuple(UpstreamSettings.__dataclass_fields__)


def _upstreams(raw: Any, defaults: UpstreamSettings) -> tuple[UpstreamConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("upstreams must be an array of tables ([[upstreams]])")
    result: list[UpstreamConfig] = []
    names: set[str] = set()
    for index, entry in enumerate(raw):
        where = f"upstreams[{index}]"
        t = _table(entry, where, ("name", "url", "api_key_env", *SETTINGS_FIELDS))
        for required in ("name", "url"):
            if required not in t:
                raise ConfigError(f"{where}.{required} is required")
        upstream_name = name(f"{where}.name", t["name"])
        if upstream_name in names:
            raise ConfigError(f"{where}.name {upstream_name!r} is used by another upstream")
        names.add(upstream_name)
        api_key_env = t.get("api_key_env")
        if api_key_env is not None:
            text(f"{where}.api_key_env", api_key_env)
        result.append(
            UpstreamConfig(
                name=upstream_name,
                url=upstream_url(f"{where}.url", t["url"]),
                settings=upstream_settings(t, where, defaults),
                api_key_env=api_key_env,
            )
        )
    return tuple(result)


def _cache(raw: dict[str, Any]) -> CacheConfig:
    known = tuple(CacheConfig.__dataclass_fields__)
    t = _table(raw, "cache", known)
    d = CacheConfig()
    values = {k: cache_value(f"cache.{k}", k, t.get(k, getattr(d, k))) for k in known}
    return CacheConfig(**values)  # type: ignore[arg-type]


SECTIONS = (
    "server", "admin", "queue", "limits", "keys", "upstream_defaults", "upstreams", "cache",
)  # fmt: skip


def parse_config(raw: dict[str, Any], env: Mapping[str, str]) -> GatewayConfig:
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; known: {', '.join(SECTIONS)}")
    defaults_table = _table(raw.get("upstream_defaults", {}), "upstream_defaults", SETTINGS_FIELDS)
    defaults = upstream_settings(defaults_table, "upstream_defaults", UpstreamSettings())
    return GatewayConfig(
        server=_server(raw.get("server", {})),
        admin_digest=_admin(raw.get("admin", {}), env),
        queue=_queue(raw.get("queue", {})),
        limits=_limits(raw.get("limits", {})),
        keys=_keys(raw.get("keys", [])),
        upstream_defaults=defaults,
        upstreams=_upstreams(raw.get("upstreams", []), defaults),
        cache=_cache(raw.get("cache", {})),
    )


def load_config(path: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        # TOMLDecodeError, and what tomllib lets through as it is: text that
        # is not UTF-8, an integer past Python's 4300-digit limit.
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    try:
        config = parse_config(raw, os.environ if env is None else env)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    # Relative files live beside the config, so a config works from any
    # working directory (a supervisor's, a test's, a person's shell).
    server = config.server
    return replace(
        config,
        server=replace(
            server,
            state_file=_beside(path, server.state_file),
            access_log=_beside(path, server.access_log),
        ),
    )


def _beside(config_path: Path, path: Path | None) -> Path | None:
    if path is None or path.is_absolute():
        return path
    return config_path.parent / path
