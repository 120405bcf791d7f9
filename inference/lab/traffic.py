"""The open-loop traffic generator behind `quell load`.

Arrivals follow the scenario's schedule whatever the server does: the
generator never waits for an answer before sending the next request, and
every latency is measured from the moment the request was *scheduled*, so a
server that stops answering cannot hide behind a client that stopped asking
(coordinated omission). When the generator itself falls behind its schedule
it says so in the results instead of quietly sending less.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from inference.lab.scenario import Distribution, Scenario, Traffic

# Beyond this the generator is late enough that its offered rate is no longer
# the one asked for; the run is flagged rather than silently wrong.
LAG_WARNING_S = 0.1
# Codes in the OpenAI error body worth telling apart; anything else is
# reported by HTTP status.
KNOWN_CODES = frozenset(
    {
        "works_queue_full", "queue_full", "queue_timeout", "rate_limit_exceeded",
        "priority_shed", "circuit_open", "upstream_timeout", "internal_error",
    }
)  # fmt: skip
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
WORDS = ("why", "is", "the", "queue", "full", "now", "gpu", "slot", "load", "rate", "tok", "wait")


def arrival_times(
    traffic: Traffic, duration: float, rate_of: Callable[[float], float], rng: random.Random
) -> Iterator[float]:
    """Scheduled send times in seconds from the start, following the profile.

    Poisson arrivals use thinning: candidates at the peak rate, each kept
    with probability rate(t) / peak, which is exact for any profile shape.
    Constant arrivals step by 1 / rate(t).
    """
    peak = max(rate_of(t) for t, _ in traffic.profile) if traffic.profile else 0.0
    peak = max(peak, rate_of(0.0), rate_of(duration))
    if peak <= 0:
        return
    t = 0.0
    if traffic.arrival == "poisson":
        while True:
            t += rng.expovariate(peak)
            if t >= duration:
                return
            if rng.random() * peak < rate_of(t):
                yield t
    else:
        while t < duration:
            rate = rate_of(t)
            if rate <= 0:
                t += 0.01
                continue
            yield t
            # Rounded so that float drift cannot add an arrival at the very end.
            t = round(t + 1.0 / rate, 9)


def draw(dist: Distribution, rng: random.Random) -> int:
    if dist.kind == "constant":
        value = dist.a
    elif dist.kind == "uniform":
        value = rng.uniform(dist.a, dist.b)
    else:
        value = rng.lognormvariate(math.log(dist.a), dist.b)
    return int(min(max(round(value), dist.low), dist.high))


@dataclass
class Second:
    """What happened in one second of the run, by scheduled time."""

    offered: int = 0
    retries: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


@dataclass
class Results:
    scenario: str
    requested_rate: float = 0.0  # mean scheduled arrivals per second
    duration_s: float = 0.0
    scheduled: int = 0
    sent: int = 0  # first attempts actually sent
    sent_in_window: int = 0  # of those, sent before the scenario's end
    attempts: int = 0  # first attempts plus retries
    ok: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # final outcome of each request
    rejections: Counter[str] = field(default_factory=Counter)  # every failed attempt
    latencies: array[float] = field(default_factory=lambda: array("d"))
    ttft: array[float] = field(default_factory=lambda: array("d"))
    started_at: float = 0.0  # wall-clock time the schedule began
    max_lag_s: float = 0.0
    late_sends: int = 0
    timeline: list[Second] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)

    @property
    def behind(self) -> bool:
        return self.max_lag_s > LAG_WARNING_S or self.sent < self.scheduled

    def achieved_rate(self) -> float:
        """First attempts sent per second within the scenario's duration."""
        return self.sent_in_window / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float, values: array[float] | None = None) -> float | None:
        data = sorted(self.latencies if values is None else values)
        if not data:
            return None
        return data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))]

    def as_dict(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 2)

        return {
            "scenario": self.scenario,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
            "requested_rate": round(self.requested_rate, 3),
            "achieved_rate": round(self.achieved_rate(), 3),
            "scheduled": self.scheduled,
            "sent": self.sent,
            "attempts": self.attempts,
            "ok": self.ok,
            "outcomes": dict(self.outcomes),
            "rejections": dict(self.rejections),
            "latency_ms": {
                "p50": ms(self.percentile(0.5)),
                "p90": ms(self.percentile(0.9)),
                "p99": ms(self.percentile(0.99)),
            },
            "ttft_ms": {
                "p50": ms(self.percentile(0.5, self.ttft)),
                "p99": ms(self.percentile(0.99, self.ttft)),
            },
            "generator": {
                "max_lag_ms": round(self.max_lag_s * 1000, 2),
                "late_sends": self.late_sends,
                "kept_up": not self.behind,
            },
            "faults": self.faults,
            "timeline": [
                {
                    "t": i,
                    "offered": s.offered,
                    "retries": s.retries,
                    "ok": s.ok,
                    "failed": dict(s.failed),
                }
                for i, s in enumerate(self.timeline)
            ],
        }


@dataclass(frozen=True)
class Target:
    """Where requests go: an OpenAI-compatible base URL and the client keys by name."""

    url: str
    keys: dict[str, str]
    model: str = "quell-mini"


class Generator:
    def __init__(
        self,
        scenario: Scenario,
        target: Target,
        capacity_rps: float | None = None,
        seed: int = 0,
        connections: int = 4096,
    ) -> None:
        traffic = scenario.traffic
        if traffic.unit == "capacity" and not capacity_rps:
            raise ValueError("this scenario's rates are fractions of capacity: give capacity_rps")
        self.scenario = scenario
        self.target = target
        self.scale = capacity_rps if traffic.unit == "capacity" and capacity_rps else 1.0
        self.rng = random.Random(seed)
        self.connections = connections
        self.results = Results(scenario.name)
        if not target.keys:
            raise ValueError("no client key to send with")
        mixes = [traffic.keys, *(p.keys for p in traffic.phases if p.keys is not None)]
        missing = sorted({name for mix in mixes for name, _ in mix if name not in target.keys})
        if missing:
            raise ValueError(
                f"scenario uses key(s) the target lacks: {', '.join(missing)}; "
                f"it has: {', '.join(target.keys)}"
            )
        self._schedule: list[float] | None = None
        self._auth = {name: f"Bearer {secret}" for name, secret in target.keys.items()}
        self._prompts: dict[int, str] = {}
        self._start = 0.0

    def rate_at(self, t: float) -> float:
        return self.scenario.traffic.level_at(t) * self.scale

    def _second(self, t: float) -> Second:
        index = int(t)
        timeline = self.results.timeline
        while len(timeline) <= index:
            timeline.append(Second())
        return timeline[index]

    def _prompt(self, tokens: int) -> str:
        # Each word is one token and the chat framing costs 7, so the prompt
        # is exactly ``tokens`` under the bundled engine's counting rule.
        words = max(1, tokens - 7)
        prompt = self._prompts.get(words)
        if prompt is None:
            prompt = " ".join(WORDS[i % len(WORDS)] for i in range(words))
            self._prompts[words] = prompt
        return prompt

    def prepare(self) -> None:
        """Draw the whole arrival schedule up front, so sending it costs only the sends."""
        scenario = self.scenario
        schedule = list(
            arrival_times(scenario.traffic, scenario.duration_s, self.rate_at, self.rng)
        )
        self._schedule = schedule
        self.results.duration_s = scenario.duration_s
        self.results.scheduled = len(schedule)
        self.results.requested_rate = len(schedule) / scenario.duration_s

    async def run(self, on_tick: Callable[[Results, float], None] | None = None) -> Results:
        if self._schedule is None:
            self.prepare()
        assert self._schedule is not None
        schedule = self._schedule
        scenario = self.scenario
        traffic = scenario.traffic
        results = self.results
        timeout = aiohttp.ClientTimeout(total=traffic.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.connections, force_close=False)
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # time.monotonic, not loop.time: uvloop's clock is cached per loop
            # iteration at millisecond resolution, too coarse for 3,000 req/s.
            self._start = start = time.monotonic()
            results.started_at = time.time()
            ticker = asyncio.create_task(self._tick(on_tick)) if on_tick else None
            try:
                index, count = 0, len(schedule)
                end = start + scenario.duration_s
                while index < count:
                    now = time.monotonic()
                    while index < count and start + schedule[index] <= now:
                        lag = now - (start + schedule[index])
                        if lag > results.max_lag_s:
                            results.max_lag_s = lag
                        if lag > LAG_WARNING_S:
                            results.late_sends += 1
                        if now <= end:
                            results.sent_in_window += 1
                        task = loop.create_task(self._request(session, schedule[index]))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        results.sent += 1
                        index += 1
                    if index < count:
                        # Always yield, even when the next arrival is already due,
                        # so answers are read while the schedule runs.
                        await asyncio.sleep(max(0.0, start + schedule[index] - time.monotonic()))
                remaining = end - time.monotonic()
                if remaining > 0:
                    await asyncio.sleep(remaining)
                if tasks:
                    # Answers still owed after the schedule ends are waited for, up
                    # to the request timeout. Requests still retrying after that
                    # are abandoned and counted as such, not left to outlive the run.
                    await asyncio.wait(tasks, timeout=traffic.timeout_s + 1)
                    for task in list(tasks):
                        task.cancel()
                        results.outcomes["abandoned"] += 1
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                # Cancelled mid-run (a demo quit early): no request may outlive
                # the session it was sent on.
                for task in list(tasks):
                    task.cancel()
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                if ticker is not None:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker
        return results

    async def _tick(self, on_tick: Callable[[Results, float], None]) -> None:
        while True:
            await asyncio.sleep(1.0)
            on_tick(self.results, time.monotonic() - self._start)

    async def _request(self, session: aiohttp.ClientSession, offset: float) -> None:
        traffic = self.scenario.traffic
        rng = self.rng
        results = self.results
        scheduled_at = self._start + offset
        prompt_dist, output_dist, stream_share, mix = traffic.shapes_at(offset)
        if mix:
            key = rng.choices([name for name, _ in mix], [weight for _, weight in mix])[0]
        else:
            key = rng.choice(list(self._auth))
        stream = stream_share > 0 and rng.random() < stream_share
        body = json.dumps(
            {
                "model": self.target.model,
                "messages": [{"role": "user", "content": self._prompt(draw(prompt_dist, rng))}],
                "max_tokens": draw(output_dist, rng),
                "stream": stream,
            }
        ).encode()
        url = f"{self.target.url}/v1/chat/completions"
        second = self._second(offset)
        attempt = 0
        while True:
            headers = {
                "Authorization": self._auth[key],
                "Content-Type": "application/json",
                # The OpenAI SDKs send this on every retry; gateways can count
                # retried traffic by it, and retry storms show up in metrics.
                "x-stainless-retry-count": str(attempt),
            }
            results.attempts += 1
            attempt_second = self._second(time.monotonic() - self._start)
            attempt_second.offered += 1
            if attempt:
                attempt_second.retries += 1
            outcome, retry_after, ttft = await self._attempt(session, url, body, headers, stream)
            if outcome == "ok":
                latency = time.monotonic() - scheduled_at
                results.ok += 1
                results.outcomes["ok"] += 1
                results.latencies.append(latency)
                if ttft is not None:
                    results.ttft.append(ttft - scheduled_at)
                second.ok += 1
                second.latencies.append(latency)
                return
            results.rejections[outcome] += 1
            self._second(time.monotonic() - self._start).failed[outcome] += 1
            retryable = outcome not in ("http_400", "http_401", "http_403", "http_404", "http_413")
            if traffic.client == "none" or attempt >= traffic.max_retries or not retryable:
                results.outcomes[outcome] += 1
                return
            attempt += 1
            if traffic.client == "backoff":
                backoff = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.75 + 0.5 * rng.random())
                await asyncio.sleep(retry_after if retry_after is not None else backoff)

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: bytes,
        headers: dict[str, str],
        stream: bool,
    ) -> tuple[str, float | None, float | None]:
        try:
            async with session.post(url, data=body, headers=headers) as response:
                if response.status == 200:
                    first = None
                    if stream:
                        async for _ in response.content.iter_any():
                            if first is None:
                                first = time.monotonic()
                    else:
                        await response.read()
                    return "ok", None, first
                payload = await response.read()
                return self._classify(response.status, payload), _retry_after(response), None
        except TimeoutError:
            return "timeout", None, None
        except aiohttp.ClientError:
            return "connection_error", None, None

    @staticmethod
    def _classify(status: int, payload: bytes) -> str:
        try:
            code = json.loads(payload)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if isinstance(code, str) and code in KNOWN_CODES:
            return code
        return f"http_{status}"


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = response.headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / divisor
        except ValueError:
            continue
        if 0 < value <= 60:
            return value
    return None
