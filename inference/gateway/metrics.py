"""The gateway's Prometheus metrics, prefixed ``quell_gateway_``.

Counters and histograms are bound to their label values once (at start, or
when a key or upstream appears) so the hot path does no label lookups.
Gauges are read from the live objects at scrape time instead of being
updated on every change.

Offered load is ``requests_received_total``: every request that reached an
API route, admitted or not, counted before any check that may reject it.
``requests_total{outcome}`` says what became of each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from inference.drain_rate import DrainRate
from inference.gateway.admission import Admission
from inference.gateway.cache import ResponseCache
from inference.gateway.config import PRIORITIES
from inference.gateway.upstreams import UpstreamPool

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
)  # fmt: skip
# Priority of requests that never presented a valid key.
NO_PRIORITY = "none"
OUTCOMES = (
    "ok",
    "cached",
    "upstream_error",
    "upstream_rejected",
    "upstream_timeout",
    "upstream_unreachable",
    "circuit_open",
    "works_queue_full",
    "queue_timeout",
    "priority_shed",
    "rate_limited",
    "unauthorized",
    "bad_request",
    "client_gone",
)


class _LiveGauges(Collector):
    def __init__(
        self,
        admission: Admission,
        drain: DrainRate,
        pool: UpstreamPool,
        cache: ResponseCache,
        shed: Sequence[bool],
        clock: Callable[[], float],
    ) -> None:
        self.admission = admission
        self.drain = drain
        self.pool = pool
        self.cache = cache
        self.shed = shed
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        a = self.admission
        yield GaugeMetricFamily(
            "quell_gateway_queue_depth", "Requests waiting in the works queue.", value=a.depth
        )
        by_class = GaugeMetricFamily(
            "quell_gateway_queue_depth_by_priority",
            "Requests waiting in the works queue, by priority class.",
            labels=["priority"],
        )
        for priority, depth in zip(PRIORITIES, a.class_depth, strict=True):
            by_class.add_metric([priority], depth)
        yield by_class
        yield GaugeMetricFamily(
            "quell_gateway_queue_capacity", "Bound of the works queue.", value=a.capacity
        )
        yield GaugeMetricFamily(
            "quell_gateway_queue_timeout_seconds",
            "Longest a request may wait in the works queue.",
            value=a.timeout_s,
        )
        yield GaugeMetricFamily(
            "quell_gateway_workers", "Requests that may be in flight upstream at once.",
            value=a.workers,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "quell_gateway_in_flight", "Requests holding a worker now.", value=a.in_flight
        )
        yield GaugeMetricFamily(
            "quell_gateway_service_rate",
            "Requests completed per second by the worker pool, smoothed.",
            value=self.drain.per_second,
        )
        shed = GaugeMetricFamily(
            "quell_gateway_priority_shed",
            "1 while a priority class is rejected outright.",
            labels=["priority"],
        )
        for priority, on in zip(PRIORITIES, self.shed, strict=True):
            shed.add_metric([priority], float(on))
        yield shed
        now = self.clock()
        families = {
            "in_flight": GaugeMetricFamily(
                "quell_gateway_upstream_in_flight",
                "Requests in flight to an upstream.",
                labels=["upstream"],
            ),
            "breaker": GaugeMetricFamily(
                "quell_gateway_upstream_breaker_state",
                "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                labels=["upstream"],
            ),
            "healthy": GaugeMetricFamily(
                "quell_gateway_upstream_healthy",
                "1 while health checks pass.",
                labels=["upstream"],
            ),
            "drained": GaugeMetricFamily(
                "quell_gateway_upstream_drained",
                "1 while an upstream takes no new requests.",
                labels=["upstream"],
            ),
            "available": GaugeMetricFamily(
                "quell_gateway_upstream_available",
                "1 while an upstream may be picked for a new request.",
                labels=["upstream"],
            ),
        }
        for u in self.pool.upstreams:
            families["in_flight"].add_metric([u.name], u.in_flight)
            families["breaker"].add_metric([u.name], int(u.breaker.state))
            families["healthy"].add_metric([u.name], float(u.healthy))
            families["drained"].add_metric([u.name], float(u.drained))
            families["available"].add_metric([u.name], float(u.eligible(now)))
        yield from families.values()
        yield GaugeMetricFamily(
            "quell_gateway_cache_enabled", "1 while the response cache is on.",
            value=float(self.cache.enabled),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "quell_gateway_cache_entries", "Responses held in the cache.", value=len(self.cache)
        )


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        received = Counter(
            "quell_gateway_requests_received",
            "Requests that reached an API route, admitted or not (offered load).",
            ["priority"],
            registry=r,
        )
        self.received = [received.labels(p) for p in PRIORITIES]
        self.received_unauthenticated = received.labels(NO_PRIORITY)
        retried = Counter(
            "quell_gateway_requests_retried",
            "Requests that are a client's retry of an earlier attempt (x-stainless-retry-count "
            "above 0, as the OpenAI SDKs send): a rising share marks a retry storm.",
            ["priority"],
            registry=r,
        )
        self.retried = [retried.labels(p) for p in PRIORITIES]
        requests = Counter(
            "quell_gateway_requests",
            "Requests by what became of them and priority class.",
            ["outcome", "priority"],
            registry=r,
        )
        self.outcomes = {
            (outcome, index): requests.labels(outcome, priority)
            for outcome in OUTCOMES
            for index, priority in enumerate(PRIORITIES)
        }
        self.unauthorized = requests.labels("unauthorized", NO_PRIORITY)
        self.unauthenticated_bad_request = requests.labels("bad_request", NO_PRIORITY)
        queue_wait = Histogram(
            "quell_gateway_queue_wait_seconds",
            "Time admitted requests waited for a worker.",
            ["priority"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.queue_wait = [queue_wait.labels(p) for p in PRIORITIES]
        duration = Histogram(
            "quell_gateway_request_duration_seconds",
            "Time from arrival to the last byte of the answer, for requests sent upstream.",
            ["priority"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.duration = [duration.labels(p) for p in PRIORITIES]
        self._upstream_latency = Histogram(
            "quell_gateway_upstream_latency_seconds",
            "Time an upstream took to answer, by upstream.",
            ["upstream"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self._upstream_requests = Counter(
            "quell_gateway_upstream_requests",
            "Requests sent to an upstream, by result (success or failure).",
            ["upstream", "result"],
            registry=r,
        )
        self._rate_limited = Counter(
            "quell_gateway_rate_limited",
            "Requests refused by a key's rate limit, by key name.",
            ["key"],
            registry=r,
        )
        tokens = Counter(
            "quell_gateway_tokens",
            "Tokens reported by upstreams, by kind (prompt or completion).",
            ["kind"],
            registry=r,
        )
        self.prompt_tokens = tokens.labels("prompt")
        self.completion_tokens = tokens.labels("completion")
        self.cache_hits = Counter(
            "quell_gateway_cache_hits", "Requests answered from the cache.", registry=r
        )
        self.cache_misses = Counter(
            "quell_gateway_cache_misses",
            "Cacheable requests not found in the cache.",
            registry=r,
        )

    def watch(
        self,
        admission: Admission,
        drain: DrainRate,
        pool: UpstreamPool,
        cache: ResponseCache,
        shed: Sequence[bool],
        clock: Callable[[], float],
    ) -> None:
        self.registry.register(_LiveGauges(admission, drain, pool, cache, shed, clock))

    def rate_limited(self, key_name: str) -> Counter:
        return self._rate_limited.labels(key_name)

    def upstream_latency(self, upstream: str) -> Histogram:
        return self._upstream_latency.labels(upstream)

    def upstream_requests(self, upstream: str, result: str) -> Counter:
        return self._upstream_requests.labels(upstream, result)

    def forget_upstream(self, upstream: str) -> None:
        """Drop a removed upstream's series so it stops being exported."""
        with contextlib.suppress(KeyError):
            self._upstream_latency.remove(upstream)
        for result in ("success", "failure"):
            with contextlib.suppress(KeyError):
                self._upstream_requests.remove(upstream, result)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
