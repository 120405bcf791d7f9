"""The engine's Prometheus metrics, under vLLM V1's names.

Using vLLM's names (``vllm:num_requests_waiting`` and friends, labelled
``model_name`` and ``engine``) means quell's vLLM preset is exercised for
real against the bundled engine. What vLLM does not expose (its slot count,
its waiting-queue bound, rejections) is added under ``quell_engine_``.

Gauges are computed at scrape time from the scheduler instead of being
updated on every change: the hot path only touches counters and histograms.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from inference.engine.scheduler import Observer, Scheduler, Sequence

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0,
)  # fmt: skip
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

REJECTION_REASONS = (
    "queue_full",
    "injected_failure",
    "invalid_request",
    "context_length_exceeded",
    "model_not_found",
    "unauthorized",
    "body_too_large",
)


class _SchedulerGauges(Collector):
    def __init__(self, scheduler: Scheduler, labels: dict[str, str]) -> None:
        self._scheduler = scheduler
        self._names = list(labels)
        self._values = list(labels.values())

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=self._names)
        family.add_metric(self._values, value)
        return family

    def collect(self) -> Iterator[Metric]:
        s = self._scheduler
        yield self._gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            s.running_count,
        )  # fmt: skip
        yield self._gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
            s.waiting_count,
        )  # fmt: skip
        yield self._gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_usage()
        )
        yield self._gauge("quell_engine_slots", "Sequences that may run at once.", s.slots)
        yield self._gauge(
            "quell_engine_max_waiting", "Capacity of the waiting queue.", s.max_waiting
        )
        yield self._gauge("quell_engine_kv_tokens", "KV-token budget.", s.kv_tokens)
        faults = s.faults
        yield self._gauge(
            "quell_engine_fault_slowdown", "Injected slowdown factor (1 = none).", faults.slowdown
        )
        yield self._gauge(
            "quell_engine_fault_stalled", "1 while the engine is stalled.", float(faults.stalled)
        )
        yield self._gauge(
            "quell_engine_fault_error_rate", "Injected failure fraction.", faults.error_rate
        )
        yield self._gauge(
            "quell_engine_fault_dependency_seconds",
            "Injected slow-dependency delay per request.",
            faults.dependency_ms / 1000.0,
        )


class EngineMetrics(Observer):
    def __init__(self, model_name: str, engine: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = {"model_name": model_name, "engine": engine}
        names = list(self.labels)
        values = list(self.labels.values())
        r = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, registry=r, buckets=buckets)

        self.prompt_tokens = counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed."
        ).labels(*values)
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        ).labels(*values)
        self.preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        ).labels(*values)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=r,
        )
        self.success = {
            reason: success.labels(*values, reason) for reason in ("stop", "length", "abort")
        }
        rejected = Counter(
            "quell_engine_requests_rejected",
            "Requests refused before or instead of being served, by reason.",
            [*names, "reason"],
            registry=r,
        )
        self.rejected = {reason: rejected.labels(*values, reason) for reason in REJECTION_REASONS}
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            LATENCY_BUCKETS,
        ).labels(*values)
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            LATENCY_BUCKETS,
        ).labels(*values)
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            LATENCY_BUCKETS,
        ).labels(*values)
        self.time_per_output_token = histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            LATENCY_BUCKETS,
        ).labels(*values)
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            LATENCY_BUCKETS,
        ).labels(*values)
        self.prompt_hist = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS
        ).labels(*values)
        self.generation_hist = histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            TOKEN_BUCKETS,
        ).labels(*values)

    def watch(self, scheduler: Scheduler) -> None:
        self.registry.register(_SchedulerGauges(scheduler, self.labels))

    def reject(self, reason: str) -> None:
        self.rejected[reason].inc()

    def on_step(self, running: int, prefill_tokens: int, generated_tokens: int) -> None:
        if prefill_tokens:
            self.prompt_tokens.inc(prefill_tokens)
        self.generation_tokens.inc(generated_tokens)

    def on_finish(self, seq: Sequence) -> None:
        self.success[seq.finish_reason].inc()
        if seq.admitted_at:
            self.queue_time.observe(seq.admitted_at - seq.arrival)
            self.inference_time.observe(seq.finished_at - seq.admitted_at)
        if seq.first_token_at:
            self.ttft.observe(seq.first_token_at - seq.arrival)
            if seq.generated > 1:
                # Decode speed alone: a slow dependency before prefill leaves it
                # unchanged, a slower engine stretches it.
                self.time_per_output_token.observe(
                    (seq.finished_at - seq.first_token_at) / (seq.generated - 1)
                )
        if seq.finish_reason != "abort":
            self.e2e.observe(seq.finished_at - seq.arrival)
            self.prompt_hist.observe(seq.prompt_tokens)
            self.generation_hist.observe(seq.generated)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
