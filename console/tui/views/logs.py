"""Logs: live events and overload lines, coloured by severity; `/` filters, `p` pauses.

Each line also names its severity in letters, so the colours are a help,
not the only signal (NO_COLOR, a monochrome terminal, a screen reader).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Input, RichLog

from collectors.model import Event
from console.tui import units
from console.tui.views.base import Update, View
from console.tui.widgets.live_static import LiveStatic

KEEP = 5000
SEVERITY_STYLE = {
    "info": ("INFO", "dim"),
    "warning": ("WARN", "yellow"),
    "error": ("ERR ", "bold red"),
    "critical": ("CRIT", "bold white on red"),
}


# A JSON log line's own time repeats the line's first column; nulls say nothing.
QUIET_FIELDS = frozenset({"time", "ts", "timestamp", "@timestamp"})


def readable(text: str) -> str:
    """A JSON object line as ``key=value`` pairs, so 80 columns show what matters."""
    if text.startswith("{"):
        try:
            fields = json.loads(text)
        except ValueError:
            fields = None
        if isinstance(fields, dict):
            return " ".join(
                f"{key}={value}"
                for key, value in fields.items()
                if key not in QUIET_FIELDS and value is not None
            )
    return " ".join(text.split())


def event_line(event: Event) -> Text:
    tag, style = SEVERITY_STYLE.get(event.severity, ("????", ""))
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(units.clock(event.ts) + " ", style="dim")
    line.append(tag, style=style)
    line.append(f" {event.source} ", style="bold")
    line.append(f"{event.kind}: ", style=style if event.severity != "info" else "")
    line.append(readable(event.text))
    return line


def matches(event: Event, needle: str) -> bool:
    if not needle:
        return True
    needle = needle.lower()
    # What the line shows, and the raw line too: both spellings find it.
    parts = (readable(event.text), event.text, event.kind, event.source, event.severity)
    return any(needle in part.lower() for part in parts)


class LogsView(View):
    view_id = "logs"
    DEFAULT_CSS = """
    LogsView > #log-filter { display: none; height: 3; }
    LogsView.-filtering > #log-filter { display: block; }
    LogsView > RichLog { height: 1fr; }
    LogsView > #log-status { height: 1; background: $panel; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__(id="logs")
        self.events: deque[Event] = deque(maxlen=KEEP)
        self.needle = ""
        self.paused = False
        self.held = 0
        self._hint = " · / filter · p pause"

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: text in the line · Enter keeps it · Esc clears it",
                    id="log-filter")  # fmt: skip
        yield RichLog(id="log-lines", max_lines=KEEP, wrap=False, markup=False, auto_scroll=True)
        yield LiveStatic(id="log-status")

    def on_mount(self) -> None:
        self._status()

    def focus_main(self) -> None:
        if self.has_class("-filtering"):
            self.query_one(Input).focus()
        else:
            self.query_one(RichLog).focus()

    def refresh_view(self, update: Update) -> None:
        self._hint = f" · {update.key('logs.filter')} filter · {update.key('logs.pause')} pause"
        self._status()

    # -- the events --------------------------------------------------------

    def add_events(self, events: Iterable[Event], reset: bool) -> None:
        log = self.query_one(RichLog)
        if reset:
            self.events.clear()
            self.held = 0
            if not self.paused:
                log.clear()
        for event in events:
            self.events.append(event)
            if not matches(event, self.needle):
                continue
            if self.paused:
                self.held += 1
            else:
                log.write(event_line(event))
        self._status()

    def _rewrite(self) -> None:
        log = self.query_one(RichLog)
        log.clear()
        for event in self.events:
            if matches(event, self.needle):
                log.write(event_line(event))

    # -- filter and pause ----------------------------------------------------

    def open_filter(self) -> None:
        self.add_class("-filtering")
        field = self.query_one(Input)
        field.value = self.needle
        field.focus()

    def set_filter(self, needle: str) -> None:
        if needle == self.needle:
            return
        self.needle = needle
        self.held = 0
        self._rewrite()
        self._status()

    def clear_filter(self) -> None:
        self.remove_class("-filtering")
        self.query_one(Input).value = ""
        self.set_filter("")
        self.query_one(RichLog).focus()

    def toggle_pause(self) -> bool:
        self.paused = not self.paused
        if not self.paused:
            self.held = 0
            self._rewrite()
        self._status()
        return self.paused

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.set_filter(event.value.strip())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.set_filter(event.value.strip())
        self.remove_class("-filtering")
        self.query_one(RichLog).focus()

    def _status(self) -> None:
        shown = (
            sum(1 for e in self.events if matches(e, self.needle))
            if self.needle
            else len(self.events)
        )
        state = f"PAUSED · {self.held} new lines held" if self.paused else "following"
        needle = f" · filter '{self.needle}'" if self.needle else ""
        key = (state, needle, shown, self._hint)

        def build() -> Text:
            return Text.assemble(
                (state, "bold yellow" if self.paused else "bold"),
                f" · {shown} lines{needle}", (self._hint, "dim"),
            )  # fmt: skip

        self.query_one("#log-status", LiveStatic).show(key, build)
