"""The verdict, in full on the Overview and as one line on every other screen.

The banner answers the on-call engineer's three questions in order: is a
queue out of balance and why (cause, confidence), what shows it (the
evidence in quell's words), and what to run (the recommended playbooks).
Under ``--read-only`` the way to run them is not offered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.text import Text

from console.tui import units
from console.tui.snapshot import TargetView, VerdictView
from console.tui.widgets.live_static import LiveStatic

ALARM_STYLE = "bold white on red"
HEALTHY_STYLE = "bold black on green"
WAITING_STYLE = "bold black on yellow"


def _signed_rate(value: float) -> str:
    return f"{value:+.1f}/s"


# The evidence worth a place in the banner, in reading order; the Diagnosis
# screen lists all of it.
EVIDENCE: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("offered_rate", "offered", units.rate),
    ("service_rate", "served", units.rate),
    ("occupancy", "occupancy", lambda v: units.percent(v, ratio=True)),
    ("depth_slope_per_s", "depth", _signed_rate),
    ("queue_full_rate", "refused full", units.rate),
    ("usual_offered_rate", "usual offered", units.rate),
    ("service_time_s", "service", units.seconds),
    ("usual_service_time_s", "usual service", units.seconds),
    ("service_rate_now", "served now", units.rate),
    ("retried_share", "retries", lambda v: units.percent(v, ratio=True)),
    ("saturated", "saturated", lambda v: ", ".join(v)),
    ("hot_replica", "hot replica", lambda v: f"{v.get('replica')} (depth {v.get('depth')})"),
    ("kv_usage", "kv cache", lambda v: units.percent(v, ratio=True)),
    ("host_cpu_percent", "host cpu", units.percent),
)


def evidence_line(evidence: dict[str, Any], limit: int = 8) -> str:
    parts = []
    for key, label, show in EVIDENCE:
        value = evidence.get(key)
        if value is None or value == []:
            continue
        try:
            parts.append(f"{label} {show(value)}")
        except (TypeError, ValueError, AttributeError):
            parts.append(f"{label} {value}")
        if len(parts) >= limit:
            break
    return " · ".join(parts)


def full_in(time_to_full: float) -> str:
    return "now" if time_to_full < 0.5 else units.seconds(time_to_full)


def verdict_headline(verdict: VerdictView, now: float) -> Text:
    """One line at 80 columns for the usual cause and target names."""
    text = Text.assemble(
        (" IMBALANCE ", ALARM_STYLE), " ", (verdict.target, "bold"), ": ",
        (verdict.cause, "bold red"), f", confidence {verdict.confidence:.0%}",
    )  # fmt: skip
    if verdict.since is not None:
        text.append(f" · for {units.seconds(max(0.0, now - verdict.since))}")
    if verdict.time_to_full is not None:
        text.append(" · full ", style="bold")
        text.append(full_in(verdict.time_to_full), style="bold red")
    return text


def playbooks_line(verdict: VerdictView, read_only: bool, run_key: str) -> Text:
    text = Text("playbooks: ", style="bold")
    text.append(", ".join(verdict.playbooks) or "none for this cause")
    if verdict.playbooks and not read_only:
        text.append(f" · {run_key} runs the first", style="dim")
    return text


def banner(queues: Sequence[TargetView], now: float, read_only: bool, run_key: str = "r") -> Text:
    if not queues:
        return Text.assemble((" WAITING ", WAITING_STYLE), " no watched queue has reported yet")
    lines: list[Text] = []
    healthy = []
    for queue in queues:
        verdict = queue.verdict
        if verdict is None:
            healthy.append(queue.name)
            continue
        lines.append(verdict_headline(verdict, now))
        evidence = evidence_line(verdict.evidence, limit=6)
        if evidence:
            lines.append(Text("evidence: ", style="bold") + Text(evidence))
        lines.append(playbooks_line(verdict, read_only, run_key))
    if healthy:
        lines.append(
            Text.assemble(
                (" HEALTHY ", HEALTHY_STYLE), " ", ", ".join(healthy),
                ": offered load within the service rate",
            )
        )  # fmt: skip
    return Text("\n").join(lines)


def strip(queues: Sequence[TargetView], now: float) -> Text:
    """One line for the top of the other screens."""
    alarms = [q.verdict for q in queues if q.verdict is not None]
    if not queues:
        return Text.assemble((" WAITING ", WAITING_STYLE), " no watched queue has reported yet")
    if not alarms:
        names = ", ".join(q.name for q in queues)
        return Text.assemble((" HEALTHY ", HEALTHY_STYLE), f" {names}")
    verdict = alarms[0]
    text = verdict_headline(verdict, now)
    if len(alarms) > 1:
        text.append(f" (+{len(alarms) - 1} more)")
    return text


class VerdictBanner(LiveStatic):
    DEFAULT_CSS = """
    VerdictBanner { height: auto; padding: 0 1; background: $boost; }
    """

    def set_verdicts(
        self, queues: Sequence[TargetView], now: float, read_only: bool, run_key: str
    ) -> None:
        # The "since" duration moves every second only while a verdict is open.
        key = (
            tuple((q.name, q.verdict) for q in queues),
            read_only,
            run_key,
            int(now) if any(q.verdict for q in queues) else None,
        )
        self.show(key, lambda: banner(queues, now, read_only, run_key))


class VerdictStrip(LiveStatic):
    DEFAULT_CSS = """
    VerdictStrip { height: 1; padding: 0 1; background: $boost; }
    """

    def set_verdicts(self, queues: Sequence[TargetView], now: float) -> None:
        key = (
            tuple((q.name, q.verdict) for q in queues),
            int(now) if any(q.verdict for q in queues) else None,
        )
        self.show(key, lambda: strip(queues, now))
