"""The post-incident report: timeline, verdict and evidence, charts, capacity advice.

Everything comes from the store: the incident row (its timeline and
evidence), the alerts and playbook runs recorded while it was open, and the
raw samples around it. Charts are plain SVG drawn here, so the report needs
nothing but a browser or a Markdown viewer to read.
"""

from __future__ import annotations

import html
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collectors.diagnosis import Diagnoser, capacity_advice
from collectors.model import Sample
from collectors.store import Store
from collectors.watch import observation

MARGIN_S = 30.0
# Charts run on past the close to show the recovery; the timeline stops
# sooner so the next incident's steps are not read as this one's.
AFTER_S = 60.0
TIMELINE_AFTER_S = 20.0
# (signal, how per-label series combine) for each chart.
CHARTS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "rates": (
        "offered vs service rate (requests/s)",
        [
            ("offered_rate", "sum", "#d9480f"),
            ("completed_rate", "sum", "#1971c2"),
            ("rejected_rate", "sum", "#868e96"),
        ],
    ),
    "depth": (
        "queue depth against capacity",
        [
            ("depth", "sum", "#d9480f"),
            ("capacity", "max", "#868e96"),
        ],
    ),
    "wait": ("queue wait p95 (s)", [("queue_wait_p95_seconds", "max", "#5f3dc4")]),
}
LABELS = {
    "completed_rate": "service rate",
    "offered_rate": "offered rate",
    "rejected_rate": "rejected (all reasons)",
}


class ReportError(RuntimeError):
    pass


@dataclass
class Chart:
    key: str
    title: str
    lines: list[tuple[str, str, list[tuple[float, float]]]]  # (label, colour, points)
    marks: list[tuple[float, str]] = field(default_factory=list)

    def svg(self, width: int = 760, height: int = 240) -> str:
        left, right, top, bottom = 56, 16, 28, 36
        points = [p for _, _, pts in self.lines for p in pts]
        if not points:
            return (
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="60">'
                f'<text x="10" y="30" font-family="sans-serif" font-size="13">'
                f"{html.escape(self.title)}: no samples</text></svg>"
            )
        t0 = min(t for t, _ in points)
        t1 = max(max(t for t, _ in points), t0 + 1)
        vmax = max(max(v for _, v in points), 1e-9) * 1.1
        w, h = width - left - right, height - top - bottom

        def x(t: float) -> float:
            return left + (t - t0) / (t1 - t0) * w

        def y(v: float) -> float:
            return top + h - v / vmax * h

        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{left}" y="16" font-size="13" font-weight="bold">'
            f"{html.escape(self.title)}</text>",
        ]
        for i in range(5):
            value = vmax * i / 4
            parts.append(
                f'<line x1="{left}" x2="{left + w}" y1="{y(value):.1f}" '
                f'y2="{y(value):.1f}" stroke="#e9ecef"/>'
            )
            parts.append(
                f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>'
            )
        step = _nice_step(t1 - t0)
        tick = 0.0
        while tick <= t1 - t0:
            parts.append(
                f'<text x="{x(t0 + tick):.1f}" y="{top + h + 16}" text-anchor="middle">'
                f"{tick:.0f}s</text>"
            )
            tick += step
        for when, label in self.marks:
            if t0 <= when <= t1:
                parts.append(
                    f'<line x1="{x(when):.1f}" x2="{x(when):.1f}" y1="{top}" '
                    f'y2="{top + h}" stroke="#495057" stroke-dasharray="4 3"/>'
                )
                parts.append(
                    f'<text x="{x(when) + 3:.1f}" y="{top + 10}" fill="#495057">'
                    f"{html.escape(label)}</text>"
                )
        legend_x = left + w
        for label, colour, pts in reversed(self.lines):
            if pts:
                path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{path}"/>'
                )
            legend_x -= 8 + 7 * len(label) + 14
            parts.append(
                f'<rect x="{legend_x}" y="8" width="10" height="10" fill="{colour}"/>'
                f'<text x="{legend_x + 14}" y="17">{html.escape(label)}</text>'
            )
        parts.append(
            f'<text x="{left + w / 2:.0f}" y="{height - 4}" text-anchor="middle" '
            f'fill="#868e96">seconds from the start of the window</text></svg>'
        )
        return "".join(parts)


def _nice_step(span: float) -> float:
    for step in (5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if span / step <= 10:
            return float(step)
    return span / 10


@dataclass
class Report:
    incident: dict[str, Any]
    start: float
    end: float
    timeline: list[tuple[float, str]]
    runs: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    charts: list[Chart]
    advice: list[tuple[str, Any, str]]


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


async def build(store_path: Path, incident_id: int | None = None) -> Report:
    store = await Store.open(store_path, read_only=True)
    try:
        incidents = await store.incidents()
        if not incidents:
            raise ReportError(f"no incident recorded in {store_path}")
        if incident_id is None:
            incident = incidents[-1]
        else:
            found = [i for i in incidents if i["id"] == incident_id]
            if not found:
                known = ", ".join(str(i["id"]) for i in incidents[-10:])
                raise ReportError(f"no incident {incident_id} in {store_path}; recent: {known}")
            incident = found[0]
        opened = float(incident["opened"])
        closed = incident["closed"]
        start = opened - MARGIN_S
        end = (float(closed) if closed else time.time()) + AFTER_S
        target = incident["target"]
        window = await store.window(None, {"target": target}, seconds=end - start, now=end)
        last = (float(closed) if closed else time.time()) + TIMELINE_AFTER_S
        alerts = [a for a in await store.alerts(since=start) if a["ts"] <= last]
    finally:
        await store.close()
    runs = _runs(store_path, start, last)
    marks = [(opened, "verdict")] + ([(float(closed), "closed")] if closed else [])
    marks += [(r["ts"], r["playbook"]) for r in runs if r["status"] != "dry_run"]
    charts = _charts(window, start, marks)
    return Report(
        incident,
        start,
        end,
        _timeline(incident, alerts, runs),
        runs,
        alerts,
        charts,
        _advice(window, target),
    )


def _runs(store_path: Path, start: float, end: float) -> list[dict[str, Any]]:
    from playbooks.journal import Journal

    journal = Journal(store_path, read_only=True)
    try:
        return sorted(
            (r for r in journal.runs(limit=500, since=start) if r["ts"] <= end),
            key=lambda r: r["id"],
        )
    finally:
        journal.close()


def _timeline(
    incident: dict[str, Any], alerts: list[dict[str, Any]], runs: list[dict[str, Any]]
) -> list[tuple[float, str]]:
    steps: list[tuple[float, str]] = []
    for step in incident["timeline"]:
        what = step["what"]
        cause = f" {step['cause']}" if step.get("cause") else ""
        confidence = step.get("confidence")
        extra = f" (confidence {confidence:.0%})" if isinstance(confidence, int | float) else ""
        label = {"opened": "verdict", "closed": "recovered: verdict closed"}.get(what, what)
        steps.append((float(step["ts"]), f"{label}{cause}{extra}"))
    for alert in alerts:
        steps.append((alert["ts"], f"alert {alert['name']} {alert['status']} ({alert['source']})"))
    for run in runs:
        changed = [c for c in run.get("changes", []) if not c.get("unchanged")]
        values = "; ".join(f"{c['knob']} {c['before']} -> {c['after']}" for c in changed)
        steps.append(
            (
                run["ts"],
                f"playbook {run['playbook']} by {run.get('who', '?')} "
                f"({run['trigger']}): {run['status']}" + (f" — {values}" if values else ""),
            )
        )
    return sorted(steps)


def _combine(series: dict[Any, list[Any]], name: str, how: str) -> list[tuple[float, float]]:
    by_ts: dict[float, list[float]] = defaultdict(list)
    for (series_name, _labels), points in series.items():
        if series_name == name:
            for point in points:
                by_ts[round(point.ts, 1)].append(point.value)
    combine = sum if how == "sum" else max
    return sorted((ts, float(combine(values))) for ts, values in by_ts.items())


def _charts(
    window: dict[Any, list[Any]], start: float, marks: list[tuple[float, str]]
) -> list[Chart]:
    charts = []
    for key, (title, lines) in CHARTS.items():
        drawn = []
        for name, how, colour in lines:
            points = [(ts - start, v) for ts, v in _combine(window, name, how)]
            drawn.append((LABELS.get(name, name.replace("_", " ")), colour, points))
        charts.append(Chart(key, title, drawn, [(t - start, label) for t, label in marks]))
    return charts


def _advice(window: dict[Any, list[Any]], target: str) -> list[tuple[str, Any, str]]:
    ticks: dict[float, list[Sample]] = defaultdict(list)
    for (name, labels), points in window.items():
        for point in points:
            ticks[round(point.ts, 1)].append(Sample(name, labels, point.ts, point.value))
    diagnoser = Diagnoser(target)
    for ts in sorted(ticks):
        diagnoser.observe(observation(ts, ticks[ts], {}))
    return [
        (a.what, a.value, a.assumption)
        for a in capacity_advice(list(diagnoser.window), diagnoser.baseline)
    ]


def _evidence_rows(evidence: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in evidence.items() if v is not None and k != "strong"]


def markdown(report: Report, chart_files: Sequence[str]) -> str:
    i = report.incident
    lines = [
        f"# Incident {i['id']}: {i['cause']} on {i['target']}",
        "",
        f"- opened {_clock(i['opened'])}"
        + (
            f", closed {_clock(i['closed'])} ({i['closed'] - i['opened']:.0f} s)"
            if i["closed"]
            else ", still open"
        ),
        f"- verdict: **{i['cause']}**, confidence {i['confidence']:.0%}",
        f"- playbook runs: {len(report.runs)}; alerts: {len(report.alerts)}",
        "",
        "## Timeline",
        "",
        "| time | what |",
        "|---|---|",
    ]
    lines += [f"| {_clock(ts)} | {what.replace('|', '/')} |" for ts, what in report.timeline]
    lines += ["", "## Evidence", "", "| signal | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _evidence_rows(i["evidence"])]
    lines += ["", "## Charts", ""]
    for chart, path in zip(report.charts, chart_files, strict=True):
        lines += [f"![{chart.title}]({path})", ""]
    lines += ["## Capacity advice", "", "| what | value | assumes |", "|---|---|---|"]
    lines += [f"| {w} | {v} | {a} |" for w, v, a in report.advice]
    return "\n".join(lines) + "\n"


def page(report: Report) -> str:
    i = report.incident
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(_clock(ts))}</td><td>{esc(what)}</td></tr>" for ts, what in report.timeline
    )
    evidence = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in _evidence_rows(i["evidence"])
    )
    advice = "".join(
        f"<tr><td>{esc(w)}</td><td>{esc(str(v))}</td><td>{esc(a)}</td></tr>"
        for w, v, a in report.advice
    )
    charts = "".join(f"<figure>{c.svg()}</figure>" for c in report.charts)
    span = (
        f"closed {esc(_clock(i['closed']))} ({i['closed'] - i['opened']:.0f} s)"
        if i["closed"]
        else "still open"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Incident {i["id"]}: {esc(i["cause"])}</title>
<style>
body {{ font-family: sans-serif; max-width: 820px; margin: 2em auto; color: #212529; }}
table {{ border-collapse: collapse; width: 100%; font-size: 14px; }}
td, th {{ border-bottom: 1px solid #dee2e6; padding: 4px 8px; text-align: left;
          vertical-align: top; }}
figure {{ margin: 1em 0; }}
</style></head><body>
<h1>Incident {i["id"]}: {esc(i["cause"])} on {esc(i["target"])}</h1>
<p>Opened {esc(_clock(i["opened"]))}, {span}. Verdict <b>{esc(i["cause"])}</b>,
confidence {i["confidence"]:.0%}. {len(report.runs)} playbook run(s),
{len(report.alerts)} alert(s).</p>
<h2>Timeline</h2><table>{rows}</table>
<h2>Evidence</h2><table>{evidence}</table>
<h2>Charts</h2>{charts}
<h2>Capacity advice</h2><table><tr><th>what</th><th>value</th><th>assumes</th></tr>{advice}</table>
</body></html>
"""


def write(report: Report, out: Path) -> list[Path]:
    """Write the report; the files written (the page, and the charts beside Markdown)."""
    if out.suffix == ".html":
        out.write_text(page(report))
        return [out]
    if out.suffix != ".md":
        raise ReportError(f"--out must end in .md or .html, got {out.name}")
    written = [out]
    names = []
    for chart in report.charts:
        path = out.with_name(f"{out.stem}-{chart.key}.svg")
        path.write_text(chart.svg())
        written.append(path)
        names.append(path.name)
    out.write_text(markdown(report, names))
    return written
