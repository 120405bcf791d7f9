"""`quell collect`: the headless loop that feeds the store.

Every tick (1 s by default, on whole multiples of the interval) every source
is collected at once, each within the per-target timeout, so a dead or slow
target costs the others nothing: it is reported (status, error count,
latency) and the tick goes on. What came back is written to the store in
one transaction, re-exported on /metrics, and then the per-tick hooks run.

A write that fails (disk full, read-only file, a corrupt page) does not stop
the daemon: the tick stays in a bounded in-memory buffer, written first as
soon as the store takes writes again; the log and /status say so, and
``quell_daemon_buffered_samples`` shows how much is waiting.

Signals: SIGTERM and SIGINT stop ticking, write what is buffered, close the
store and exit 0; SIGHUP reloads the config before the next tick (a bad one
is refused with a log line and the running one stays). Watching the lab, the lab's state file is
also re-read whenever it changes, so replicas added or removed are followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from collectors.config import Config, ConfigError, TargetConfig
from collectors.exporter import Exporter, MetricsServer, PostRoute
from collectors.gpu import GpuCollector
from collectors.host import HostCollector
from collectors.http import HttpClient, make_client, redact
from collectors.logs import LogCollector
from collectors.model import CollectResult, Event, Sample, error
from collectors.sources import SourceError, open_source
from collectors.store import EXPIRE_CHUNK_ROWS, Retention, Store, StoreError

log = logging.getLogger("quell.collect")

# Diagnosis (and anything else that must look at every tick) plugs in here:
# each hook in ``Daemon.on_tick`` is awaited after the tick is written, with
# the store and the tick's time; ``Daemon.last_samples`` holds that tick's
# samples by source, for a hook that would rather not read them back. A hook
# that raises is logged and counted, never fatal.
TickHook = Callable[[Store, float], Awaitable[None]]
ConfigLoader = Callable[[], Config]

# A catch-up write after a store outage holds at most this many samples, so
# one transaction never holds up a tick for long.
FLUSH_MAX_SAMPLES = 50_000
EXPIRE_EVERY_S = 60.0
# Roll-ups normally advance one minute a minute; catching up after a long
# store outage goes this many minutes a tick, so no tick waits long for it.
ROLLUP_MINUTES_PER_TICK = 5
# How long a stopping daemon keeps trying to write what it buffered.
STOP_FLUSH_S = 1.0
# A failure that repeats every tick is logged again this often, not each time.
REPEAT_LOG_S = 60.0
# The HTTP client's own limits are only a backstop: the per-target timeout
# cuts a collection short first.
CLIENT_TIMEOUT_S = 30.0


@dataclass(eq=False)
class Source:
    name: str
    kind: str
    spec: Hashable
    describe: str
    collector: Any
    up: bool | None = None
    status: str = "not collected yet"
    errors: int = 0
    latency_s: float = 0.0
    samples: int = 0
    last_ok: float | None = None

    async def close(self) -> None:
        closing = getattr(self.collector, "close", None)
        if closing is None:
            return
        result = closing()
        if inspect.isawaitable(result):
            await result


def build_sources(
    config: Config, client: HttpClient, keep: Mapping[Hashable, Source] | None = None
) -> list[Source]:
    """The sources ``config`` names, reusing those in ``keep`` that did not change.

    Reusing keeps a source's memory (previous counters, a log's offset), so
    a reload does not blank rates for a tick. ConfigError when a target's
    URL or preset cannot be used; nothing is left open then.
    """
    keep = keep or {}
    built: list[Source] = []
    fresh: list[Source] = []

    def reused(spec: Hashable) -> bool:
        if spec in keep:
            built.append(keep[spec])
            return True
        return False

    def new(source: Source) -> None:
        built.append(source)
        fresh.append(source)

    try:
        for target in config.targets:
            spec: Hashable = (
                "target",
                target.name,
                target.url,
                target.preset,
                target.kind,
                target.selector,
            )
            if not reused(spec):
                new(_target(config, client, target, spec))
        host = config.host
        spec = ("host", host.watch, host.listen_ports)
        if host.enabled and not reused(spec):
            watching = f", watching {', '.join(map(str, host.watch))}" if host.watch else ""
            collector = HostCollector(processes=host.watch, listen_ports=host.listen_ports)
            new(Source("host", "host", spec, "psutil" + watching, collector))
        if config.gpu.enabled and not reused(("gpu",)):
            new(Source("gpu", "gpu", ("gpu",), "NVML", GpuCollector()))
        for entry in config.logs:
            spec = ("log", entry.name, entry.path, entry.format, entry.rules, entry.from_start)
            if not reused(spec):
                tailer = LogCollector(
                    entry.path,
                    name=entry.name,
                    fmt=entry.format,
                    rules=entry.rules,
                    from_start=entry.from_start,
                )
                new(Source(entry.name, "log", spec, f"log {entry.path} ({entry.format})", tailer))
    except BaseException:
        for source in fresh:
            closing = getattr(source.collector, "close", None)
            if closing is not None and not inspect.iscoroutinefunction(closing):
                with contextlib.suppress(Exception):
                    closing()
        raise
    return built


def _target(config: Config, client: HttpClient, target: TargetConfig, spec: Hashable) -> Source:
    preset = target.preset
    if target.kind == "rabbitmq" and preset is None and target.url.startswith("http"):
        preset = "rabbitmq"
    if target.kind == "prometheus":
        from collectors.prometheus import PrometheusError, PrometheusTarget

        try:
            reader = PrometheusTarget(target.url, target.selector or "", client, preset=preset,
                                      name=target.name)  # fmt: skip
        except PrometheusError as problem:
            raise ConfigError(f"{config.origin}: target {target.name!r}: {problem}") from None
        shown = f"prometheus {redact(target.url)} {target.selector}"
        return Source(target.name, target.kind, spec, shown, reader)
    try:
        collector = open_source(
            target.url, client, preset=preset, name=target.name, timeout_s=config.daemon.timeout_s
        )
    except (SourceError, ValueError) as problem:
        raise ConfigError(f"{config.origin}: target {target.name!r}: {problem}") from None
    shown = f"{target.kind} {redact(target.url)}" + (f" (preset {preset})" if preset else "")
    return Source(target.name, target.kind, spec, shown, collector)


class PendingTicks:
    """Ticks not yet in the store, oldest first, bounded by a sample count."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.samples = 0
        self.dropped = 0
        self._batches: deque[tuple[float, list[Sample], list[Event]]] = deque()

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, tick: float, samples: list[Sample], events: list[Event]) -> None:
        if not samples and not events:
            return
        self._batches.append((tick, samples, events))
        self.samples += len(samples)
        # Past the bound the oldest ticks go: the recent past matters most
        # to whoever is on call when the disk frees up.
        while self.samples > self.limit and len(self._batches) > 1:
            _, old, _ = self._batches.popleft()
            self.samples -= len(old)
            self.dropped += len(old)

    def peek(self, max_samples: int) -> tuple[int, list[Sample], list[Event]]:
        """The oldest ticks merged into one write: (how many ticks, samples, events)."""
        count = 0
        samples: list[Sample] = []
        events: list[Event] = []
        for _, tick_samples, tick_events in self._batches:
            if count and len(samples) + len(tick_samples) > max_samples:
                break
            samples.extend(tick_samples)
            events.extend(tick_events)
            count += 1
        return count, samples, events

    def pop(self, count: int) -> float | None:
        """Forget the ``count`` oldest ticks (written); the time of the newest of them."""
        newest = None
        for _ in range(count):
            newest, old, _ = self._batches.popleft()
            self.samples -= len(old)
        return newest


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        reload: ConfigLoader | None = None,
        watch: Path | None = None,
        on_tick: Sequence[TickHook] = (),
    ) -> None:
        """``reload`` re-reads the config on SIGHUP; ``watch``: reload when this file changes."""
        self.config = config
        self.on_tick: list[TickHook] = list(on_tick)
        # POST routes served beside /metrics (the Alertmanager receiver).
        self.routes: dict[str, PostRoute] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last_samples: dict[str, list[Sample]] = {}
        self.exporter = Exporter()
        self.metrics_url: str | None = None
        self.ticks = 0
        self.samples_written = 0
        self._reload = reload
        self._watch = watch
        self._watch_stamp: int | None = None
        self._reload_wanted = False
        self._stop = asyncio.Event()
        self._sources: list[Source] = []
        self._pending = PendingTicks(config.store.buffer_samples)
        self._dropped_reported = 0
        self._store: Store | None = None
        self._client: HttpClient | None = None
        self._server: MetricsServer | None = None
        self._store_problem: str | None = None
        self._newest_written: float | None = None
        self._logged_at: dict[str, float] = {}
        self._next_expire = 0.0
        self._started = time.time()
        self._status: dict[str, Any] = {}

    # -- control --------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_wanted = True

    def status(self) -> dict[str, Any]:
        """The last tick's picture: what /status answers (safe to call from any thread)."""
        return self._status

    # -- running --------------------------------------------------------------

    async def run(
        self, *, ready: Callable[[str], None] | None = None, install_signals: bool = True
    ) -> int:
        """Run until stopped; 0 after a clean stop, 1 when the store or port cannot be had.

        ConfigError when a target cannot be built from the config.
        """
        config = self.config
        self.loop = asyncio.get_running_loop()
        self._client = make_client(CLIENT_TIMEOUT_S, CLIENT_TIMEOUT_S)
        try:
            self._sources = build_sources(config, self._client)
        except BaseException:
            await self._client.aclose()
            raise
        try:
            self._store = await Store.open(
                config.store.path, retention=_retention(config), max_bytes=_max_bytes(config)
            )
        except StoreError as problem:
            log.error("cannot open the store: %s", problem)
            await self._close_sources()
            return 1
        if config.daemon.metrics:
            try:
                self._server = MetricsServer(
                    config.daemon.metrics_host,
                    config.daemon.metrics_port,
                    self.exporter.registry,
                    self.status,
                    self.routes,
                )
            except OSError as problem:
                where = f"{config.daemon.metrics_host}:{config.daemon.metrics_port}"
                log.error("cannot serve /metrics on %s: %s", where, problem.strerror or problem)
                await self._close_sources()
                await self._store.close()
                return 1
            self._server.start()
            self.metrics_url = self._server.url
        self._announce()
        self._publish_status(time.time(), 0.0)
        handlers = self._install_signals() if install_signals else []
        if self._watch is not None:
            self._watch_stamp = _stamp(self._watch)
        message = (
            f"quell collect listening on {self.metrics_url}"
            if self.metrics_url
            else "quell collect running (metrics off)"
        )
        (ready or _print_line)(message)
        try:
            await self._loop()
        finally:
            await self._shutdown()
            loop = asyncio.get_running_loop()
            for sig in handlers:
                loop.remove_signal_handler(sig)
        return 0

    def _install_signals(self) -> list[signal.Signals]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig, action in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            try:
                loop.add_signal_handler(sig, action)
            except (NotImplementedError, RuntimeError):
                continue
            installed.append(sig)
        return installed

    def _announce(self) -> None:
        config = self.config
        log.info(
            "store %s (raw samples kept %g h, roll-ups %g d); config: %s",
            config.store.path, config.store.raw_retention_h, config.store.rollup_retention_d,
            config.origin,
        )  # fmt: skip
        log.info(
            "every %g s, %g s per target, %d sources",
            config.daemon.interval_s, config.daemon.timeout_s, len(self._sources),
        )  # fmt: skip
        for source in self._sources:
            log.info("target %s: %s", source.name, source.describe)

    async def _loop(self) -> None:
        slot: float | None = None
        while not self._stop.is_set():
            self._check_watch()
            if self._reload_wanted:
                await self._apply_reload()
            now = time.time()
            if slot is not None and now - slot < self.config.daemon.interval_s / 2:
                # Stamp the tick with its slot: every source's samples share
                # one round timestamp, whatever the wake-up jitter was.
                now = slot
            started = time.perf_counter()
            results = await self._collect(now)
            if results is None:
                break
            await self._record(now, results)
            if not self._stop.is_set():
                await self._jobs(now)
                await self._run_hooks(now)
            elapsed = time.perf_counter() - started
            self.ticks += 1
            self.exporter.tick_seconds.observe(elapsed)
            self._publish_status(now, elapsed)
            slot = await self._sleep_until_next(now)

    async def _sleep_until_next(self, tick: float) -> float:
        interval = self.config.daemon.interval_s
        # Ticks fall on whole multiples of the interval; a tick that overran
        # skips the slots it missed rather than bunching up behind them.
        slot = (tick // interval + 1) * interval
        now = time.time()
        if slot <= now:
            slot = (now // interval + 1) * interval
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), slot - now)
        return slot

    async def _collect(self, now: float) -> list[CollectResult] | None:
        """Every source's result, or None when a stop arrived first."""
        timeout = self.config.daemon.timeout_s
        gathering = asyncio.gather(*(_collect_one(s, now, timeout) for s in self._sources))
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        waiting: set[asyncio.Future[Any]] = {gathering, stopping}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if gathering in done:
            stopping.cancel()
            return list(gathering.result())
        gathering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gathering
        return None

    async def _record(self, tick: float, results: list[CollectResult]) -> None:
        samples: list[Sample] = []
        events: list[Event] = []
        by_source: dict[str, list[Sample]] = {}
        for source, result in zip(self._sources, results, strict=True):
            ok = result.ok
            self._note(source, result, ok)
            self.exporter.record_target(source.name, ok, result.latency_s, result.samples)
            samples.extend(result.samples)
            events.extend(result.events)
            by_source[source.name] = result.samples
        self.last_samples = by_source
        self._pending.add(tick, samples, events)
        await self._flush()

    def _note(self, source: Source, result: CollectResult, ok: bool) -> None:
        source.latency_s = result.latency_s
        source.samples = len(result.samples)
        if ok:
            source.last_ok = time.time()
            if source.up is False:
                log.info("target %s is back", source.name)
        else:
            source.errors += 1
            if source.status != result.status:
                log.warning("target %s: %s", source.name, result.status)
        source.up = ok
        source.status = result.status

    async def _flush(self) -> None:
        store = self._store
        if store is not None and len(self._pending):
            count, samples, events = self._pending.peek(FLUSH_MAX_SAMPLES)
            try:
                written = await store.write_tick(samples, events)
            except (sqlite3.Error, ValueError, OSError) as problem:
                self._store_failed(problem)
            else:
                newest = self._pending.pop(count)
                if newest is not None:
                    self._newest_written = max(self._newest_written or newest, newest)
                self.samples_written += written
                self.exporter.samples_written.inc(written)
                if self._store_problem is not None:
                    log.warning(
                        "store writable again; %d buffered samples left to write",
                        self._pending.samples,
                    )
                    self._store_problem = None
        dropped = self._pending.dropped - self._dropped_reported
        if dropped:
            self._dropped_reported = self._pending.dropped
            self.exporter.samples_dropped.inc(dropped)
            self._log_repeating(
                "dropped",
                logging.ERROR,
                "the in-memory buffer is full (%d samples): %d samples of the oldest ticks lost",
                self._pending.limit,
                self._pending.dropped,
            )
        self.exporter.buffered.set(self._pending.samples)

    def _store_failed(self, problem: BaseException) -> None:
        self.exporter.store_errors.inc()
        text = " ".join(str(problem).split()) or type(problem).__name__
        first = self._store_problem is None
        self._store_problem = text
        if first:
            self._logged_at.pop("store", None)
        self._log_repeating(
            "store",
            logging.ERROR,
            "cannot write the store (%s); keeping %d samples in memory (at most %d) and retrying "
            "every tick",
            text,
            self._pending.samples,
            self._pending.limit,
        )

    def _log_repeating(self, key: str, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._logged_at.get(key)
        if last is None or now - last >= REPEAT_LOG_S:
            self._logged_at[key] = now
            log.log(level, message, *args)

    async def _jobs(self, now: float) -> None:
        store = self._store
        if store is None:
            return
        try:
            await store.roll_up(now, max_minutes=ROLLUP_MINUTES_PER_TICK)
            if now >= self._next_expire:
                deleted = await store.expire(now)
                # A full chunk means more is past retention: another next tick.
                more = deleted >= EXPIRE_CHUNK_ROWS
                self._next_expire = now if more else now + EXPIRE_EVERY_S
        except (sqlite3.Error, ValueError, OSError) as problem:
            self.exporter.store_errors.inc()
            self._log_repeating(
                "jobs", logging.WARNING, "store roll-up or retention failed: %s", problem
            )

    async def _run_hooks(self, now: float) -> None:
        store = self._store
        if store is None:
            return
        for hook in list(self.on_tick):
            try:
                await hook(store, now)
            except Exception as problem:
                self.exporter.hook_errors.inc()
                name = getattr(hook, "__qualname__", repr(hook))
                self._log_repeating(
                    f"hook {name}", logging.WARNING, "tick hook %s failed: %r", name, problem
                )

    def _publish_status(self, now: float, elapsed: float) -> None:
        config = self.config
        self._status = {
            "pid": os.getpid(),
            "config": config.origin,
            "started": self._started,
            "interval_s": config.daemon.interval_s,
            "ticks": self.ticks,
            "last_tick": now,
            "tick_seconds": round(elapsed, 6),
            "store": {
                "path": str(config.store.path),
                "status": "ok" if self._store_problem is None else error(self._store_problem),
                "samples_written": self.samples_written,
                # The newest tick in the file: everything up to it is there.
                "newest_tick_written": self._newest_written,
                "buffered_samples": self._pending.samples,
                "dropped_samples": self._pending.dropped,
            },
            "targets": {
                s.name: {
                    "kind": s.kind,
                    "source": s.describe,
                    "up": s.up,
                    "status": s.status,
                    "errors": s.errors,
                    "latency_s": round(s.latency_s, 6),
                    "samples": s.samples,
                    "last_ok": s.last_ok,
                }
                for s in self._sources
            },
        }

    # -- reloading -------------------------------------------------------------

    def _check_watch(self) -> None:
        if self._watch is None:
            return
        stamp = _stamp(self._watch)
        if stamp == self._watch_stamp:
            return
        if stamp is None:
            log.warning("%s is gone; keeping the current targets", self._watch)
        else:
            self._reload_wanted = True
        self._watch_stamp = stamp

    async def _apply_reload(self) -> None:
        self._reload_wanted = False
        if self._reload is None:
            log.warning("nothing to reload: the config was not read from a file")
            return
        try:
            new = self._reload()
        except Exception as problem:
            log.error("config not reloaded: %s; the running config stays", problem)
            return
        old = self.config
        new = self._keep_restart_only(old, new)
        if new == old:
            return
        assert self._client is not None and self._store is not None
        keep = {s.spec: s for s in self._sources}
        try:
            sources = build_sources(new, self._client, keep)
        except Exception as problem:
            log.error("config not reloaded: %s; the running config stays", problem)
            return
        specs = {s.spec for s in sources}
        for source in self._sources:
            if source.spec not in specs:
                log.info("target %s removed", source.name)
                self.exporter.forget_target(source.name)
                with contextlib.suppress(Exception):
                    await source.close()
        for source in sources:
            if source.spec not in keep:
                log.info("target %s added: %s", source.name, source.describe)
        self._sources = sources
        self._store.retention = _retention(new)
        if new.store.max_size_mb != old.store.max_size_mb:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._store.set_max_bytes(_max_bytes(new))
        self._pending.limit = new.store.buffer_samples
        self.config = new
        log.info("config reloaded from %s: %d sources", new.origin, len(sources))

    def _keep_restart_only(self, old: Config, new: Config) -> Config:
        """What cannot change while running (the store's file, the listening socket) stays."""
        if new.store.path != old.store.path:
            log.warning("store.path changed to %s; the store moves on restart only", new.store.path)
            new = replace(new, store=replace(new.store, path=old.store.path))
        listening = ("metrics", "metrics_host", "metrics_port")
        if any(getattr(new.daemon, k) != getattr(old.daemon, k) for k in listening):
            log.warning("the metrics listener changes on restart only")
            new = replace(
                new,
                daemon=replace(new.daemon, **{k: getattr(old.daemon, k) for k in listening}),
            )
        return new

    # -- stopping -------------------------------------------------------------

    async def _shutdown(self) -> None:
        deadline = time.monotonic() + STOP_FLUSH_S
        while len(self._pending) and time.monotonic() < deadline:
            before = len(self._pending)
            await self._flush()
            if len(self._pending) >= before:
                await asyncio.sleep(0.1)
        lost = self._pending.samples
        if lost:
            log.error("%d buffered samples could not be written and are lost", lost)
        await self._close_sources()
        if self._store is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._store.close()
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
        log.info(
            "stopped after %d ticks: %d samples written, %d lost",
            self.ticks, self.samples_written, lost + self._pending.dropped,
        )  # fmt: skip

    async def _close_sources(self) -> None:
        for source in self._sources:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(source.close(), 0.5)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()


async def _collect_one(source: Source, now: float, limit_s: float) -> CollectResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            result: CollectResult = await source.collector.collect(now)
            return result
    except TimeoutError:
        return CollectResult([], [], error(f"no answer within {limit_s:g} s"), limit_s)
    except Exception as problem:
        # A collector that raises is a bug in it; the other targets go on.
        status = error(f"{type(problem).__name__}: {problem}")
        return CollectResult([], [], status, time.perf_counter() - started)


def _retention(config: Config) -> Retention:
    return Retention(
        raw_s=config.store.raw_retention_h * 3600.0,
        rollup_s=config.store.rollup_retention_d * 86400.0,
    )


def _max_bytes(config: Config) -> int | None:
    size = config.store.max_size_mb
    return int(size * 1024 * 1024) if size > 0 else None


def _stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _print_line(text: str) -> None:
    print(text, flush=True)
