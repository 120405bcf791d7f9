"""The signature chart as a widget: it draws to whatever size the layout gives it."""

from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text
from textual.widget import Widget

from console.tui.chart import signature_chart
from console.tui.snapshot import History


class RateChart(Widget):
    DEFAULT_CSS = """
    RateChart { height: 1fr; min-height: 5; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._history: History | None = None

    def set_history(self, history: History | None) -> None:
        if history == self._history:
            return
        self._history = history
        self.refresh()

    def render(self) -> RenderableType:
        history = self._history
        if history is None or not any(v is not None for v in history.served):
            return Text("no rates recorded yet (rates need two scrapes)", style="dim")
        width, height = self.size
        return signature_chart(history.offered, history.served, width, height, history.span_s)
