"""The frame around every screen: the tab bar, the replay bar and the status line."""

from __future__ import annotations

from collections.abc import Mapping

from rich.text import Text
from textual.content import Content
from textual.markup import escape

from console.tui import units
from console.tui.clock import ReplayClock
from console.tui.keys import VIEWS, display_key
from console.tui.widgets.live_static import LiveStatic


def tab_text(active: str, keys: Mapping[str, str]) -> Content:
    parts = []
    for view in VIEWS:
        # One space between tabs: eight of them fit in 80 columns.
        label = escape(f" {display_key(keys.get(f'view.{view.id}', view.key))} {view.title}")
        if view.id == active:
            parts.append(f"[bold reverse]{label}[/]")
        else:
            # Mouse is optional, not absent: a click on a tab switches to it.
            parts.append(f"[@click=app.show_view('{view.id}')]{label}[/]")
    return Content.from_markup("".join(parts))


class TabBar(LiveStatic):
    DEFAULT_CSS = """
    TabBar { height: 1; background: $panel; }
    """

    def set_active(self, active: str, keys: Mapping[str, str]) -> None:
        self.show((active, tuple(sorted(keys.items()))), lambda: tab_text(active, keys))


def replay_text(clock: ReplayClock, width: int) -> Text:
    state = "▶" if clock.playing else "⏸"
    speed = f"{clock.speed:g}x"
    head = Text.assemble(
        (" REPLAY ", "bold black on cyan"), f" {state} {speed} ",
        (units.stamp(clock.position), "bold"), " ",
    )  # fmt: skip
    hint = " space play · , . step · [ ] ±10s · - + speed"
    room = width - head.cell_len - len(hint) - 2
    if room < 10:
        hint = ""
        room = width - head.cell_len - 2
    filled = round(max(0.0, min(1.0, clock.progress)) * max(0, room))
    head.append("━" * filled, style="cyan")
    head.append("─" * max(0, room - filled), style="dim")
    head.append(hint, style="dim")
    return head


class ReplayBar(LiveStatic):
    DEFAULT_CSS = """
    ReplayBar { height: 1; background: $panel; }
    """

    def set_clock(self, clock: ReplayClock) -> None:
        width = self.size.width or 80
        key = (round(clock.position, 1), clock.playing, clock.speed, clock.start, clock.end, width)
        self.show(key, lambda: replay_text(clock, width))


def status_text(
    mode: str, moment: float, describe: str, read_only: bool, newest: float | None, width: int
) -> Text:
    if mode == "live":
        text = Text.assemble((" LIVE ", "bold black on green"), " ", (units.clock(moment), "bold"),
                             f" · {describe}")  # fmt: skip
    else:
        # The replay bar above shows the mode and the moment.
        text = Text(f" {describe}")
    if mode == "live" and newest is not None and moment - newest > 5:
        text.append(f" · no data for {units.seconds(moment - newest)}", style="bold yellow")
    if read_only:
        text.append(" · read-only", style="bold")
    hint = "? help  ^p commands  q quit"
    spare = width - text.cell_len - len(hint) - 1
    if spare > 0:
        text.append(" " * spare)
        text.append(hint, style="dim")
    else:
        text.truncate(max(1, width), overflow="ellipsis")
    return text


class StatusLine(LiveStatic):
    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; }
    """

    def set_status(
        self, mode: str, moment: float, describe: str, read_only: bool, newest: float | None
    ) -> None:
        width = self.size.width or 80
        key = (mode, int(moment), describe, read_only, newest and int(newest), width)
        self.show(key, lambda: status_text(mode, moment, describe, read_only, newest, width))
