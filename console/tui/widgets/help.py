"""`?`: every command that applies here, with its keys, from the one command table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from console.tui.keys import Command, display_key, keys_of

GROUP_TITLES = {
    "screens": "Screens",
    "general": "General",
    "queues": "Queues",
    "logs": "Logs",
    "incidents": "Incidents",
    "replay": "Replay",
    "actions": "Actions",
}


def help_table(commands: Sequence[Command], keymap: Mapping[str, str]) -> Table:
    table = Table(box=None, show_header=True, header_style="bold", expand=True, padding=(0, 1))
    table.add_column("key", no_wrap=True, min_width=9)
    table.add_column("command", no_wrap=True)
    table.add_column("what it does", ratio=1)
    table.add_column("id (rebind in [keys])", style="dim", no_wrap=True)
    for group, title in GROUP_TITLES.items():
        mine = [c for c in commands if c.group == group]
        if not mine:
            continue
        table.add_row(Text(title, style="bold underline"), "", "", "")
        for command in mine:
            table.add_row(display_key(keys_of(command, keymap)), command.title, command.help,
                          command.id)  # fmt: skip
    return table


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 100%; max-width: 120; height: 100%; max-height: 40;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "close", show=False),
        Binding("question_mark", "dismiss", "close", show=False),
        Binding("q", "dismiss", "close", show=False),
    ]

    def __init__(self, commands: Sequence[Command], keymap: Mapping[str, str], note: str) -> None:
        super().__init__()
        self._commands = commands
        self._keymap = keymap
        self._note = note

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text(f"quell console · {self._note} · esc closes", style="bold"))
            yield Static(help_table(self._commands, self._keymap), id="help-table")
