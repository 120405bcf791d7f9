"""Overview: the verdict banner, then each watched queue with its signature chart."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll

from console.tui import units
from console.tui.chart import level_bar
from console.tui.keys import LIVE
from console.tui.snapshot import TargetView
from console.tui.views.base import Update, View
from console.tui.widgets.banner import VerdictBanner, full_in
from console.tui.widgets.live_static import LiveStatic
from console.tui.widgets.rate_chart import RateChart

BAR_WIDTH = 20


def queue_head(queue: TargetView, wide: bool) -> Text:
    depth, capacity = queue.get("depth"), queue.get("capacity")
    head = Text.assemble((queue.name, "bold"), "  depth ")
    head.append(f"{units.count(depth)}/{units.count(capacity)} ")
    head.append_text(level_bar(depth, capacity, BAR_WIDTH * (2 if wide else 1)))
    head.append(f" {units.percent(queue.occupancy, ratio=True)}")
    head.append(f"  wait p95 {units.seconds(queue.get('queue_wait_p95_seconds'))}")
    if queue.time_to_full is not None:
        head.append("  full ", style="bold")
        head.append(full_in(queue.time_to_full), style="bold red")
    rates = Text.assemble(
        ("λ ", "bold yellow"), f"offered {units.rate(queue.get('offered_rate'))}  ",
        ("μ ", "bold green"), f"served {units.rate(queue.get('completed_rate'))}  ",
        f"running {units.count(queue.get('running'))}/{units.count(queue.get('workers'))}  ",
    )  # fmt: skip
    rates.append("refused ")
    if queue.rejections:
        rates.append(
            ", ".join(f"{reason} {units.rate(v)}" for reason, v in queue.rejections.items()),
            style="red",
        )
    else:
        rates.append("none", style="dim")
    return Text("\n").join((head, rates))


class QueuePanel(Vertical):
    DEFAULT_CSS = """
    QueuePanel { height: 1fr; min-height: 9; border-top: solid $primary-darken-2; }
    QueuePanel.-many { height: 14; }
    QueuePanel > .queue-head { height: auto; padding: 0 1; }
    """

    def __init__(self, queue: TargetView) -> None:
        super().__init__()
        self._queue = queue
        self._wide = False

    def compose(self) -> ComposeResult:
        yield LiveStatic(classes="queue-head")
        yield RateChart()

    def on_mount(self) -> None:
        self.set_queue(self._queue, self._wide)

    def set_queue(self, queue: TargetView, wide: bool) -> None:
        self._queue, self._wide = queue, wide
        heads = self.query(".queue-head").results(LiveStatic)
        head = next(heads, None)
        if head is None:  # not composed yet: on_mount shows it
            return
        key = (queue.name, tuple(sorted(queue.signals.items())), tuple(queue.rejections.items()),
               queue.time_to_full, wide)  # fmt: skip
        head.show(key, lambda: queue_head(queue, wide))
        if queue.history is not None:
            # A refresh made for another screen reads no history; keep the last.
            self.query_one(RateChart).set_history(queue.history)


class OverviewView(View):
    view_id = "overview"
    DEFAULT_CSS = """
    OverviewView > #queue-panels { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__(id="overview")
        self._names: tuple[str, ...] = ()

    def compose(self) -> ComposeResult:
        yield VerdictBanner(id="banner")
        yield VerticalScroll(id="queue-panels")

    def refresh_view(self, update: Update) -> None:
        snapshot = update.snapshot
        queues = snapshot.queues
        self.query_one(VerdictBanner).set_verdicts(
            # Playbooks run on live systems only: no key to offer in a replay.
            queues,
            snapshot.now,
            update.read_only or update.mode != LIVE,
            update.key("playbook.run"),
        )
        holder = self.query_one("#queue-panels", VerticalScroll)
        names = tuple(q.name for q in queues)
        wide = self.app.size.width >= 120
        if names != self._names:
            self._names = names
            holder.remove_children()
            holder.mount_all(QueuePanel(q) for q in queues)
        for panel, queue in zip(holder.query(QueuePanel), queues, strict=False):
            panel.set_class(len(queues) > 1, "-many")
            panel.set_queue(queue, wide)
