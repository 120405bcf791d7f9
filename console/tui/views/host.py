"""Host: CPU per core, memory, load, network, accept-queue overflows, the watched processes."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll

from console.tui import units
from console.tui.chart import level_bar
from console.tui.snapshot import HostView
from console.tui.views.base import Update, View
from console.tui.widgets.live_static import LiveStatic


def _meter(label: str, value: float | None, width: int) -> Text:
    line = Text(f"{label:<9}", style="bold")
    line.append_text(level_bar(value, 100.0, width))
    line.append(f" {units.percent(value):>4}")
    return line


def host_render(host: HostView, width: int) -> RenderableType:
    if host.ts is None:
        return Text(
            "No host samples at this moment: the collector's host source is off or has not "
            "ticked yet.",
            style="dim",
        )
    bar = max(10, min(40, width // 2 - 16))
    s = host.signals
    meters: list[RenderableType] = [_meter("cpu", s.get("host_cpu_percent"), bar)]
    meters += [_meter(f"  core {core}", value, bar) for core, value in host.cores]
    meters.append(_meter("memory", s.get("host_memory_percent"), bar))
    meters.append(_meter("swap", s.get("host_swap_percent"), bar))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row(
        "load 1m", units.count(_round(s.get("host_load1"))),
        "iowait", units.percent(s.get("host_cpu_iowait_percent")),
    )  # fmt: skip
    facts.add_row(
        "net in", units.byte_rate(s.get("host_net_recv_bytes_rate")),
        "net out", units.byte_rate(s.get("host_net_sent_bytes_rate")),
    )  # fmt: skip
    facts.add_row(
        "drops", units.rate(s.get("host_net_drops_rate")),
        "errors", units.rate(s.get("host_net_errors_rate")),
    )  # fmt: skip
    overflows = s.get("host_listen_overflows_rate")
    facts.add_row(
        "listen overflows",
        Text(units.rate(overflows), style="bold red" if overflows else ""),
        "listen drops", units.rate(s.get("host_listen_drops_rate")),
    )  # fmt: skip
    parts: list[RenderableType] = [Group(*meters), Text(""), facts]
    if host.listen:
        listen = Table(title="accept queues", title_justify="left", box=None, padding=(0, 2))
        for column in ("port", "waiting", "backlog"):
            listen.add_column(column, justify="right")
        for port, depth, capacity in host.listen:
            listen.add_row(port, units.count(depth), units.count(capacity))
        parts += [Text(""), listen]
    processes = Table(title="watched processes", title_justify="left", box=None, padding=(0, 2))
    for column in ("pid", "name", "cpu", "rss", "threads", "fds"):
        processes.add_column(column, justify="left" if column == "name" else "right")
    for row in host.processes:
        processes.add_row(
            row.pid, row.name, units.percent(row.cpu_percent), units.size(row.rss_bytes),
            units.count(row.threads), units.count(row.open_files),
        )  # fmt: skip
    if not host.processes:
        processes.add_row("", Text("none watched ([host] watch in the config)", style="dim"))
    parts += [Text(""), processes]
    return Group(*parts)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class HostScreenView(View):
    view_id = "host"

    def __init__(self) -> None:
        super().__init__(id="host")

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield LiveStatic(id="host-body")

    def refresh_view(self, update: Update) -> None:
        host = update.snapshot.host
        width = self.size.width or 80
        self.query_one("#host-body", LiveStatic).show(
            (host, width), lambda: host_render(host, width)
        )
