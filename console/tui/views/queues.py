"""Queues: every target and replica in a sortable table; Enter opens one's own charts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable

from console.tui import units
from console.tui.chart import sparkline
from console.tui.snapshot import TargetView
from console.tui.views.base import Update, View
from console.tui.widgets.live_static import LiveStatic
from console.tui.widgets.rate_chart import RateChart


class Cell(Text):
    """A table cell that sorts by its number, not by its text."""

    sort_value: tuple[int, float, str]


def cell(text: str, value: float | str | None, style: str = "") -> Cell:
    made = Cell(text, style=style, justify="left" if isinstance(value, str) else "right")
    if value is None:
        made.sort_value = (1, 0.0, "")
    elif isinstance(value, str):
        made.sort_value = (0, 0.0, value)
    else:
        made.sort_value = (0, float(value), "")
    return made


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    value: Callable[[TargetView], float | str | None]
    show: Callable[[TargetView], str]


def _occupancy_style(target: TargetView) -> str:
    share = target.occupancy
    if share is None:
        return ""
    return "bold red" if share >= 0.9 else "yellow" if share >= 0.7 else ""


# Ten columns fit 80 terminal columns; role, capacity and the rest of a
# target's signals are in its drill-in.
COLUMNS: tuple[Column, ...] = (
    Column("target", "target", lambda t: t.name,
           lambda t: t.name if t.queue is None else f"↳ {t.name}"),
    Column("depth", "depth", lambda t: t.get("depth"),
           lambda t: f"{units.count(t.get('depth'))}/{units.count(t.get('capacity'))}"),
    Column("occupancy", "occ", lambda t: t.occupancy,
           lambda t: units.percent(t.occupancy, ratio=True)),
    Column("running", "run", lambda t: t.get("running"),
           lambda t: f"{units.count(t.get('running'))}/{units.count(t.get('workers'))}"),
    Column("offered", "λ/s", lambda t: t.get("offered_rate"),
           lambda t: units.rate(t.get("offered_rate")).removesuffix("/s")),
    Column("served", "μ/s", lambda t: t.get("completed_rate"),
           lambda t: units.rate(t.get("completed_rate")).removesuffix("/s")),
    Column("refused", "refused", lambda t: t.rejected,
           lambda t: units.rate(t.rejected).removesuffix("/s")),
    Column("wait", "wait p95", lambda t: t.get("queue_wait_p95_seconds"),
           lambda t: units.seconds(t.get("queue_wait_p95_seconds"))),
    Column("service", "service", lambda t: t.get("service_seconds"),
           lambda t: units.seconds(t.get("service_seconds"))),
    Column("kv", "kv", lambda t: t.get("kv_usage"),
           lambda t: units.percent(t.get("kv_usage"), ratio=True)),
)  # fmt: skip
COLUMN_KEYS = tuple(c.key for c in COLUMNS)


def detail_text(target: TargetView) -> Text:
    """Every signal the target reported, in quell's words, three to a line."""
    head = Text.assemble((target.name, "bold"), f"  {target.role}")
    if target.queue:
        head.append(f" of {target.queue}")
    if target.replicas:
        head.append(f" · replicas {', '.join(target.replicas)}")
    head.append(f" · last sample {units.clock(target.ts)}", style="dim")
    cells = [f"{name} {_signal(name, value)}" for name, value in sorted(target.signals.items())]
    lines = [head]
    for start in range(0, len(cells), 3):
        lines.append(Text("  ".join(c.ljust(24) for c in cells[start : start + 3]).rstrip()))
    return Text("\n").join(lines)


def _signal(name: str, value: float) -> str:
    if name.endswith("_rate"):
        return units.rate(value)
    if name.endswith("_seconds"):
        return units.seconds(value)
    if name in ("kv_usage", "occupancy"):
        return units.percent(value, ratio=True)
    if not math.isfinite(value):
        return str(value)
    return units.count(round(value, 2))


class TargetDetail(Vertical):
    DEFAULT_CSS = """
    TargetDetail { height: 1fr; }
    TargetDetail > #detail-head { height: auto; max-height: 12; padding: 0 1; }
    TargetDetail > #detail-depth { height: 1; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield LiveStatic(id="detail-head")
        yield LiveStatic(id="detail-depth")
        yield RateChart(id="detail-chart")

    def set_target(self, target: TargetView, width: int) -> None:
        self.query_one("#detail-head", LiveStatic).show(target, lambda: detail_text(target))
        history = target.history
        depth = history.depth if history is not None else ()
        capacity = target.get("capacity")

        def depth_line() -> Text:
            line = Text("depth ", style="bold")
            line.append_text(sparkline(depth, max(10, width - 24), capacity))
            line.append(f" of {units.count(capacity)}", style="dim")
            return line

        self.query_one("#detail-depth", LiveStatic).show((depth, capacity, width), depth_line)
        self.query_one(RateChart).set_history(history)


class QueuesView(View):
    view_id = "queues"
    DEFAULT_CSS = """
    QueuesView > DataTable { height: 1fr; }
    QueuesView > TargetDetail { display: none; }
    QueuesView.-detail > DataTable { display: none; }
    QueuesView.-detail > TargetDetail { display: block; }
    """

    def __init__(self) -> None:
        super().__init__(id="queues")
        # None: the collector's order, each queue followed by its replicas.
        self.sort_column: str | None = None
        self.reverse = False
        self.opened: str | None = None
        self._cells: dict[tuple[str, str], tuple[str, object]] = {}
        self._order: list[str] = []

    def compose(self) -> ComposeResult:
        table: DataTable[Text] = DataTable(cursor_type="row", zebra_stripes=True, id="targets")
        for column in COLUMNS:
            table.add_column(column.label, key=column.key)
        yield table
        yield TargetDetail()

    def focus_main(self) -> None:
        self.query_one(DataTable).focus()

    def detail_target(self) -> str | None:
        return self.opened

    def refresh_view(self, update: Update) -> None:
        changed = False
        snapshot = update.snapshot
        table: DataTable[Text] = self.query_one(DataTable)
        names = [t.name for t in snapshot.targets]
        if names != self._order:
            self._order = names
            changed = True
        for gone in [str(k.value) for k in table.rows if k.value not in names]:
            table.remove_row(gone)
            for key in COLUMN_KEYS:
                self._cells.pop((gone, key), None)
        for target in snapshot.targets:
            if target.name not in table.rows:
                table.add_row(*(self._cell(target, c) for c in COLUMNS), key=target.name)
                changed = True
                continue
            for column in COLUMNS:
                shown = (column.show(target), column.value(target))
                if self._cells.get((target.name, column.key)) != shown:
                    # Cells are updated by key and only when changed: an idle
                    # table writes nothing to the terminal.
                    table.update_cell(target.name, column.key, self._cell(target, column))
                    changed = changed or column.key == self.sort_column
        if changed:
            self._sort(table)
        opened = snapshot.target(self.opened) if self.opened is not None else None
        if opened is not None:
            self.query_one(TargetDetail).set_target(opened, self.size.width)

    def _cell(self, target: TargetView, column: Column) -> Cell:
        text, value = column.show(target), column.value(target)
        self._cells[(target.name, column.key)] = (text, value)
        style = _occupancy_style(target) if column.key in ("occupancy", "depth") else ""
        if column.key == "target" and target.verdict is not None:
            style = "bold red"
        return cell(text, value, style)

    def _sort(self, table: DataTable[Text]) -> None:
        if self.sort_column is None:
            order = {name: index for index, name in enumerate(self._order)}
            table.sort("target", key=lambda value: order.get(value.sort_value[2], 1 << 30),
                       reverse=self.reverse)  # fmt: skip
        else:
            table.sort(self.sort_column, key=lambda value: value.sort_value, reverse=self.reverse)

    def cycle_sort(self) -> str:
        """The next column to sort by; after the last, the collector's order again."""
        keys: tuple[str | None, ...] = (None, *COLUMN_KEYS)
        self.sort_column = keys[(keys.index(self.sort_column) + 1) % len(keys)]
        self._sort(self.query_one(DataTable))
        return self.sort_column or "the collector's order"

    def flip_order(self) -> bool:
        self.reverse = not self.reverse
        self._sort(self.query_one(DataTable))
        return self.reverse

    def open_selected(self) -> str | None:
        table: DataTable[Text] = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        self.opened = str(row_key.value)
        self.add_class("-detail")
        return self.opened

    def close_detail(self) -> bool:
        if self.opened is None:
            return False
        self.opened = None
        self.remove_class("-detail")
        self.focus_main()
        return True

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        await self.app.run_action("open_target")
