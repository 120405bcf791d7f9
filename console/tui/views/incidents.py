"""Incidents: every recorded incident, the timeline of the selected one, and replay from it."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable

from console.tui import units
from console.tui.snapshot import IncidentView
from console.tui.views.base import Update, View
from console.tui.widgets.banner import evidence_line
from console.tui.widgets.live_static import LiveStatic

COLUMNS = ("#", "target", "cause", "opened", "closed", "lasted", "confidence")


def timeline_text(incident: IncidentView | None, now: float, replay_key: str) -> Text:
    if incident is None:
        return Text("No incident recorded up to this moment.", style="dim")
    text = Text.assemble(
        (f"incident {incident.id}", "bold"), f" · {incident.target} · ",
        (incident.cause, "bold red"), (f" · {replay_key}: replay it\n", "dim"),
    )  # fmt: skip
    for step in incident.timeline:
        ts = step.get("ts")
        offset = "" if ts is None else f" (+{units.seconds(ts - incident.opened)})"
        what = str(step.get("what", "?"))
        text.append(f"  {units.clock(ts)}{offset:<10} ", style="dim")
        text.append(what, style="bold red" if what == "opened" else "bold")
        if step.get("cause"):
            text.append(f" {step['cause']}")
        if step.get("confidence") is not None:
            text.append(f" ({step['confidence']:.0%})")
        text.append("\n")
    if incident.closed is None:
        text.append(f"  still open at {units.clock(now)}\n", style="bold")
    evidence = evidence_line(incident.evidence, limit=12)
    if evidence:
        text.append("evidence: ", style="bold")
        text.append(evidence)
    return text


class IncidentsView(View):
    view_id = "incidents"
    DEFAULT_CSS = """
    IncidentsView > DataTable { height: 1fr; min-height: 4; }
    IncidentsView > #incident-timeline { height: auto; max-height: 50%; padding: 0 1;
        border-top: solid $primary-darken-2; }
    """

    def __init__(self) -> None:
        super().__init__(id="incidents")
        self._rows: tuple[IncidentView, ...] = ()
        self._now = 0.0
        self._replay_key = "enter"

    def compose(self) -> ComposeResult:
        table: DataTable[str] = DataTable(
            cursor_type="row", zebra_stripes=True, id="incident-table"
        )
        for column in COLUMNS:
            table.add_column(column, key=column)
        yield table
        yield LiveStatic(id="incident-timeline")

    def focus_main(self) -> None:
        self.query_one(DataTable).focus()

    def refresh_view(self, update: Update) -> None:
        snapshot = update.snapshot
        self._now = snapshot.now
        self._replay_key = update.key("incidents.replay")
        incidents = tuple(reversed(snapshot.incidents))  # newest first
        table: DataTable[str] = self.query_one(DataTable)
        if incidents != self._rows:
            cursor = table.cursor_row
            self._rows = incidents
            table.clear()
            for incident in incidents:
                end = incident.closed if incident.closed is not None else snapshot.now
                table.add_row(
                    str(incident.id), incident.target, incident.cause,
                    units.stamp(incident.opened), units.stamp(incident.closed),
                    units.seconds(end - incident.opened), f"{incident.confidence:.0%}",
                    key=str(incident.id),
                )  # fmt: skip
            if incidents:
                table.move_cursor(row=min(cursor, len(incidents) - 1))
        self._show_timeline()

    def selected(self) -> IncidentView | None:
        table: DataTable[str] = self.query_one(DataTable)
        if not self._rows or table.cursor_row < 0:
            return None
        return self._rows[min(table.cursor_row, len(self._rows) - 1)]

    def _show_timeline(self) -> None:
        incident = self.selected()
        now = self._now
        key = (incident, int(now) if incident and incident.closed is None else None)
        self.query_one("#incident-timeline", LiveStatic).show(
            key, lambda: timeline_text(incident, now, self._replay_key)
        )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._show_timeline()

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        await self.app.run_action("replay_incident")
