"""Playbooks: the list, a dry-run plan, a run behind a confirmation, live steps, history.

Nothing here changes anything by itself: Enter plans the selected playbook
(current -> new values, read from the system now), ``r`` plans it again and
asks in a dialog that shows those values, and only "apply" runs it. The run
streams its steps into the panel; ``u`` undoes the last applied run, after
the same kind of confirmation. Under ``--read-only`` only planning is left.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from console.tui import units
from console.tui.keys import LIVE
from console.tui.views.base import Update, View
from console.tui.widgets.live_static import LiveStatic
from playbooks.model import Playbook
from playbooks.runner import Plan, describe_event

COLUMNS = ("", "playbook", "answers")
RECOMMENDED, DANGEROUS = "●", "!"
OUTPUT_LINES = 14


def plan_text(plan: Plan) -> Text:
    text = Text()
    text.append(f"{plan.playbook}", style="bold")
    text.append(f" on {plan.target}\n")
    if plan.params:
        text.append("params: " + ", ".join(f"{k}={v}" for k, v in plan.params.items()) + "\n")
    for warning in plan.warnings:
        text.append(f"warning: {warning}\n", style="bold yellow")
    for step in plan.steps:
        text.append(f"{step.index + 1}. {step.what}\n")
        for change in step.changes:
            text.append(f"     {change.knob}: ")
            text.append(units_value(change.before), style="red")
            text.append(" -> ")
            text.append(units_value(change.after), style="bold green")
            if change.unchanged:
                text.append("  (unchanged)", style="dim")
            text.append("\n")
    return text


def units_value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def event_line(event: dict[str, Any]) -> str:
    return describe_event(event).rstrip()


class ConfirmPlan(ModalScreen[bool]):
    """The plan with its current -> new values; y applies, n or escape cancels."""

    DEFAULT_CSS = """
    ConfirmPlan { align: center middle; }
    ConfirmPlan > Vertical { width: 90%; max-width: 110; height: auto; max-height: 90%;
        border: thick $warning; background: $surface; padding: 1 2; }
    ConfirmPlan #confirm-title { text-style: bold; }
    ConfirmPlan #confirm-keys { margin-top: 1; color: $text-muted; }
    """
    BINDINGS = [  # noqa: RUF012 - Textual's own class attribute
        Binding("y", "answer(True)", "apply", id="confirm.apply"),
        Binding("n,escape", "answer(False)", "cancel", id="confirm.cancel"),
    ]

    def __init__(self, title: str, body: Text, dangerous: bool = False) -> None:
        super().__init__()
        self._title = title
        self._body = body
        self._dangerous = dangerous

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self._title, id="confirm-title")
            yield Static(self._body, id="confirm-body")
            warning = "  (marked dangerous)" if self._dangerous else ""
            yield Static(f"y apply · n cancel{warning}", id="confirm-keys")

    def action_answer(self, apply: bool) -> None:
        self.dismiss(apply)


class PlaybooksView(View):
    view_id = "playbooks"
    DEFAULT_CSS = """
    PlaybooksView > DataTable { height: 1fr; min-height: 4; max-height: 45%; }
    PlaybooksView > #playbook-detail { height: 1fr; padding: 0 1;
        border-top: solid $primary-darken-2; overflow-y: auto; }
    """

    def __init__(self) -> None:
        super().__init__(id="playbooks")
        self.catalog: dict[str, Playbook] = {}
        self.problem = ""
        self.recommended: tuple[str, ...] = ()
        self.read_only = False
        self.live = True
        self.plan: Plan | None = None
        self.plan_problem = ""
        self.output: list[str] = []
        self.history: list[dict[str, Any]] = []
        self._keys: dict[str, str] = {}
        self._rows: tuple[str, ...] = ()

    def compose(self) -> ComposeResult:
        table: DataTable[str] = DataTable(
            cursor_type="row", zebra_stripes=True, id="playbook-table"
        )
        for column in COLUMNS:
            table.add_column(column, key=column or "mark")
        yield table
        yield LiveStatic(id="playbook-detail")

    def focus_main(self) -> None:
        self.query_one(DataTable).focus()

    def load(self, catalog: dict[str, Playbook], problem: str) -> None:
        self.catalog = catalog
        self.problem = problem

    def selected(self) -> str | None:
        table: DataTable[str] = self.query_one(DataTable)
        if not self._rows or table.cursor_row < 0:
            return None
        return self._rows[min(table.cursor_row, len(self._rows) - 1)]

    def select(self, name: str) -> None:
        if name in self._rows:
            self.query_one(DataTable).move_cursor(row=self._rows.index(name))

    def refresh_view(self, update: Update) -> None:
        self.read_only = update.read_only
        self.live = update.mode == LIVE
        self._keys = {
            k: update.key(k) for k in ("playbooks.plan", "playbook.run", "playbooks.undo")
        }
        recommended: list[str] = []
        for verdict in update.snapshot.verdicts:
            recommended += [p for p in verdict.playbooks if p not in recommended]
        # The verdict's own order first: its most effective playbook on top.
        rank = {name: i for i, name in enumerate(recommended)}
        names = tuple(sorted(self.catalog, key=lambda n: (rank.get(n, len(rank)), n)))
        if names != self._rows or tuple(recommended) != self.recommended:
            self.recommended = tuple(recommended)
            table: DataTable[str] = self.query_one(DataTable)
            cursor = table.cursor_row
            self._rows = names
            table.clear()
            for name in names:
                playbook = self.catalog[name]
                mark = (RECOMMENDED if name in recommended else " ") + (
                    DANGEROUS if playbook.dangerous else ""
                )
                table.add_row(mark, name, ", ".join(playbook.answers), key=name)
            if names:
                table.move_cursor(row=max(0, min(cursor, len(names) - 1)))
        self.show_detail()

    def show_detail(self) -> None:
        name = self.selected()
        key = (
            name,
            id(self.plan),
            self.plan_problem,
            tuple(self.output),
            tuple(r["id"] for r in self.history),
            self.read_only,
            self.problem,
        )
        self.query_one("#playbook-detail", LiveStatic).show(key, lambda: self._detail(name))

    def _detail(self, name: str | None) -> Text:
        text = Text()
        if self.read_only:
            text.append("read-only: playbooks can be planned here, not run\n", style="bold")
        if self.problem:
            text.append(self.problem + "\n", style="bold red")
        playbook = self.catalog.get(name or "")
        if playbook is not None:
            text.append(playbook.name, style="bold")
            text.append(f" — {playbook.description}\n", style="")
            if name in self.recommended:
                text.append(f"{RECOMMENDED} recommended for the open verdict\n", style="bold")
            if playbook.warning:
                text.append(f"warning: {playbook.warning}\n", style="bold yellow")
            for param in playbook.params:
                text.append(f"  {param.name} ({param.type}) = {param.default}\n", style="dim")
            keys = f"{self._keys.get('playbooks.plan', 'enter')} plans it"
            if not self.read_only and self.live and not self.problem:
                keys += (
                    f" · {self._keys.get('playbook.run', 'r')} runs it (asks first)"
                    f" · {self._keys.get('playbooks.undo', 'u')} undoes the last run"
                )
            text.append(keys + "\n", style="dim")
        if self.plan_problem:
            text.append(self.plan_problem + "\n", style="bold red")
        elif self.plan is not None and self.plan.playbook == name:
            text.append("\nplan\n", style="bold underline")
            text.append_text(plan_text(self.plan))
        if self.output:
            text.append("\nlast run\n", style="bold underline")
            text.append("\n".join(self.output[-OUTPUT_LINES:]) + "\n")
        if self.history:
            text.append("\nhistory\n", style="bold underline")
            for run in self.history[:6]:
                changed = [c for c in run.get("changes", []) if not c.get("unchanged")]
                text.append(
                    f"  #{run['id']} {units.clock(run['ts'])} {run['playbook']} "
                    f"{run['status']} ({run['trigger']}, {len(changed)} change(s))\n"
                )
        return text

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.show_detail()

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        await self.app.run_action("plan_playbook")

    def add_output(self, line: str) -> None:
        self.output.append(line)
        self.show_detail()

    def started(self, name: str) -> None:
        self.output = [f"{time.strftime('%H:%M:%S')} {name}: started"]
        self.show_detail()
