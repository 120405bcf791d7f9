"""What the console shows at one moment, read from the store as of that moment.

Live, attached and replay screens all come from here: the only difference is
the moment asked for (``now`` or a replay cursor). Watched queues are the
targets the diagnosis writes verdicts for; a queue's replicas are the
upstreams it names, or every other target when there is one queue. The
verdict of a tick is its ``verdict`` samples (cause and confidence, exact
for every tick); the evidence and the time it opened come from the open
incident, which the same diagnosis records.

Reading and summarising are split: ``read_*`` make the store queries,
the plain functions below them turn samples into views and are tested on
samples alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from collectors.diagnosis import PLAYBOOKS, Advice, Diagnoser, capacity_advice
from collectors.model import Labels, Sample
from collectors.signals import SIGNALS
from collectors.summary import summarize
from collectors.watch import observation, signals_of

if TYPE_CHECKING:
    from collectors.store import Bucket, Store

# A sample older than this at the moment shown is not the present: its
# source is down or gone.
FRESH_S = 3.0
# What the diagnosis writes back per queue; not a signal of the queue itself.
DIAGNOSIS_SERIES = frozenset({"verdict", "imbalance", "occupancy", "time_to_full_seconds"})
HISTORY_SERIES = ("offered_rate", "completed_rate", "rejected_rate", "depth")
ADVICE_WINDOW_S = 120.0


@dataclass(frozen=True, slots=True)
class History:
    """One value per ``step_s`` from ``start``, oldest first; None where nothing was recorded."""

    start: float
    step_s: float
    offered: tuple[float | None, ...]
    served: tuple[float | None, ...]
    depth: tuple[float | None, ...]

    @property
    def span_s(self) -> float:
        return self.step_s * len(self.served)


@dataclass(frozen=True, slots=True)
class VerdictView:
    target: str
    cause: str
    confidence: float
    since: float | None
    time_to_full: float | None
    evidence: dict[str, Any]
    playbooks: tuple[str, ...]
    incident_id: int | None = None


@dataclass(frozen=True, slots=True)
class TargetView:
    name: str
    role: str  # "queue", "replica" or "target"
    queue: str | None  # for a replica, the queue it serves
    ts: float  # its newest sample
    signals: dict[str, float]
    rejections: dict[str, float]  # reason -> per second, only reasons seen
    replicas: tuple[str, ...] = ()
    verdict: VerdictView | None = None
    time_to_full: float | None = None
    history: History | None = None

    def get(self, name: str) -> float | None:
        return self.signals.get(name)

    @property
    def occupancy(self) -> float | None:
        depth, capacity = self.get("depth"), self.get("capacity")
        return depth / capacity if depth is not None and capacity else None

    @property
    def rejected(self) -> float | None:
        return sum(self.rejections.values()) if self.rejections else self.get("rejected_rate")


@dataclass(frozen=True, slots=True)
class ProcessRow:
    pid: str
    name: str
    cpu_percent: float | None
    rss_bytes: float | None
    threads: float | None
    open_files: float | None


@dataclass(frozen=True, slots=True)
class HostView:
    ts: float | None
    signals: dict[str, float]
    cores: tuple[tuple[str, float], ...]
    listen: tuple[tuple[str, float, float | None], ...]  # port, depth, capacity
    processes: tuple[ProcessRow, ...]


@dataclass(frozen=True, slots=True)
class GpuDevice:
    name: str  # "0", or "0/mig 1"
    signals: dict[str, float]
    throttles: tuple[str, ...]
    processes: tuple[tuple[str, float], ...]  # pid, bytes


@dataclass(frozen=True, slots=True)
class GpuView:
    devices: tuple[GpuDevice, ...]
    # Why there is nothing to show, when the collector said (live in-process).
    status: str | None = None


@dataclass(frozen=True, slots=True)
class IncidentView:
    id: int
    target: str
    cause: str
    opened: float
    closed: float | None
    confidence: float
    evidence: dict[str, Any]
    timeline: tuple[dict[str, Any], ...]

    def open_at(self, ts: float) -> bool:
        return self.opened <= ts and (self.closed is None or self.closed > ts)


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    targets: tuple[TargetView, ...]
    host: HostView
    gpu: GpuView
    incidents: tuple[IncidentView, ...]

    @property
    def queues(self) -> tuple[TargetView, ...]:
        return tuple(t for t in self.targets if t.role == "queue")

    def target(self, name: str) -> TargetView | None:
        return next((t for t in self.targets if t.name == name), None)

    @property
    def verdicts(self) -> tuple[VerdictView, ...]:
        return tuple(q.verdict for q in self.queues if q.verdict is not None)

    @property
    def newest(self) -> float | None:
        stamps = [t.ts for t in self.targets]
        if self.host.ts is not None:
            stamps.append(self.host.ts)
        return max(stamps, default=None)


@dataclass(frozen=True, slots=True)
class Wants:
    """Which of the costlier reads a refresh needs (only what is on screen)."""

    charts: bool = True  # every queue's history, for the overview
    detail: str | None = None  # one target's history, for the Queues drill-in
    chart_s: float = 300.0


@dataclass(frozen=True, slots=True)
class AdviceView:
    queue: str
    ticks: int
    now: dict[str, Any]  # the latest assessment's numbers
    advice: tuple[Advice, ...]


# -- reading ---------------------------------------------------------------------


async def read_snapshot(
    store: Store, now: float, wants: Wants = Wants(), gpu_status: str | None = None
) -> Snapshot:
    latest = await read_latest(store, now)
    incidents = incidents_of(await store.incidents(), now)
    targets = list(targets_of(latest, incidents, now))
    for index, target in enumerate(targets):
        if (wants.charts and target.role == "queue") or target.name == wants.detail:
            history = await read_history(store, target.name, now, wants.chart_s)
            targets[index] = _with_history(target, history)
    return Snapshot(
        now=now,
        targets=tuple(targets),
        host=host_of(s for s in latest if s.series.startswith(("host_", "process_"))),
        gpu=gpu_of([s for s in latest if s.series.startswith("gpu_")], gpu_status),
        incidents=incidents,
    )


async def read_latest(store: Store, now: float) -> list[Sample]:
    """The newest sample of every series within ``FRESH_S`` before ``now``.

    Read as a short window rather than with ``Store.latest``, which takes
    each series' newest row of the whole minute and then drops it when it
    lies after ``now``: right for the present, empty for a replay cursor in
    the middle of a recorded minute.
    """
    window = await store.window(None, seconds=FRESH_S, now=now)
    return [
        Sample(name, labels, points[-1].ts, points[-1].value)
        for (name, labels), points in window.items()
        if points
    ]


def _with_history(target: TargetView, history: History) -> TargetView:
    return TargetView(
        target.name, target.role, target.queue, target.ts, target.signals, target.rejections,
        target.replicas, target.verdict, target.time_to_full, history,
    )  # fmt: skip


async def read_history(store: Store, target: str, now: float, span_s: float) -> History:
    step_s = 1.0 if span_s <= 600 else span_s / 600
    points = max(1, round(span_s / step_s))
    start = now - points * step_s
    where = {"target": target}
    names = [n for n in HISTORY_SERIES if n != "rejected_rate"]
    result = await store.range(names, where, start=start, end=now, points=points)
    series = dict(result.series)
    if not any(name == "offered_rate" for name, _ in series):
        # Refusals (a series per reason and priority: most of the rows) are
        # read only when arrivals must be derived from them.
        refused = await store.range("rejected_rate", where, start=start, end=now, points=points)
        series.update(refused.series)
    return history_of(series, start, result.step_s or step_s, points)


async def read_advice(
    store: Store, now: float, queue: str, replicas: Sequence[str], window_s: float = ADVICE_WINDOW_S
) -> AdviceView:
    """Capacity advice for one queue from the recorded window, as of ``now``.

    A fresh Diagnoser replays the window, so the advice rests on the same
    baseline whichever process recorded the data.
    """
    ticks: dict[float, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for part in (queue, *replicas):
        window = await store.window(None, {"target": part}, seconds=window_s, now=now)
        _regroup(window, part, ticks)
    host = await store.window(
        ["host_cpu_percent", "gpu_utilization_percent"], seconds=window_s, now=now
    )
    _regroup(host, "", ticks)
    diagnoser = Diagnoser(queue)
    for ts in sorted(ticks):
        parts = ticks[ts]
        if parts.get(queue):
            diagnoser.observe(
                observation(ts, parts[queue], {r: parts.get(r, []) for r in replicas}, parts[""])
            )
    last = diagnoser.last
    found = {} if last is None else {
        k: v for k, v in last.evidence.items() if v is not None and k != "strong"
    }  # fmt: skip
    advice = capacity_advice(list(diagnoser.window), diagnoser.baseline)
    return AdviceView(queue, len(diagnoser.window), found, tuple(advice))


def _regroup(
    window: Mapping[tuple[str, Labels], Sequence[Any]],
    part: str,
    ticks: dict[float, dict[str, list[Sample]]],
) -> None:
    for (name, labels), points in window.items():
        if name in DIAGNOSIS_SERIES:
            continue
        for point in points:
            ticks[point.ts][part].append(Sample(name, labels, point.ts, point.value))


# -- summarising -------------------------------------------------------------------


def incidents_of(rows: Iterable[Mapping[str, Any]], now: float) -> tuple[IncidentView, ...]:
    """Incidents opened by ``now``; one closed after ``now`` is shown as still open."""
    found = []
    for row in rows:
        if row["opened"] > now:
            continue
        closed = row["closed"] if row["closed"] is not None and row["closed"] <= now else None
        timeline = tuple(step for step in row["timeline"] if step.get("ts", 0) <= now)
        # The row holds the latest cause; a replay shows the one of its moment.
        causes = [str(step["cause"]) for step in timeline if step.get("cause")]
        cause = causes[-1] if causes else str(row["cause"])
        found.append(
            IncidentView(
                int(row["id"]), str(row["target"]), cause, float(row["opened"]),
                closed, float(row["confidence"]), dict(row["evidence"]), timeline,
            )
        )  # fmt: skip
    return tuple(found)


def targets_of(
    latest: Sequence[Sample], incidents: Sequence[IncidentView], now: float
) -> list[TargetView]:
    by_target: dict[str, list[Sample]] = defaultdict(list)
    for sample in latest:
        name = sample.label("target")
        if name:
            by_target[name].append(sample)
    queues = sorted(t for t, samples in by_target.items()
                    if any(s.series == "imbalance" for s in samples))  # fmt: skip
    upstreams = {
        t: {s.label("upstream") for s in samples if s.label("upstream")}
        for t, samples in by_target.items()
    }
    if not queues:
        # No diagnosis in this store: a target that holds a queue and is no
        # other target's upstream is a queue of its own.
        named = set().union(*upstreams.values()) if upstreams else set()
        queues = sorted(
            t
            for t, samples in by_target.items()
            if t not in named and any(s.series == "capacity" for s in samples)
        )
    owner: dict[str, str] = {}
    for queue in queues:
        for upstream in sorted(upstreams.get(queue, ())):
            if upstream in by_target and upstream not in queues:
                owner.setdefault(upstream, queue)
    if len(queues) == 1:
        for name in by_target:
            if name not in queues:
                owner.setdefault(name, queues[0])
    views = []
    for name in sorted(by_target, key=lambda n: (n not in queues, owner.get(n, n), n)):
        samples = by_target[name]
        own = [s for s in samples if s.series not in DIAGNOSIS_SERIES]
        is_queue = name in queues
        views.append(
            TargetView(
                name=name,
                role="queue" if is_queue else "replica" if name in owner else "target",
                queue=owner.get(name),
                ts=max(s.ts for s in samples),
                signals=signals_of(own),
                rejections=rejections_of(own),
                replicas=tuple(sorted(r for r, q in owner.items() if q == name)),
                verdict=verdict_of(name, samples, incidents, now) if is_queue else None,
                time_to_full=time_to_full_of(samples) if is_queue else None,
            )
        )
    return views


def rejections_of(samples: Sequence[Sample]) -> dict[str, float]:
    """Refusals per second by reason; a source with one undivided count is "rejected"."""
    _, parts = summarize(s for s in samples if s.series == "rejected_rate")
    by_reason: dict[str, float] = defaultdict(float)
    for part in parts.get("rejected_rate", []):
        by_reason[part.labels.get("reason", "rejected")] += part.value
    if not by_reason:
        total = sum(s.value for s in samples if s.series == "rejected_rate")
        if total:
            by_reason["rejected"] = total
    return {reason: rate for reason, rate in sorted(by_reason.items()) if rate > 0}


def verdict_of(
    target: str, samples: Sequence[Sample], incidents: Sequence[IncidentView], now: float
) -> VerdictView | None:
    scored = [(s.value, s.label("cause")) for s in samples if s.series == "verdict" and s.value > 0]
    incident = next((i for i in reversed(incidents) if i.target == target and i.open_at(now)), None)
    has_verdict_series = any(s.series == "verdict" for s in samples)
    if scored:
        confidence, cause = max(scored)
    elif incident is not None and not has_verdict_series:
        # A store without per-tick verdict samples: the incident is all we have.
        confidence, cause = incident.confidence, incident.cause
    else:
        return None
    # The incident follows cause changes, so its evidence and opening time
    # belong to this verdict even while the cause is being replaced.
    matching = incident
    return VerdictView(
        target=target,
        cause=cause,
        confidence=confidence,
        since=None if matching is None else matching.opened,
        time_to_full=time_to_full_of(samples),
        evidence={} if matching is None else dict(matching.evidence),
        playbooks=PLAYBOOKS.get(cause, ()),
        incident_id=None if matching is None else matching.id,
    )


def time_to_full_of(samples: Sequence[Sample]) -> float | None:
    """The diagnosis's time to full, only when written on the queue's latest tick."""
    ttf = next((s for s in samples if s.series == "time_to_full_seconds"), None)
    tick = next((s.ts for s in samples if s.series == "imbalance"), None)
    if ttf is None or (tick is not None and ttf.ts < tick):
        return None
    return ttf.value


def history_of(
    series: Mapping[tuple[str, Labels], Sequence[Bucket]], start: float, step_s: float, points: int
) -> History:
    combined = {
        name: _combine_buckets(series, name, start, step_s, points) for name in HISTORY_SERIES
    }
    offered = combined["offered_rate"]
    if all(v is None for v in offered):
        offered = _derived_offered(combined, step_s)
    return History(start, step_s, tuple(offered), tuple(combined["completed_rate"]),
                   tuple(combined["depth"]))  # fmt: skip


def _combine_buckets(
    series: Mapping[tuple[str, Labels], Sequence[Bucket]],
    name: str,
    start: float,
    step_s: float,
    points: int,
) -> list[float | None]:
    """One value per slot, label sets combined as the vocabulary says (see summary.py)."""
    keys = [key for key in series if key[0] == name]
    out: list[float | None] = [None] * points
    if not keys:
        return out
    constant = set.intersection(*(set(labels) for _, labels in keys))
    fewest = min(len(labels) - len(constant) for _, labels in keys)
    chosen = [key for key in keys if len(key[1]) - len(constant) == fewest]
    signal = SIGNALS.get(name)
    how = signal.aggregate if signal is not None else "sum"
    slots: list[list[float]] = [[] for _ in range(points)]
    for key in chosen:
        for bucket in series[key]:
            index = math.floor((bucket.ts - start) / step_s + 1e-6)
            if 0 <= index < points:
                slots[index].append(bucket.mean)
    for index, values in enumerate(slots):
        if not values:
            continue
        if how == "mean":
            out[index] = sum(values) / len(values)
        elif how == "max":
            out[index] = max(values)
        else:
            out[index] = sum(values)
    return out


def _derived_offered(
    combined: Mapping[str, list[float | None]], step_s: float
) -> list[float | None]:
    """Arrivals where the source counts none (vLLM, TGI): completed + refused + queue growth."""
    completed, refused, depth = (
        combined["completed_rate"], combined["rejected_rate"], combined["depth"],
    )  # fmt: skip
    out: list[float | None] = []
    for index, served in enumerate(completed):
        if served is None:
            out.append(None)
            continue
        growth = 0.0
        before = depth[index - 1] if index > 0 else None
        if before is not None and depth[index] is not None:
            growth = (depth[index] - before) / step_s  # type: ignore[operator]
        out.append(max(0.0, served + (refused[index] or 0.0) + growth))
    return out


def host_of(samples: Iterable[Sample]) -> HostView:
    samples = list(samples)
    values, _ = summarize(samples)
    # Per core and per port straight from the labels: summarize() splits a
    # series into parts only when it has more than one label set, and a
    # one-core host or a single listening port is still worth a row.
    cores = tuple(
        sorted(
            ((s.label("core", "?"), s.value) for s in samples
             if s.series == "host_cpu_core_percent"),
            key=lambda core: _numeric(core[0]),
        )
    )  # fmt: skip
    depth = {s.label("port", "?"): s.value for s in samples
             if s.series == "host_listen_queue_depth"}  # fmt: skip
    capacity = {s.label("port", "?"): s.value for s in samples
                if s.series == "host_listen_queue_capacity"}  # fmt: skip
    listen = tuple((port, depth[port], capacity.get(port)) for port in sorted(depth, key=_numeric))
    by_pid: dict[str, dict[str, float]] = defaultdict(dict)
    names: dict[str, str] = {}
    for sample in samples:
        if sample.series.startswith("process_"):
            pid = sample.label("pid")
            by_pid[pid][sample.series] = sample.value
            names[pid] = sample.label("process", pid)
    processes = tuple(
        ProcessRow(pid, names[pid], v.get("process_cpu_percent"), v.get("process_rss_bytes"),
                   v.get("process_threads"), v.get("process_open_files"))
        for pid, v in sorted(by_pid.items(), key=lambda item: _numeric(item[0]))
    )  # fmt: skip
    return HostView(
        ts=max((s.ts for s in samples), default=None),
        signals={k: v for k, v in values.items() if k.startswith("host_")},
        cores=cores,
        listen=listen,
        processes=processes,
    )


def gpu_of(samples: Sequence[Sample], status: str | None = None) -> GpuView:
    devices: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        gpu, mig = sample.label("gpu"), sample.label("mig")
        devices[f"{gpu}/mig {mig}" if mig else gpu].append(sample)
    found = []
    for name in sorted(devices, key=lambda n: (_numeric(n.split("/")[0]), n)):
        own = devices[name]
        signals = {
            s.series: s.value
            for s in own
            if s.series not in ("gpu_throttle", "gpu_process_memory_bytes")
        }
        throttles = tuple(
            sorted(s.label("reason") for s in own if s.series == "gpu_throttle" and s.value > 0)
        )
        processes = tuple(
            sorted((s.label("pid"), s.value) for s in own if s.series == "gpu_process_memory_bytes")
        )
        found.append(GpuDevice(name, signals, throttles, processes))
    return GpuView(tuple(found), status)


def _numeric(text: str) -> tuple[int, str]:
    return (int(text), "") if text.isdigit() else (1 << 30, text)
