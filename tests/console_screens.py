"""Driving the console headless in tests: build it on a recorded store, wait, read the screen."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot

from console.tui.app import QuellConsole
from console.tui.feeds import plan_feed
from console.tui.settings import Settings


def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clock times on screen in UTC, so screens read the same on every machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def replay_app(
    store: Path, at: float, *, settings: Settings | None = None, read_only: bool = False
) -> QuellConsole:
    """The console replaying ``store``, paused at ``at``."""
    plan = plan_feed(replay=store)
    return QuellConsole(plan, settings, read_only=read_only, replay_from=at, playing=False)


async def settle(pilot: Pilot[Any], app: QuellConsole, within_s: float = 10.0) -> None:
    """Wait until the data of the latest refresh is on screen."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        await pilot.pause()
        busy = any(w.is_running for w in app.workers)
        if app.snapshot is not None and not busy:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the console did not finish a refresh")
    await pilot.pause()
    await pilot.pause()


def screen_text(app: QuellConsole) -> str:
    """The whole screen as plain text, one line per terminal row."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
        record=True, legacy_windows=False, safe_box=False,
    )  # fmt: skip
    # What App.export_screenshot renders, kept as text rather than SVG.
    console.print(app.screen._compositor.render_update(full=True))
    lines = console.export_text().splitlines()
    return "\n".join(line.rstrip() for line in lines) + "\n"


def screen_colours(app: QuellConsole) -> set[tuple[int, int, int]]:
    """Every foreground and background colour the screen uses, as RGB."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", legacy_windows=False)  # fmt: skip
    found: set[tuple[int, int, int]] = set()
    for segment in console.render(app.screen._compositor.render_update(full=True)):
        style = segment.style
        if style is None:
            continue
        for colour in (style.color, style.bgcolor):
            if colour is not None and not colour.is_default:
                triplet = colour.get_truecolor()
                found.add((triplet.red, triplet.green, triplet.blue))
    return found


def update_snapshots() -> bool:
    return os.environ.get("QUELL_UPDATE_SNAPSHOTS") == "1"
