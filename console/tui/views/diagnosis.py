"""Diagnosis: each queue's verdict with all its evidence, the capacity advice, and the history.

The advice is Little's law over the last two minutes as recorded (see
``snapshot.read_advice``); it is recomputed every few seconds while this
screen is open, not on every refresh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll

from console.tui import units
from console.tui.snapshot import AdviceView, IncidentView, TargetView
from console.tui.views.base import Update, View
from console.tui.widgets.banner import verdict_headline
from console.tui.widgets.live_static import LiveStatic


def evidence_table(evidence: Mapping[str, Any], title: str, pairs: int) -> Table:
    """Every figure of the evidence, ``pairs`` name-value pairs to a row."""
    table = Table(title=title, title_justify="left", box=None, padding=(0, 1), show_header=False)
    for _ in range(pairs):
        table.add_column(style="bold", no_wrap=True)
        table.add_column(no_wrap=True)
    cells: list[str] = []
    for key, value in evidence.items():
        cells += [key, _value(value)]
    row = 2 * pairs
    for start in range(0, len(cells), row):
        chunk = cells[start : start + row]
        table.add_row(*chunk, *([""] * (row - len(chunk))))
    if not evidence:
        table.add_row(Text("nothing recorded yet", style="dim"), *([""] * (row - 1)))
    return table


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def advice_table(advice: AdviceView | None) -> RenderableType:
    if advice is None:
        return Text("capacity advice: computing from the recorded window…", style="dim")
    table = Table(
        title=f"capacity advice (Little's law over {advice.ticks} recorded ticks)",
        title_justify="left", box=None, padding=(0, 2),
    )  # fmt: skip
    table.add_column("what", ratio=3)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("assumes", ratio=4, style="dim")
    for item in advice.advice:
        table.add_row(item.what, "-" if item.value is None else f"{item.value:g}", item.assumption)
    if not advice.advice:
        table.add_row(Text("not enough recorded yet", style="dim"), "", "")
    return table


def history_table(incidents: Sequence[IncidentView], now: float) -> Table:
    table = Table(title="verdict history", title_justify="left", box=None, padding=(0, 2))
    for column in ("#", "target", "cause", "opened", "lasted", "steps"):
        table.add_column(column, no_wrap=column != "steps")
    for incident in reversed(incidents):
        end = incident.closed if incident.closed is not None else now
        lasted = units.seconds(end - incident.opened)
        if incident.closed is None:
            lasted += " (open)"
        steps = " → ".join(_step(s) for s in incident.timeline)
        table.add_row(str(incident.id), incident.target, incident.cause,
                      units.stamp(incident.opened), lasted, steps)  # fmt: skip
    if not incidents:
        table.add_row("", Text("no verdict recorded", style="dim"), "", "", "", "")
    return table


def _step(step: Mapping[str, Any]) -> str:
    what = str(step.get("what", "?"))
    cause = step.get("cause") if what != "closed" else None
    return f"{what}{' ' + str(cause) if cause else ''} {units.clock(step.get('ts'))}"


def diagnosis_render(
    queues: Sequence[TargetView], advice: Mapping[str, AdviceView],
    incidents: Sequence[IncidentView], now: float, width: int,
) -> RenderableType:  # fmt: skip
    pairs = max(1, min(4, width // 40))
    parts: list[RenderableType] = []
    for queue in queues:
        found = advice.get(queue.name)
        if queue.verdict is not None:
            parts.append(verdict_headline(queue.verdict, now))
            parts.append(evidence_table(queue.verdict.evidence, "evidence (as recorded)", pairs))
        else:
            parts.append(Text.assemble((" HEALTHY ", "bold black on green"), f" {queue.name}"))
            parts.append(evidence_table(found.now if found else {}, "the numbers now", pairs))
        parts.append(advice_table(found))
        parts.append(Text(""))
    if not queues:
        parts.append(Text("No watched queue has reported at this moment.", style="dim"))
    parts.append(history_table(incidents, now))
    return Group(*parts)


class DiagnosisView(View):
    view_id = "diagnosis"

    def __init__(self) -> None:
        super().__init__(id="diagnosis")

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield LiveStatic(id="diagnosis-body")

    def refresh_view(self, update: Update) -> None:
        snapshot = update.snapshot
        queues = snapshot.queues
        width = self.size.width or 80
        key = (
            width,
            tuple(
                (q.name, q.verdict, q.verdict is None and update.advice.get(q.name)) for q in queues
            ),
            tuple(sorted(update.advice.items())),
            snapshot.incidents,
            int(snapshot.now) if any(i.closed is None for i in snapshot.incidents) else None,
        )
        self.query_one("#diagnosis-body", LiveStatic).show(
            key,
            lambda: diagnosis_render(
                queues, update.advice, snapshot.incidents, snapshot.now, width
            ),
        )
