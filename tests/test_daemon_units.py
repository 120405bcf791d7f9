"""The daemon's parts in-process: per-tick hooks and the /metrics re-export."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from prometheus_client import generate_latest

from collectors.config import Config, DaemonConfig, GpuConfig, HostConfig, LogConfig, StoreConfig
from collectors.daemon import Daemon
from collectors.exporter import MAX_SERIES_PER_TARGET, Exporter
from collectors.model import Sample
from collectors.store import Store


def quiet_config(tmp_path: Path) -> Config:
    log = tmp_path / "app.log"
    log.write_text("")
    return Config(
        store=StoreConfig(tmp_path / "q.db"),
        daemon=DaemonConfig(interval_s=0.05, timeout_s=0.04, metrics=False),
        host=HostConfig(enabled=False),
        gpu=GpuConfig(enabled=False),
        logs=(LogConfig(log, "app"),),
        origin="test",
    )


async def test_tick_hooks_see_every_tick_and_a_failing_one_is_not_fatal(tmp_path: Path) -> None:
    daemon = Daemon(quiet_config(tmp_path))
    seen: list[tuple[float, int]] = []

    async def diagnosis(store: Store, now: float) -> None:
        window = await store.window("log_lines_skipped_total", seconds=60, now=now)
        seen.append((now, sum(len(points) for points in window.values())))
        assert set(daemon.last_samples) == {"app"}
        if len(seen) >= 5:
            daemon.request_stop()

    async def broken(store: Store, now: float) -> None:
        raise RuntimeError("a bug in a hook")

    daemon.on_tick += [broken, diagnosis]
    lines: list[str] = []
    assert await asyncio.wait_for(daemon.run(ready=lines.append, install_signals=False), 10) == 0
    assert lines == ["quell collect running (metrics off)"]
    # Each hook ran after its tick was written: the window grows by one a tick.
    assert [count for _, count in seen] == [1, 2, 3, 4, 5]
    # After the first, ticks fall on the interval's grid, one slot apart.
    stamps = [now for now, _ in seen[1:]]
    assert all(abs(b - a - 0.05) < 1e-6 for a, b in itertools.pairwise(stamps)), stamps
    text = generate_latest(daemon.exporter.registry).decode()
    assert "quell_daemon_tick_hook_errors_total 5.0" in text


def test_the_reexport_is_bounded_per_target_and_never_shadows_the_daemon() -> None:
    exporter = Exporter()
    many = [
        Sample("depth", (("queue", f"q{i}"),), 1.0, float(i))
        for i in range(MAX_SERIES_PER_TARGET + 50)
    ]
    exporter.record_target("busy", True, 0.01, many)
    exporter.record_target("odd", True, 0.01, [Sample("daemon_tick_seconds", (), 1.0, 9.0)])
    text = generate_latest(exporter.registry).decode()
    assert text.count("quell_depth{") == MAX_SERIES_PER_TARGET
    assert 'quell_depth{queue="q0",target="busy"} 0.0' in text
    assert 'quell_daemon_export_dropped_series{target="busy"} 50.0' in text
    assert "quell_daemon_tick_seconds 9.0" not in text
    exporter.forget_target("busy")
    text = generate_latest(exporter.registry).decode()
    assert "quell_depth{" not in text and 'target="busy"' not in text
