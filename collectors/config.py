"""What `quell collect` watches and where it keeps it: a TOML file, or the running lab.

    [store]
    path = "/var/lib/quell/quell.db"   # relative paths start at the file's folder
    raw_retention_h = 48
    rollup_retention_d = 30

    [daemon]
    interval_s = 1.0
    metrics_port = 9469                # 0: a free port, shown in the listening line

    [[targets]]
    name = "vllm"
    url = "http://127.0.0.1:8000/metrics"

Every key is checked: an unknown key or a bad value is refused with one line
that names it, before anything starts and on every reload, so a typo never
silently turns a source off.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collectors.log_lines import FORMATS, LogRule

TARGET_KINDS = ("http", "redis", "rabbitmq", "prometheus")
MAX_NAME = 100


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key, in one line."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path
    raw_retention_h: float = 48.0
    rollup_retention_d: float = 30.0
    # 0: no cap. Past the cap writes fail as "database or disk is full" and
    # the daemon buffers, as it would on a full disk.
    max_size_mb: float = 0.0
    # Samples held in memory while the store cannot be written; the oldest
    # ticks go first past this. ~150 bytes each.
    buffer_samples: int = 100_000


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    interval_s: float = 1.0
    # Per-target limit for one collection; must leave room in the tick.
    timeout_s: float = 0.8
    metrics: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0


@dataclass(frozen=True, slots=True)
class TargetConfig:
    name: str
    url: str
    preset: str | None = None
    kind: str = "http"
    # The queue this target serves behind (an engine behind its gateway):
    # diagnosis reads it as one of that queue's replicas, not as a queue.
    replica_of: str | None = None
    # kind "prometheus": the series selector read back from the server at url.
    selector: str | None = None


@dataclass(frozen=True, slots=True)
class HostConfig:
    enabled: bool = True
    # Process names or pids whose CPU, memory, threads and descriptors to report.
    watch: tuple[str | int, ...] = ()
    # Listening ports whose accept queues to report; None: every port.
    listen_ports: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class GpuConfig:
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class AlertPlaybook:
    """An Alertmanager alert (by its labels) and the playbook it starts."""

    labels: Mapping[str, str]
    playbook: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlaybooksConfig:
    """What the daemon may do about a verdict; plain data, read by the playbooks."""

    directories: tuple[Path, ...] = ()
    read_only: bool = False
    # Start playbooks that carry an ``auto`` section when their verdicts open.
    auto: bool = True
    # The admin API of the watched queue's gateway; the lab's when unset.
    gateway_url: str | None = None
    gateway_admin_token_env: str = "QUELL_GATEWAY_ADMIN_TOKEN"  # noqa: S105 - a name
    # The Alertmanager receiver (POST /alertmanager) is on only when this
    # variable holds the shared secret.
    webhook_secret_env: str = "QUELL_WEBHOOK_SECRET"  # noqa: S105 - a name
    alerts: tuple[AlertPlaybook, ...] = ()


@dataclass(frozen=True, slots=True)
class LogConfig:
    path: Path
    name: str
    format: str = "auto"
    rules: tuple[LogRule, ...] = ()
    from_start: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    store: StoreConfig
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    targets: tuple[TargetConfig, ...] = ()
    host: HostConfig = field(default_factory=HostConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    logs: tuple[LogConfig, ...] = ()
    playbooks: PlaybooksConfig = field(default_factory=PlaybooksConfig)
    # Where it came from, for messages: a file path or "the lab in DIR".
    origin: str = ""

    def source_names(self) -> list[str]:
        names = [t.name for t in self.targets]
        if self.host.enabled:
            names.append("host")
        if self.gpu.enabled:
            names.append("gpu")
        return names + [log.name for log in self.logs]


# -- reading a file -----------------------------------------------------------


def load_config(path: Path | str) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as problem:
        raise ConfigError(f"cannot read {path}: {problem.strerror or problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except ValueError as problem:
        # TOMLDecodeError, or an integer past Python's 4300-digit limit,
        # which tomllib lets through as a plain ValueError.
        raise ConfigError(f"{path}: not valid TOML: {problem}") from None
    return parse_config(data, base=path.resolve().parent, origin=str(path))


def parse_config(data: Mapping[str, Any], *, base: Path, origin: str) -> Config:
    reader = _Reader(origin, base)
    return reader.config(data)


class _Reader:
    def __init__(self, origin: str, base: Path) -> None:
        self.origin = origin
        self.base = base

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {key}: {message}")

    def table(self, value: Any, key: str, known: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            return self._not_table(key)
        for name in value:
            if name not in known:
                raise self.fail(
                    f"{key}.{name}" if key else name,
                    f"unknown key; known keys here: {', '.join(known)}",
                )
        return value

    def _not_table(self, key: str) -> Mapping[str, Any]:
        raise self.fail(key, "must be a table")

    def number(
        self,
        table: Mapping[str, Any],
        key: str,
        where: str,
        default: float,
        low: float,
        high: float,
        *,
        low_open: bool = False,
    ) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{where}.{key}", f"must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            number = math.inf
        too_low = number <= low if low_open else number < low
        if not math.isfinite(number) or too_low or number > high:
            bound = f"above {low:g}" if low_open else f"at least {low:g}"
            raise self.fail(f"{where}.{key}", f"must be {bound} and at most {high:g}, got {value}")
        return number

    def integer(
        self, table: Mapping[str, Any], key: str, where: str, default: int, low: int, high: int
    ) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{where}.{key}", f"must be a whole number, got {value!r}")
        if not low <= value <= high:
            raise self.fail(f"{where}.{key}", f"must be from {low} to {high}, got {value}")
        return value

    def boolean(self, table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{where}.{key}", f"must be true or false, got {value!r}")
        return value

    def text(
        self, table: Mapping[str, Any], key: str, where: str, default: str | None = None
    ) -> str:
        value = table.get(key, default)
        if value is None:
            raise self.fail(f"{where}.{key}", "is required")
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
        return value

    def path(self, table: Mapping[str, Any], key: str, where: str) -> Path:
        text = self.text(table, key, where)
        try:
            path = Path(text).expanduser()
        except RuntimeError:  # "~someone/..." for a user this machine does not have
            raise self.fail(f"{where}.{key}", f"no home directory for {text!r}") from None
        return path if path.is_absolute() else self.base / path

    def name(self, table: Mapping[str, Any], where: str, default: str | None = None) -> str:
        name = self.text(table, "name", where, default)
        if len(name) > MAX_NAME or not name.isprintable():
            raise self.fail(f"{where}.name", f"must be printable and at most {MAX_NAME} characters")
        return name

    def playbooks(self, value: Any) -> PlaybooksConfig:
        known = ("directories", "read_only", "auto", "gateway_url", "gateway_admin_token_env",
                 "webhook_secret_env", "alerts")  # fmt: skip
        table = self.table(value, "playbooks", known)
        directories = []
        for index, item in enumerate(self.array(table.get("directories", []), "playbooks")):
            directories.append(self.path({"d": item}, "d", f"playbooks.directories[{index}]"))
        alerts = []
        for index, entry in enumerate(self.array(table.get("alerts", []), "playbooks.alerts")):
            where = f"playbooks.alerts[{index}]"
            alert = self.table(entry, where, ("labels", "playbook", "params"))
            labels = alert.get("labels", {})
            if not isinstance(labels, Mapping):
                labels = self._not_table(f"{where}.labels")
            if not labels or not all(isinstance(v, str) for v in labels.values()):
                raise self.fail(f"{where}.labels", "must map label names to text, e.g. "
                                "{ alertname = \"QuellQueueFilling\" }")  # fmt: skip
            params = alert.get("params", {})
            if not isinstance(params, Mapping):
                raise self.fail(f"{where}.params", "must be a table")
            alerts.append(AlertPlaybook(dict(labels), self.text(alert, "playbook", where),
                                        dict(params)))  # fmt: skip
        url = table.get("gateway_url")
        if url is not None:
            url = self.text(table, "gateway_url", "playbooks")
            if not url.startswith(("http://", "https://")):
                raise self.fail("playbooks.gateway_url", "must start with http:// or https://")
        return PlaybooksConfig(
            directories=tuple(directories),
            read_only=self.boolean(table, "read_only", "playbooks", False),
            auto=self.boolean(table, "auto", "playbooks", True),
            gateway_url=url,
            gateway_admin_token_env=self.text(
                table, "gateway_admin_token_env", "playbooks", "QUELL_GATEWAY_ADMIN_TOKEN"
            ),
            webhook_secret_env=self.text(
                table, "webhook_secret_env", "playbooks", "QUELL_WEBHOOK_SECRET"
            ),
            alerts=tuple(alerts),
        )

    def array(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(key, "must be an array")
        return value

    # -- sections -------------------------------------------------------------

    def config(self, data: Mapping[str, Any]) -> Config:
        top = self.table(
            data, "", ("store", "daemon", "targets", "host", "gpu", "logs", "playbooks")
        )
        if "store" not in top:
            raise self.fail("store.path", "is required (where samples are kept)")
        config = Config(
            store=self.store(top["store"]),
            daemon=self.daemon(top.get("daemon", {})),
            targets=tuple(
                self.target(entry, f"targets[{index}]")
                for index, entry in enumerate(self.array(top.get("targets", []), "targets"))
            ),
            host=self.host(top.get("host", {})),
            gpu=self.gpu(top.get("gpu", {})),
            logs=tuple(
                self.log(entry, f"logs[{index}]")
                for index, entry in enumerate(self.array(top.get("logs", []), "logs"))
            ),
            playbooks=self.playbooks(top.get("playbooks", {})),
            origin=self.origin,
        )
        check_names(config)
        return config

    def store(self, value: Any) -> StoreConfig:
        known = ("path", "raw_retention_h", "rollup_retention_d", "max_size_mb", "buffer_samples")
        table = self.table(value, "store", known)
        hours = self.number(table, "raw_retention_h", "store", 48, 0, 24 * 3650, low_open=True)
        days = self.number(table, "rollup_retention_d", "store", 30, 0, 3650, low_open=True)
        return StoreConfig(
            path=self.path(table, "path", "store"),
            raw_retention_h=hours,
            rollup_retention_d=days,
            max_size_mb=self.number(table, "max_size_mb", "store", 0, 0, 1 << 30),
            buffer_samples=self.integer(table, "buffer_samples", "store", 100_000, 1000, 10**7),
        )

    def daemon(self, value: Any) -> DaemonConfig:
        known = ("interval_s", "timeout_s", "metrics", "metrics_host", "metrics_port")
        table = self.table(value, "daemon", known)
        interval = self.number(table, "interval_s", "daemon", 1.0, 0.05, 3600)
        timeout = self.number(
            table, "timeout_s", "daemon", round(0.8 * interval, 3), 0, 3600, low_open=True
        )
        if timeout >= interval:
            raise self.fail(
                "daemon.timeout_s",
                f"must be less than daemon.interval_s ({interval:g}), so one slow target "
                "cannot hold up the tick",
            )
        return DaemonConfig(
            interval_s=interval,
            timeout_s=timeout,
            metrics=self.boolean(table, "metrics", "daemon", True),
            metrics_host=self.text(table, "metrics_host", "daemon", "127.0.0.1"),
            metrics_port=self.integer(table, "metrics_port", "daemon", 0, 0, 65535),
        )

    def target(self, value: Any, where: str) -> TargetConfig:
        table = self.table(
            value, where, ("name", "url", "preset", "kind", "replica_of", "selector")
        )
        name = self.name(table, where)
        url = self.text(table, "url", where)
        kind = self.text(table, "kind", where, "http")
        if kind not in TARGET_KINDS:
            raise self.fail(
                f"{where}.kind", f"must be one of {', '.join(TARGET_KINDS)}, got {kind!r}"
            )
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            scheme = ""
        allowed = {
            "http": ("http", "https"),
            "redis": ("redis",),
            "rabbitmq": ("rabbitmq+http", "rabbitmq+https", "http", "https"),
            "prometheus": ("http", "https"),
        }[kind]
        if scheme not in allowed:
            schemes = ", ".join(f"{s}://" for s in allowed)
            raise self.fail(f"{where}.url", f"a {kind} target's URL starts with {schemes}")
        preset = table.get("preset")
        if preset is not None and (not isinstance(preset, str) or not preset):
            raise self.fail(f"{where}.preset", f"must be a preset name, got {preset!r}")
        replica_of = table.get("replica_of")
        if replica_of is not None and (not isinstance(replica_of, str) or not replica_of):
            raise self.fail(f"{where}.replica_of", "must name another target")
        selector = table.get("selector")
        if (kind == "prometheus") != (selector is not None):
            raise self.fail(
                f"{where}.selector",
                "a prometheus target needs a series selector such as '{job=\"gateway\"}', "
                "and only a prometheus target takes one",
            )
        if selector is not None and (not isinstance(selector, str) or not selector.strip()):
            raise self.fail(f"{where}.selector", f"must be a series selector, got {selector!r}")
        return TargetConfig(name=name, url=url, preset=preset, kind=kind, replica_of=replica_of,
                            selector=selector)  # fmt: skip

    def host(self, value: Any) -> HostConfig:
        table = self.table(value, "host", ("enabled", "watch", "listen_ports"))
        watch: list[str | int] = []
        for index, item in enumerate(self.array(table.get("watch", []), "host.watch")):
            if isinstance(item, bool) or not isinstance(item, str | int) or item in ("", 0):
                raise self.fail(
                    f"host.watch[{index}]", f"must be a process name or a pid, got {item!r}"
                )
            watch.append(item)
        ports: tuple[int, ...] | None = None
        if "listen_ports" in table:
            raw = self.array(table["listen_ports"], "host.listen_ports")
            for index, port in enumerate(raw):
                if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                    raise self.fail(f"host.listen_ports[{index}]", f"must be a port, got {port!r}")
            ports = tuple(raw)
        return HostConfig(
            enabled=self.boolean(table, "enabled", "host", True),
            watch=tuple(watch),
            listen_ports=ports,
        )

    def gpu(self, value: Any) -> GpuConfig:
        table = self.table(value, "gpu", ("enabled",))
        return GpuConfig(enabled=self.boolean(table, "enabled", "gpu", True))

    def log(self, value: Any, where: str) -> LogConfig:
        table = self.table(value, where, ("path", "name", "format", "rules", "from_start"))
        path = self.path(table, "path", where)
        fmt = self.text(table, "format", where, "auto")
        if fmt not in FORMATS:
            raise self.fail(f"{where}.format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
        rules: list[LogRule] = []
        for index, entry in enumerate(self.array(table.get("rules", []), f"{where}.rules")):
            key = f"{where}.rules[{index}]"
            rule = self.table(entry, key, ("name", "pattern", "kind", "severity"))
            try:
                rules.append(LogRule.from_config(rule))
            except ValueError as problem:
                raise self.fail(key, str(problem)) from None
        return LogConfig(
            path=path,
            name=self.name(table, where, str(path)),
            format=fmt,
            rules=tuple(rules),
            from_start=self.boolean(table, "from_start", where, False),
        )


def check_names(config: Config) -> None:
    """Every source needs its own name: it is the ``target`` label of what it reports."""
    seen: set[str] = set()
    for name in config.source_names():
        if name in seen:
            reserved = (
                " ('host' and 'gpu' name the built-in sources)" if name in ("host", "gpu") else ""
            )
            raise ConfigError(f"{config.origin}: two sources are named {name!r}{reserved}")
        seen.add(name)
    queues = {t.name for t in config.targets if t.replica_of is None}
    for target in config.targets:
        if target.replica_of is not None and target.replica_of not in queues:
            raise ConfigError(
                f"{config.origin}: target {target.name!r} is a replica_of {target.replica_of!r}, "
                "which is not a target of its own"
            )


# -- the lab ------------------------------------------------------------------


def lab_config(state: Mapping[str, Any], *, interval_s: float = 1.0) -> Config:
    """Watch the running lab from its state file (``quell lab status --json``).

    The gateway and every engine are targets, the gateway's access log is a
    log source, and the lab's processes are watched on the host. The store is
    ``<lab dir>/quell.db``.
    """
    try:
        lab_dir = Path(state["lab_dir"])
        gateway = state["gateway"]
        engines = list(state["engines"])
        targets = [TargetConfig("gateway", _metrics_url(gateway["url"]), "quell-gateway")]
        targets += [
            TargetConfig(
                str(engine["name"]), _metrics_url(engine["url"]), "vllm", "http", "gateway"
            )
            for engine in engines
            if engine.get("url")
        ]
        pids = [state.get("supervisor_pid"), gateway.get("pid"), *(e.get("pid") for e in engines)]
        access_log = Path(gateway["access_log"])
    except (KeyError, TypeError) as problem:
        raise ConfigError(
            f"the lab state lacks {problem}; is the lab from another quell?"
        ) from None
    config = Config(
        store=StoreConfig(path=lab_dir / "quell.db"),
        daemon=DaemonConfig(interval_s=interval_s, timeout_s=round(0.8 * interval_s, 3)),
        targets=tuple(targets),
        host=HostConfig(watch=tuple(int(pid) for pid in pids if pid)),
        logs=(LogConfig(access_log, "gateway-access", "json"),),
        origin=f"the lab in {lab_dir}",
    )
    check_names(config)
    return config


def _metrics_url(base: str) -> str:
    return base.rstrip("/") + "/metrics"
