"""Why the queue is filling: the imbalance signature, its cause, and capacity advice.

Everything here works on plain numbers in quell's words (``signals.py``):
one ``Observation`` a tick for a watched queue, its replicas and its host.
The maths is in pure functions, so tests feed them series and check the
verdict, and recorded incidents replay to the same answers. ``Diagnoser``
adds the only state a verdict needs: baselines of "usual", and hysteresis so
a verdict neither flaps nor lingers.

The imbalance signature is offered load (lambda) above service rate (mu),
sustained, with the queue growing or already full. Its cause is read from
what moved with it:

- producer_surge: arrivals up against their baseline, service time flat (or up
  by a smaller factor than arrivals: fuller batches are slower);
- consumer_slowdown: service time up with decode speed, arrivals flat;
- stalled_consumers: completions near zero while workers are busy;
- dependency_slow: service time up while decode speed is unchanged and the
  host idles: requests hold their slots waiting on something downstream
  (less sure without host readings);
- resource_saturation: CPU, GPU or KV cache at its limit;
- hot_replica: one replica's queue fills while the others have room;
- undersized_queue: full-queue rejections in short bursts at low average load;
- retry_amplification: a large and rising share of arrivals are retries.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

CAUSES = (
    "producer_surge",
    "consumer_slowdown",
    "stalled_consumers",
    "dependency_slow",
    "resource_saturation",
    "hot_replica",
    "undersized_queue",
    "retry_amplification",
)

# What to run for each cause, most effective first (playbooks/library/).
PLAYBOOKS: dict[str, tuple[str, ...]] = {
    "producer_surge": ("tighten-limits", "shed-sheddable", "scale-replicas"),
    "consumer_slowdown": ("scale-replicas", "shed-sheddable", "tighten-limits"),
    "stalled_consumers": ("drain-replica", "trip-breaker", "scale-replicas"),
    "dependency_slow": ("shed-sheddable", "tighten-limits", "enable-cache"),
    "resource_saturation": ("shed-sheddable", "tighten-limits", "scale-replicas"),
    "hot_replica": ("drain-replica", "trip-breaker"),
    "undersized_queue": ("raise-queue-capacity",),
    "retry_amplification": ("shed-sheddable", "tighten-limits"),
}


@dataclass(frozen=True, slots=True)
class Observation:
    """One tick of one watched queue, in quell's words.

    ``signals`` are the queue's own (``offered_rate``, ``completed_rate``,
    ``depth``, ``capacity``, ...), plus ``queue_full_rate``: rejections
    because the queue was full, apart from rate limits and shedding.
    ``replicas`` are the servers behind it, each with its own signals;
    ``host`` holds ``host_cpu_percent``, ``gpu_utilization_percent`` and the like.
    """

    ts: float
    signals: Mapping[str, float]
    replicas: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    host: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Every number the verdicts rest on, named, so each can be argued with."""

    # the imbalance signature
    short_ticks: int = 3  # ticks averaged for "now"
    slope_ticks: int = 6  # ticks the depth trend is fitted over
    excess_ratio: float = 1.1  # lambda above mu by this factor...
    excess_min: float = 0.5  # ...and by at least this many requests/s
    rising_per_s: float = 0.5  # depth growth that counts as rising
    # A queue that grew on nearly every tick of the trend window, by this much
    # in all, is itself the proof that arrivals exceed completions (depth is
    # their running difference), before the rates differ by excess_ratio.
    climb_min: float = 5.0
    climb_t: float = 4.0  # the trend's slope over its standard error
    open_after_ticks: int = 4  # sustained ticks before a verdict opens
    open_fast_occupancy: float = 0.5  # ...or fewer when the queue is this full
    open_fast_ticks: int = 2
    close_after_ticks: int = 10  # healthy ticks before a verdict closes
    switch_after_ticks: int = 3  # ticks a new cause must lead to replace the old
    # causes
    surge_ratio: float = 1.3  # arrivals against their baseline
    # ...and arrivals at least this share of what the workers can complete,
    # where that is known: below it the queue drains by itself.
    surge_capacity_share: float = 0.9
    slow_ratio: float = 1.5  # service time against its baseline
    flat_ratio: float = 1.3  # "unchanged" is within this factor
    stall_fraction: float = 0.1  # completions below this share of baseline
    cpu_limit: float = 90.0
    gpu_limit: float = 95.0
    kv_limit: float = 0.85
    hot_depth: float = 4.0  # a replica's waiting requests that make it hot...
    cold_depth: float = 1.0  # ...while every other replica has at most this
    retry_share: float = 0.3
    undersized_load: float = 0.7  # mean load below this share of capacity
    baseline_half_life_s: float = 60.0
    baseline_min_ticks: int = 5


@dataclass(frozen=True, slots=True)
class Baseline:
    """What "usual" looks like, learnt while the queue is healthy."""

    offered: float | None = None
    completed: float | None = None
    service_s: float | None = None
    token_s: float | None = None
    ticks: int = 0

    def ready(self, thresholds: Thresholds) -> bool:
        return self.ticks >= thresholds.baseline_min_ticks


@dataclass(frozen=True, slots=True)
class Assessment:
    """The numbers of one tick and what they point to; the verdict comes from many."""

    ts: float
    offered: float | None
    completed: float | None
    depth: float | None
    capacity: float | None
    occupancy: float | None
    depth_slope: float | None
    time_to_full: float | None
    drain_time: float | None
    imbalanced: bool
    scores: dict[str, float]
    evidence: dict[str, Any]

    def leading(self) -> tuple[str, float] | None:
        if not self.scores:
            return None
        cause = max(self.scores, key=lambda c: self.scores[c])
        return cause, self.scores[cause]


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    cause: str
    confidence: float
    since: float
    time_to_full: float | None
    evidence: dict[str, Any]
    playbooks: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "cause": self.cause,
            "confidence": round(self.confidence, 3),
            "since": self.since,
            "time_to_full": None if self.time_to_full is None else round(self.time_to_full, 1),
            "evidence": self.evidence,
            "playbooks": list(self.playbooks),
        }


# -- small pure helpers --------------------------------------------------------


def values(window: Sequence[Observation], name: str) -> list[float]:
    return [o.signals[name] for o in window if o.signals.get(name) is not None]


def mean(numbers: Iterable[float]) -> float | None:
    items = list(numbers)
    return sum(items) / len(items) if items else None


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares growth per second; None with fewer than three points."""
    if len(points) < 3:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def slope_t(points: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope over its standard error: how sure the trend is."""
    if len(points) < 4:
        return None
    growth = slope(points)
    if growth is None:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    residual = sum((v - mean_v - growth * (t - mean_t)) ** 2 for t, v in points)
    error = math.sqrt(residual / (len(points) - 2) / spread)
    if error == 0:
        return math.inf if growth > 0 else -math.inf if growth < 0 else 0.0
    return growth / error


def time_to_full(capacity: float | None, depth: float | None, offered: float | None,
                 completed: float | None) -> float | None:  # fmt: skip
    """(capacity - depth) / (lambda - mu) while lambda > mu; None otherwise."""
    if None in (capacity, depth, offered, completed):
        return None
    assert capacity is not None and depth is not None
    assert offered is not None and completed is not None
    excess = offered - completed
    if excess <= 0:
        return None
    return max(0.0, capacity - depth) / excess


def drain_time(depth: float | None, offered: float | None, completed: float | None) -> float | None:
    """depth / (mu - lambda) while the queue shrinks; None otherwise."""
    if None in (depth, offered, completed):
        return None
    assert depth is not None and offered is not None and completed is not None
    spare = completed - offered
    if spare <= 0 or depth <= 0:
        return None
    return depth / spare


def ratio(now: float | None, usual: float | None) -> float | None:
    if now is None or usual is None or usual <= 0:
        return None
    return now / usual


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


# -- reading one window ------------------------------------------------------


def offered_series(window: Sequence[Observation]) -> list[float | None]:
    """Arrivals per tick; derived where a source counts none (vLLM, TGI).

    Without an arrivals counter, what arrived is what completed, what was
    refused and what was added to the queue: mu + rejections + d(depth)/dt.
    """
    out: list[float | None] = []
    previous: Observation | None = None
    for obs in window:
        s = obs.signals
        if s.get("offered_rate") is not None:
            out.append(s["offered_rate"])
        elif s.get("completed_rate") is not None:
            growth = 0.0
            if previous is not None and None not in (s.get("depth"), previous.signals.get("depth")):
                dt = obs.ts - previous.ts
                if dt > 0:
                    growth = (s["depth"] - previous.signals["depth"]) / dt
            out.append(max(0.0, s["completed_rate"] + s.get("rejected_rate", 0.0) + growth))
        else:
            out.append(None)
        previous = obs
    return out


def service_time(obs: Observation) -> float | None:
    """Time a worker spends on a request: the replicas' own figure when known."""
    parts = [
        (r["service_seconds"], r.get("completed_rate") or 0.0)
        for r in obs.replicas.values()
        if r.get("service_seconds") is not None
    ]
    weight = sum(w for _, w in parts)
    if parts and weight > 0:
        return sum(v * w for v, w in parts) / weight
    if parts:
        return sum(v for v, _ in parts) / len(parts)
    for name in ("service_seconds", "upstream_latency_seconds"):
        if obs.signals.get(name) is not None:
            return obs.signals[name]
    return None


def token_time(obs: Observation) -> float | None:
    times = [
        r["token_seconds"] for r in obs.replicas.values() if r.get("token_seconds") is not None
    ]
    if times:
        return sum(times) / len(times)
    return obs.signals.get("token_seconds")


def kv_usage(obs: Observation) -> float | None:
    usage = [r["kv_usage"] for r in obs.replicas.values() if r.get("kv_usage") is not None]
    if usage:
        return max(usage)
    return obs.signals.get("kv_usage")


def service_capacity(obs: Observation, service_s: float | None) -> float | None:
    """Little's law: workers / service time is the most a queue's consumers complete per second."""
    workers = obs.signals.get("workers")
    if workers is None:
        slots = [r["workers"] for r in obs.replicas.values() if r.get("workers") is not None]
        workers = sum(slots) if slots else None
    if workers is None or service_s is None or service_s <= 0:
        return None
    return workers / service_s


def assess(window: Sequence[Observation], baseline: Baseline, t: Thresholds) -> Assessment:
    """The imbalance test and a score per cause, for the last tick of ``window``."""
    last = window[-1]
    recent = window[-t.short_ticks :]
    offered_all = offered_series(window)
    offered = mean(x for x in offered_all[-t.short_ticks :] if x is not None)
    completed = mean(values(recent, "completed_rate"))
    depth = last.signals.get("depth")
    capacity = last.signals.get("capacity")
    occupancy = depth / capacity if depth is not None and capacity else None
    trend = [(o.ts, o.signals["depth"]) for o in window[-t.slope_ticks :]
             if o.signals.get("depth") is not None]  # fmt: skip
    depth_slope = slope(trend)
    queue_full = mean(values(recent, "queue_full_rate")) or 0.0
    running = last.signals.get("running")
    if running is None and last.replicas:
        running = sum(r.get("running", 0.0) for r in last.replicas.values())

    excess = (
        offered is not None
        and completed is not None
        and offered > completed * t.excess_ratio
        and offered - completed > t.excess_min
    )
    growing = depth_slope is not None and depth_slope > t.rising_per_s
    depths = [v for _, v in trend]
    climbing = (
        len(depths) >= t.slope_ticks
        and depths[-1] - depths[0] >= t.climb_min
        and (slope_t(trend) or 0.0) >= t.climb_t
        and offered is not None
        and completed is not None
        and offered - completed > t.excess_min
    )
    excess = excess or climbing
    pinned = occupancy is not None and occupancy >= 0.9 and queue_full > 0
    # Completions of the latest tick alone: a stall is a cliff, and averaging
    # it with the ticks before only delays seeing it.
    completed_now = last.signals.get("completed_rate")
    stalled = (
        completed_now is not None
        and running is not None
        and running >= 1
        # Without a baseline (diagnosis started mid-incident) near zero is
        # still near zero.
        and completed_now < max(0.2, t.stall_fraction * (baseline.completed or 0.0))
        and (offered or 0.0) > t.excess_min
    )
    imbalanced = bool((excess and (growing or pinned)) or stalled)

    service_now = mean(x for x in (service_time(o) for o in recent) if x is not None)
    token_now = mean(x for x in (token_time(o) for o in recent) if x is not None)
    cpu = max(values_host(recent, "host_cpu_percent"), default=None)
    gpu = max(values_host(recent, "gpu_utilization_percent"), default=None)
    kv = max((x for x in (kv_usage(o) for o in recent) if x is not None), default=None)
    retried = mean(values(recent, "retried_rate"))

    arrivals_ratio = ratio(offered, baseline.offered)
    service_ratio = ratio(service_now, baseline.service_s)
    token_ratio = ratio(token_now, baseline.token_s)
    retry_share = retried / offered if retried is not None and offered else None
    capacity_rps = service_capacity(last, baseline.service_s or service_now)

    evidence: dict[str, Any] = {
        "offered_rate": _round(offered),
        "service_rate": _round(completed),
        "service_rate_now": _round(completed_now),
        "depth": depth,
        "capacity": capacity,
        "occupancy": _round(occupancy),
        "depth_slope_per_s": _round(depth_slope),
        "queue_full_rate": _round(queue_full),
        "service_time_s": _round(service_now),
        "usual_service_time_s": _round(baseline.service_s),
        "usual_offered_rate": _round(baseline.offered),
        "token_time_s": _round(token_now, 5),
        "usual_token_time_s": _round(baseline.token_s, 5),
        "running": running,
        "host_cpu_percent": _round(cpu, 1),
        "gpu_utilization_percent": _round(gpu, 1),
        "kv_usage": _round(kv),
        "retried_share": _round(retry_share),
        "service_capacity_rps": _round(capacity_rps),
    }

    scores: dict[str, float] = {}
    hot = hot_replica(last, t)
    if hot is not None:
        evidence["hot_replica"] = hot
        scores["hot_replica"] = 0.9
    if imbalanced or hot is not None:
        if stalled:
            scores["stalled_consumers"] = 0.95
        saturated = [
            name
            for name, level, limit in (
                ("cpu", cpu, t.cpu_limit),
                ("gpu", gpu, t.gpu_limit),
                ("kv_cache", kv, t.kv_limit),
            )
            if level is not None and level >= limit
        ]
        if saturated:
            evidence["saturated"] = saturated
            scores["resource_saturation"] = (
                0.85 if "kv_cache" in saturated or len(saturated) > 1 else 0.75
            )
        retrying = retry_share is not None and retry_share >= t.retry_share
        if retrying:
            # Above every surge score: when this many arrivals are retries, the
            # retries are the surge, and shedding the first attempts will not
            # stop them.
            scores["retry_amplification"] = 0.92
        # A step up that the consumers can still complete is no surge: after
        # an idle spell the baseline knows only silence, and the queueing that
        # comes and goes at 80% of capacity opened "producer_surge" (and the
        # lab's auto playbook then throttled healthy traffic).
        # Capacity from the service time now, not the usual one: requests are
        # slower at high load (engines batch more), and the light-load figure
        # overstated what the workers complete by a fifth in the lab.
        capacity_now = service_capacity(last, service_now)
        absorbable = (
            capacity_now is not None
            and offered is not None
            and offered < t.surge_capacity_share * capacity_now
        )
        surged = arrivals_ratio is not None and arrivals_ratio >= t.surge_ratio and not absorbable
        flat_service = service_ratio is None or service_ratio <= t.flat_ratio
        # Engines that batch make every request slower as more run at once, so a surge that
        # fills every slot raises the service time too, the more so on a busy host. When
        # arrivals grew by a larger factor than service time did, the arrivals are what
        # outgrew the consumers: on a CPU-starved host a 3.3x surge with service time up
        # 1.5-2x was named dependency_slow, and the surge's playbook never ran.
        arrivals_lead = (
            surged
            and not flat_service
            and service_ratio is not None
            and arrivals_ratio is not None
            and arrivals_ratio > service_ratio
        )
        slower = service_ratio is not None and service_ratio >= t.slow_ratio
        if slower and not stalled:
            decode_flat = token_ratio is not None and token_ratio <= t.flat_ratio
            idle = not saturated
            if decode_flat and idle:
                # With no CPU or GPU reading (host collection off, no GPU) "idle" is
                # a guess: a starved engine front end looks the same. Named, but
                # below the 80% at which a playbook runs on its own.
                host_known = cpu is not None or gpu is not None
                if arrivals_lead:
                    scores["dependency_slow"] = 0.55
                elif host_known:
                    scores["dependency_slow"] = 0.8
                else:
                    scores["dependency_slow"] = 0.65
                    evidence["host_readings"] = "none"
            else:
                scores["consumer_slowdown"] = 0.7 if arrivals_ratio is None else (
                    0.8 if arrivals_ratio <= t.surge_ratio else 0.55
                )  # fmt: skip
        if surged and flat_service and not stalled and not retrying:
            scores["producer_surge"] = min(0.9, 0.55 + 0.15 * (arrivals_ratio or 0.0))
        elif arrivals_lead and not stalled and not retrying:
            scores["producer_surge"] = 0.7
        elif (
            imbalanced
            and not scores
            and capacity_rps is not None
            and offered is not None
            and offered > capacity_rps
        ):
            # No baseline to compare with, but more arrives than the consumers
            # can ever complete: a surge, with less certainty.
            scores["producer_surge"] = 0.5
    if queue_full > 0 and not imbalanced:
        load = mean(x for x in offered_all if x is not None)
        if (
            load is not None
            and capacity_rps is not None
            and load < t.undersized_load * capacity_rps
        ):
            evidence["mean_offered_rate"] = _round(load)
            scores["undersized_queue"] = 0.75

    # Evidence no short burst produces: a verdict may open on fewer ticks.
    strong = bool(
        stalled
        or hot is not None
        or "undersized_queue" in scores
        or (occupancy is not None and occupancy >= t.open_fast_occupancy and imbalanced)
        or (imbalanced and service_ratio is not None and service_ratio >= 2.0)
        or (imbalanced and arrivals_ratio is not None and arrivals_ratio >= 2.5)
        # A queue climbing tick after tick is no burst either: a burst is a step.
        or (imbalanced and climbing)
    )
    evidence["strong"] = strong
    return Assessment(
        ts=last.ts,
        offered=offered,
        completed=completed,
        depth=depth,
        capacity=capacity,
        occupancy=occupancy,
        depth_slope=depth_slope,
        # Only while the queue is filling for certain (a steady climb, full,
        # or consumers stalled): at 80% load the means of a few ticks of
        # arrivals beat completions on half the ticks by chance and the depth
        # wobbles by a few places, and a projection from that noise paged
        # "full within a minute" 35 times in a 30-minute soak.
        time_to_full=(
            time_to_full(capacity, depth, offered, completed)
            if climbing or pinned or stalled
            else None
        ),
        drain_time=drain_time(depth, offered, completed),
        imbalanced=imbalanced,
        scores=scores,
        evidence=evidence,
    )


def values_host(window: Sequence[Observation], name: str) -> list[float]:
    return [o.host[name] for o in window if o.host.get(name) is not None]


def hot_replica(obs: Observation, t: Thresholds) -> dict[str, Any] | None:
    """The one replica whose queue fills while every other has room, if there is one."""
    depths = {name: r["depth"] for name, r in obs.replicas.items() if r.get("depth") is not None}
    if len(depths) < 2:
        return None
    name = max(depths, key=lambda n: depths[n])
    others = [d for n, d in depths.items() if n != name]
    if depths[name] >= t.hot_depth and max(others) <= max(t.cold_depth, depths[name] / 8):
        return {"replica": name, "depth": depths[name], "others_max_depth": max(others)}
    return None


def update_baseline(baseline: Baseline, obs: Observation, offered: float | None,
                    dt: float, t: Thresholds) -> Baseline:  # fmt: skip
    """Fold a healthy tick into the baseline (an exponentially weighted mean)."""
    weight: float = 1.0 - math.pow(0.5, max(dt, 0.0) / t.baseline_half_life_s)
    if baseline.ticks < t.baseline_min_ticks:
        # Learn fast at first so the baseline is usable within seconds.
        weight = max(weight, 1.0 / (baseline.ticks + 1))

    def fold(old: float | None, new: float | None) -> float | None:
        if new is None:
            return old
        if old is None:
            return new
        return old + weight * (new - old)

    return Baseline(
        offered=fold(baseline.offered, offered),
        completed=fold(baseline.completed, obs.signals.get("completed_rate")),
        service_s=fold(baseline.service_s, service_time(obs)),
        token_s=fold(baseline.token_s, token_time(obs)),
        ticks=baseline.ticks + 1,
    )


# -- the stateful part: baselines and hysteresis -------------------------------


@dataclass
class Change:
    """What a tick changed: a verdict opened, changed cause, or closed."""

    kind: str  # "opened", "cause_changed", "closed"
    verdict: Verdict
    ts: float


class Diagnoser:
    """Turns a stream of observations of one queue into verdicts that do not flap."""

    def __init__(
        self, target: str, thresholds: Thresholds | None = None, history: int = 120
    ) -> None:
        self.target = target
        self.t = thresholds or Thresholds()
        self.window: deque[Observation] = deque(maxlen=history)
        self.baseline = Baseline()
        self.verdict: Verdict | None = None
        self.last: Assessment | None = None
        self._streak = 0  # consecutive imbalanced (or undersized) ticks
        self._quiet = 0  # consecutive healthy ticks while a verdict is open
        self._challenger: tuple[str, int] | None = None

    def observe(self, obs: Observation) -> list[Change]:
        t = self.t
        previous = self.window[-1] if self.window else None
        if previous is not None and obs.ts <= previous.ts:
            return []  # a repeated or out-of-order tick says nothing new
        self.window.append(obs)
        assessment = assess(list(self.window), self.baseline, t)
        self.last = assessment
        healthy = (
            not assessment.imbalanced
            and not assessment.scores
            and (assessment.occupancy is None or assessment.occupancy < 0.5)
        )
        if healthy and self.verdict is None:
            offered = offered_series(list(self.window)[-2:])[-1]
            dt = obs.ts - previous.ts if previous is not None else 1.0
            self.baseline = update_baseline(self.baseline, obs, offered, dt, t)

        leading = assessment.leading()
        alarming = leading is not None and (assessment.imbalanced or leading[0] in (
            "hot_replica", "undersized_queue"))  # fmt: skip
        self._streak = self._streak + 1 if alarming else 0
        changes: list[Change] = []
        if self.verdict is None:
            strong = bool(assessment.evidence.get("strong"))
            needed = t.open_fast_ticks if strong else t.open_after_ticks
            if alarming and self._streak >= needed and leading is not None:
                self.verdict = self._verdict(leading, assessment, since=obs.ts)
                changes.append(Change("opened", self.verdict, obs.ts))
            return changes

        if alarming and leading is not None:
            self._quiet = 0
            cause, _score = leading
            if cause == self.verdict.cause:
                self._challenger = None
                self.verdict = self._verdict(leading, assessment, since=self.verdict.since)
            else:
                streak = (
                    self._challenger[1] + 1
                    if self._challenger and self._challenger[0] == cause
                    else 1
                )
                self._challenger = (cause, streak)
                if streak >= t.switch_after_ticks:
                    self._challenger = None
                    self.verdict = self._verdict(leading, assessment, since=self.verdict.since)
                    changes.append(Change("cause_changed", self.verdict, obs.ts))
            return changes

        self._quiet += 1
        draining = (assessment.occupancy or 0.0) >= 0.5
        if self._quiet >= t.close_after_ticks and not draining:
            closed = replace(self.verdict, time_to_full=None)
            self.verdict = None
            self._challenger = None
            changes.append(Change("closed", closed, obs.ts))
        return changes

    def _verdict(self, leading: tuple[str, float], assessment: Assessment, since: float) -> Verdict:
        cause, score = leading
        return Verdict(
            target=self.target,
            cause=cause,
            confidence=score,
            since=since,
            time_to_full=assessment.time_to_full,
            evidence={
                k: v for k, v in assessment.evidence.items() if v is not None and k != "strong"
            },
            playbooks=PLAYBOOKS[cause],
        )


# -- capacity advice -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Advice:
    what: str
    value: float | None
    assumption: str


def capacity_advice(
    window: Sequence[Observation],
    baseline: Baseline,
    target_utilization: float = 0.7,
    target_wait_s: float = 2.0,
) -> list[Advice]:
    """Little's law applied to what was observed, each figure with what it assumes."""
    if not window:
        return []
    last = window[-1]
    service_s = baseline.service_s or mean(
        x for x in (service_time(o) for o in window) if x is not None
    )
    offered_all = [x for x in offered_series(window) if x is not None]
    peak = max(offered_all, default=None)
    typical = mean(offered_all)
    advice: list[Advice] = []
    capacity_rps = service_capacity(last, service_s)
    advice.append(
        Advice(
            "service capacity now (requests/s)",
            _round(capacity_rps, 1),
            "workers / mean service time (Little's law), with the service time of healthy periods",
        )
    )
    workers = last.signals.get("workers")
    if service_s and peak is not None:
        needed = peak * service_s / target_utilization
        advice.append(
            Advice(
                f"workers for the peak offered load at {target_utilization:.0%} utilisation",
                math.ceil(needed),
                f"peak {peak:.1f} req/s x service time {service_s:.2f} s / {target_utilization}; "
                "only helps if the replicas behind the workers have the slots",
            )
        )
    replicas = len(last.replicas) or None
    if replicas and capacity_rps and peak is not None:
        per_replica = capacity_rps / replicas
        advice.append(
            Advice(
                f"replicas for the peak offered load at {target_utilization:.0%} utilisation",
                math.ceil(peak / (per_replica * target_utilization)),
                f"each replica completes about {per_replica:.1f} req/s; load spreads evenly",
            )
        )
    if capacity_rps:
        bound = capacity_rps * target_wait_s
        burst = burst_excess(window)
        advice.append(
            Advice(
                f"largest queue that keeps the wait under {target_wait_s:g} s",
                math.floor(bound),
                "a request at the back waits depth / service rate; a bigger queue only buys "
                "time, it never adds capacity",
            )
        )
        if burst is not None:
            advice.append(
                Advice(
                    "queue capacity that absorbs the largest burst seen",
                    math.ceil(burst),
                    "the most requests that arrived beyond what was served in one burst; "
                    + (
                        "fits within the wait target"
                        if burst <= bound
                        else "exceeds the wait target: add capacity or shed instead"
                    ),
                )
            )
    if typical is not None and capacity_rps:
        advice.append(
            Advice(
                "mean utilisation over the window",
                _round(typical / capacity_rps, 3),
                "mean offered load / service capacity",
            )
        )
    if workers is not None:
        advice.append(Advice("workers now", workers, "as the gateway reports"))
    return advice


def burst_excess(window: Sequence[Observation]) -> float | None:
    """Most requests that piled up in one run of arrivals above completions."""
    offered = offered_series(window)
    best = run = 0.0
    previous_ts: float | None = None
    seen = False
    for obs, arriving in zip(window, offered, strict=True):
        served = obs.signals.get("completed_rate")
        if arriving is None or served is None:
            previous_ts = obs.ts
            continue
        seen = True
        dt = obs.ts - previous_ts if previous_ts is not None else 1.0
        run = max(0.0, run + (arriving - served) * dt)
        best = max(best, run)
        previous_ts = obs.ts
    return best if seen else None
