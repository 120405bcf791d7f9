"""Where the console's data comes from: its own collector, a daemon's store, or a recording.

One sampling loop feeds everything (DESIGN.md), so the console never scrapes
on its own. When a daemon is writing the store, the console only reads it.
When none is, the console runs the daemon's loop itself, in its own event
loop, with the same per-tick diagnosis, into the same store; the screens
then read the store back exactly as they would a daemon's. ``--replay``
opens a store read-only and collects nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from collectors.store import writer_pid
from console.errors import UsageError

if TYPE_CHECKING:
    from collectors.config import Config
    from collectors.daemon import Daemon

COLLECT, ATTACH, REPLAY = "collect", "attach", "replay"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class FeedPlan:
    kind: str  # COLLECT, ATTACH or REPLAY
    store_path: Path
    describe: str  # one line for the status bar
    config: Config | None = None
    reload: Callable[[], Config] | None = None
    watch: Path | None = None  # the lab's state file, followed as replicas come and go
    writer: int | None = None


def plan_feed(
    *, store: Path | None = None, replay: Path | None = None, config: Path | None = None
) -> FeedPlan:
    """Decide the source from the command line; UsageError when there is none to be had."""
    if replay is not None:
        if not replay.exists():
            raise UsageError(f"no store at {replay}")
        return FeedPlan(REPLAY, replay, f"replay of {replay.name}")
    if store is not None:
        pid = writer_pid(store)
        if pid is None:
            raise UsageError(
                f"no daemon is writing {store}; replay it with --replay {store}, or leave out "
                "--store to collect in-process"
            )
        return FeedPlan(ATTACH, store, f"attached to the daemon (pid {pid})", writer=pid)
    loaded, reload, watch = _config(config)
    pid = writer_pid(loaded.store.path)
    if pid is not None:
        return FeedPlan(
            ATTACH, loaded.store.path, f"attached to the daemon (pid {pid})", writer=pid
        )
    quiet = replace(loaded, daemon=replace(loaded.daemon, metrics=False))
    return FeedPlan(
        COLLECT,
        loaded.store.path,
        f"collecting {loaded.origin} in-process",
        config=quiet,
        reload=lambda: _quiet(reload()),
        watch=watch,
    )


def _quiet(config: Config) -> Config:
    # The console serves no /metrics: that is the daemon's job, and a second
    # listener would only compete for its port.
    return replace(config, daemon=replace(config.daemon, metrics=False))


def _config(path: Path | None) -> tuple[Config, Callable[[], Config], Path | None]:
    from collectors.config import ConfigError, lab_config, load_config

    if path is not None:
        try:
            return load_config(path), (lambda: load_config(path)), None
        except ConfigError as problem:
            raise UsageError(str(problem)) from None

    from inference.lab.state import LabNotRunning, read_state, state_path

    def from_lab() -> Config:
        return lab_config(read_state())

    try:
        return from_lab(), from_lab, state_path()
    except LabNotRunning as problem:
        raise UsageError(
            f"{problem}; or watch something else with --config FILE, --store PATH or --replay PATH"
        ) from None
    except ConfigError as problem:
        raise UsageError(str(problem)) from None


class InProcessCollector:
    """The daemon's loop and diagnosis, run inside the console's event loop."""

    def __init__(self, plan: FeedPlan, on_tick: Callable[[float], None]) -> None:
        assert plan.config is not None
        self.plan = plan
        self._on_tick = on_tick
        self.daemon: Daemon | None = None
        self._task: asyncio.Task[int] | None = None

    async def start(self) -> None:
        """Run until the store is open; StartError with the reason when it cannot be."""
        from collectors.config import ConfigError
        from collectors.daemon import Daemon
        from collectors.diagnosis_loop import DiagnosisLoop

        assert self.plan.config is not None
        daemon = Daemon(self.plan.config, reload=self.plan.reload, watch=self.plan.watch)
        daemon.on_tick.append(DiagnosisLoop(daemon))

        async def announce(_store: object, now: float) -> None:
            self._on_tick(now)

        daemon.on_tick.append(announce)
        ready = asyncio.Event()
        self.daemon = daemon
        self._task = asyncio.create_task(
            daemon.run(ready=lambda _line: ready.set(), install_signals=False)
        )
        waiting = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait(
            {self._task, waiting}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if waiting in done:
            return
        waiting.cancel()
        if self._task in done:
            try:
                self._task.result()
            except ConfigError as problem:
                raise StartError(str(problem)) from None
            raise StartError(f"the collector could not start on {self.plan.store_path}")
        raise StartError(f"the collector did not start within {START_TIMEOUT_S:g} s")

    async def stop(self) -> None:
        """Stop ticking and write what is buffered, within STOP_TIMEOUT_S."""
        if self.daemon is None or self._task is None:
            return
        self.daemon.request_stop()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
        except (TimeoutError, Exception):
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def gpu_status(self) -> str | None:
        """What the GPU source said on its last tick, when it found nothing."""
        if self.daemon is None:
            return None
        gpu = self.daemon.status().get("targets", {}).get("gpu")
        if not gpu or gpu.get("status") == "ok":
            return None
        return str(gpu.get("status", "")).removeprefix("error: ")


class StartError(Exception):
    """The in-process collector could not start; the message says why."""
