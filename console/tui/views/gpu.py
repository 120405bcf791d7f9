"""GPU: per device utilisation, memory, temperature, power, throttling and processes.

A host without a GPU or without the NVIDIA driver is normal (a CPU-only
gateway host), so that case is one clear panel saying which, never an
empty table or an error.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll

from console.tui import units
from console.tui.chart import level_bar
from console.tui.snapshot import GpuView
from console.tui.views.base import Update, View
from console.tui.widgets.live_static import LiveStatic


def no_gpu_panel(status: str | None) -> Panel:
    if status:
        why = Text(f"The collector says: {status}.")
    else:
        why = Text(
            "This store holds no GPU samples at this moment: the collecting host has no "
            "NVIDIA GPU, no driver, or GPU collection is off ([gpu] enabled = false)."
        )
    body = Text.assemble(
        ("No GPU to show.\n\n", "bold"), why,
        "\n\nGPU figures appear here when NVML answers: utilisation, memory, temperature, "
        "power against its limit, throttle reasons and the processes using each device.",
    )  # fmt: skip
    return Panel(body, title="GPU", title_align="left", border_style="yellow", padding=(1, 2))


def gpu_render(gpu: GpuView, width: int) -> RenderableType:
    if not gpu.devices:
        return no_gpu_panel(gpu.status)
    bar = max(10, min(30, width // 3))
    parts: list[RenderableType] = []
    for device in gpu.devices:
        s = device.signals
        used, total = s.get("gpu_memory_used_bytes"), s.get("gpu_memory_total_bytes")
        power, limit = s.get("gpu_power_watts"), s.get("gpu_power_limit_watts")
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_row(
            "utilisation",
            level_bar(s.get("gpu_utilization_percent"), 100.0, bar)
            + Text(f" {units.percent(s.get('gpu_utilization_percent'))}"),
        )
        grid.add_row(
            "memory",
            level_bar(used, total, bar) + Text(f" {units.size(used)} of {units.size(total)}"),
        )
        grid.add_row(
            "power",
            level_bar(power, limit, bar)
            + Text(f" {units.count(_round(power))} W of {units.count(_round(limit))} W"),
        )
        grid.add_row("temperature", f"{units.count(_round(s.get('gpu_temperature_celsius')))} °C")
        grid.add_row("SM clock", f"{units.count(_round(s.get('gpu_sm_clock_mhz')))} MHz")
        grid.add_row(
            "throttling",
            Text(", ".join(device.throttles), style="bold red")
            if device.throttles
            else Text("none", style="dim"),
        )
        processes = ", ".join(f"{pid} ({units.size(used)})" for pid, used in device.processes)
        grid.add_row("processes", processes or Text("none", style="dim"))
        parts.append(Panel(grid, title=f"GPU {device.name}", title_align="left"))
    return Group(*parts)  # fmt: skip


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class GpuScreenView(View):
    view_id = "gpu"

    def __init__(self) -> None:
        super().__init__(id="gpu")

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield LiveStatic(id="gpu-body")

    def refresh_view(self, update: Update) -> None:
        gpu = update.snapshot.gpu
        width = self.size.width or 80
        self.query_one("#gpu-body", LiveStatic).show((gpu, width), lambda: gpu_render(gpu, width))
