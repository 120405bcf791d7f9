"""Presets: each Prometheus-speaking system's metric names in quell's words.

A preset is a table of rules, one per quell series, naming the source
families it is read from, which of their labels to keep (renamed to quell's
label words) and which label values to count. Everything not kept is summed
away, so ``rejected_total{reason}`` from a gateway with per-key labels is one
series per reason, not one per key. Names follow each system's documentation:

- quell-gateway: ``quell_gateway_*`` (inference/gateway/metrics.py).
- vllm: vLLM V1 (``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``)
  and V0 (``vllm:gpu_cache_usage_perc``, ``vllm:num_requests_swapped``), plus
  the ``quell_engine_*`` gauges the bundled engine adds (slots, waiting-queue
  bound, rejections), which vLLM itself does not export. ``quell-engine`` is
  another name for it.
- tgi: Hugging Face text-generation-inference router (``tgi_queue_size``;
  counters without ``_total``).
- triton: NVIDIA Triton (``nv_inference_*``; cumulative microsecond counters
  become interval means per request).
- ray-serve: Ray Serve (``ray_serve_*``, latencies in milliseconds).
- litellm: LiteLLM proxy (``litellm_*``).

Detection counts the families under each preset's prefixes and picks the
preset with most; the bundled engine exposes ``vllm:`` names and so is
detected as ``vllm``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from collectors.exposition import LabelSet, Scrape, family_names, label_set
from collectors.model import Labels
from collectors.rates import HistogramReading
from collectors.readings import Reading

Predicate = Callable[[Mapping[str, str]], bool]
RuleKind = Literal["gauge", "counter", "histogram", "ratio"]


def only(label: str, *values: str) -> Predicate:
    wanted = frozenset(values)
    return lambda labels: labels.get(label, "") in wanted


def besides(label: str, *values: str) -> Predicate:
    unwanted = frozenset(values)
    return lambda labels: labels.get(label, "") not in unwanted


@dataclass(frozen=True, slots=True)
class Rule:
    series: str
    sources: tuple[str, ...]
    kind: RuleKind
    keep: tuple[tuple[str, str], ...] = ()  # (source label, quell label)
    where: Predicate | None = None
    fixed: tuple[tuple[str, str], ...] = ()
    scale: float = 1.0
    unless: str = ""  # skip this rule when the source exposes this family
    rename: tuple[tuple[str, str], ...] = ()  # label values in quell's words
    denominator: str = ""  # ratio rules: the cumulative count of events
    subtract: tuple[str, ...] = ()  # ratio rules: families taken off the numerator


def rule(
    series: str,
    sources: str | tuple[str, ...],
    kind: RuleKind = "gauge",
    *,
    keep: tuple[tuple[str, str], ...] = (),
    where: Predicate | None = None,
    fixed: tuple[tuple[str, str], ...] = (),
    scale: float = 1.0,
    unless: str = "",
    rename: tuple[tuple[str, str], ...] = (),
    denominator: str = "",
    subtract: tuple[str, ...] = (),
) -> Rule:
    names = (sources,) if isinstance(sources, str) else sources
    return Rule(
        series, names, kind, keep, where, fixed, scale, unless, rename, denominator, subtract
    )


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    prefixes: tuple[str, ...]
    rules: tuple[Rule, ...]
    about: str

    def families(self) -> frozenset[str]:
        """The families its rules read, in every form a lookup may use."""
        return family_names(
            name for r in self.rules for name in (*r.sources, *r.subtract, r.denominator, r.unless)
        )


# -- quell-gateway ---------------------------------------------------------

GATEWAY_REJECTED = (
    "works_queue_full",
    "queue_timeout",
    "priority_shed",
    "rate_limited",
    "circuit_open",
    "unauthorized",
    "bad_request",
)
GATEWAY_FAILED = (
    "upstream_error",
    "upstream_rejected",
    "upstream_timeout",
    "upstream_unreachable",
    "client_gone",
)
_PRIORITY = (("priority", "priority"),)
_UPSTREAM = (("upstream", "upstream"),)

GATEWAY = Preset(
    "quell-gateway",
    ("quell_gateway_",),
    (
        rule("depth", "quell_gateway_queue_depth_by_priority", keep=_PRIORITY),
        rule("depth", "quell_gateway_queue_depth", unless="quell_gateway_queue_depth_by_priority"),
        rule("capacity", "quell_gateway_queue_capacity"),
        rule("workers", "quell_gateway_workers"),
        rule("running", "quell_gateway_in_flight"),
        rule("queue_timeout_seconds", "quell_gateway_queue_timeout_seconds"),
        rule("priority_shed", "quell_gateway_priority_shed", keep=_PRIORITY),
        rule("offered_total", "quell_gateway_requests_received", "counter", keep=_PRIORITY),
        rule("retried_total", "quell_gateway_requests_retried", "counter", keep=_PRIORITY),
        rule(
            "completed_total",
            "quell_gateway_requests",
            "counter",
            keep=_PRIORITY,
            where=only("outcome", "ok", "cached"),
        ),
        rule(
            "rejected_total",
            "quell_gateway_requests",
            "counter",
            keep=(*_PRIORITY, ("outcome", "reason")),
            where=only("outcome", *GATEWAY_REJECTED),
            # The engine and the access log call it queue_full; one word for
            # one cause, whichever layer refused.
            rename=(("works_queue_full", "queue_full"),),
        ),
        rule(
            "failed_total",
            "quell_gateway_requests",
            "counter",
            keep=(*_PRIORITY, ("outcome", "reason")),
            where=only("outcome", *GATEWAY_FAILED),
        ),
        rule("queue_wait_seconds", "quell_gateway_queue_wait_seconds", "histogram", keep=_PRIORITY),
        rule(
            "latency_seconds", "quell_gateway_request_duration_seconds", "histogram", keep=_PRIORITY
        ),
        rule(
            "upstream_latency_seconds",
            "quell_gateway_upstream_latency_seconds",
            "histogram",
            keep=_UPSTREAM,
        ),
        rule("upstream_in_flight", "quell_gateway_upstream_in_flight", keep=_UPSTREAM),
        rule("upstream_state", "quell_gateway_upstream_breaker_state", keep=_UPSTREAM),
        rule("upstream_healthy", "quell_gateway_upstream_healthy", keep=_UPSTREAM),
    ),
    "quell's bundled AI gateway",
)

# -- vLLM (and the bundled engine, which speaks vLLM's names) --------------

_ENGINE = (("engine", "engine"), ("model_name", "model"))

VLLM = Preset(
    "vllm",
    ("vllm:", "quell_engine_"),
    (
        rule("depth", "vllm:num_requests_waiting", keep=_ENGINE),
        rule("running", "vllm:num_requests_running", keep=_ENGINE),
        rule("swapped", "vllm:num_requests_swapped", keep=_ENGINE),
        rule("kv_usage", "vllm:kv_cache_usage_perc", keep=_ENGINE),
        # V0 name of the same gauge, before V1 renamed it.
        rule(
            "kv_usage", "vllm:gpu_cache_usage_perc", keep=_ENGINE, unless="vllm:kv_cache_usage_perc"
        ),
        rule("capacity", "quell_engine_max_waiting", keep=_ENGINE),
        rule("workers", "quell_engine_slots", keep=_ENGINE),
        rule("completed_total", "vllm:request_success", "counter", keep=_ENGINE),
        rule(
            "rejected_total",
            "quell_engine_requests_rejected",
            "counter",
            keep=(*_ENGINE, ("reason", "reason")),
        ),
        rule("preemptions_total", "vllm:num_preemptions", "counter", keep=_ENGINE),
        rule("queue_wait_seconds", "vllm:request_queue_time_seconds", "histogram", keep=_ENGINE),
        rule("service_seconds", "vllm:request_inference_time_seconds", "histogram", keep=_ENGINE),
        rule("latency_seconds", "vllm:e2e_request_latency_seconds", "histogram", keep=_ENGINE),
        rule("token_seconds", "vllm:time_per_output_token_seconds", "histogram", keep=_ENGINE),
        # vLLM renamed it; both names are read so either version is understood.
        rule("token_seconds", "vllm:inter_token_latency_seconds", "histogram", keep=_ENGINE),
    ),
    "vLLM V0/V1 (and the bundled quell engine)",
)

# -- Hugging Face TGI --------------------------------------------------------

# Refusals before any generation; the other errors happened while serving.
TGI_REJECTED = ("overloaded", "validation")

TGI = Preset(
    "tgi",
    ("tgi_",),
    (
        rule("depth", "tgi_queue_size"),
        rule("running", "tgi_batch_current_size"),
        rule("offered_total", "tgi_request_count", "counter"),
        rule("completed_total", "tgi_request_success", "counter"),
        rule(
            "rejected_total",
            "tgi_request_failure",
            "counter",
            keep=(("err", "reason"),),
            where=only("err", *TGI_REJECTED),
        ),
        rule(
            "failed_total",
            "tgi_request_failure",
            "counter",
            keep=(("err", "reason"),),
            where=besides("err", *TGI_REJECTED),
        ),
        rule("queue_wait_seconds", "tgi_request_queue_duration", "histogram"),
        rule("service_seconds", "tgi_request_inference_duration", "histogram"),
        rule("latency_seconds", "tgi_request_duration", "histogram"),
    ),
    "Hugging Face text-generation-inference",
)

# -- NVIDIA Triton -----------------------------------------------------------

_MODEL = (("model", "model"),)
_GPU = (("gpu_uuid", "gpu"),)
MICROSECONDS = 1e-6

TRITON = Preset(
    "triton",
    ("nv_inference_",),
    (
        rule("depth", "nv_inference_pending_request_count", keep=_MODEL),
        rule(
            "offered_total",
            ("nv_inference_request_success", "nv_inference_request_failure"),
            "counter",
            keep=_MODEL,
        ),
        rule("completed_total", "nv_inference_request_success", "counter", keep=_MODEL),
        rule(
            "rejected_total",
            "nv_inference_request_failure",
            "counter",
            keep=(*_MODEL, ("reason", "reason")),
            where=only("reason", "REJECTED"),
        ),
        rule(
            "failed_total",
            "nv_inference_request_failure",
            "counter",
            keep=(*_MODEL, ("reason", "reason")),
            where=besides("reason", "REJECTED"),
        ),
        rule(
            "queue_wait_seconds",
            "nv_inference_queue_duration_us",
            "ratio",
            keep=_MODEL,
            denominator="nv_inference_request_success",
            scale=MICROSECONDS,
        ),
        # Request time less queue time: what the model instance spent on it.
        rule(
            "service_seconds",
            "nv_inference_request_duration_us",
            "ratio",
            keep=_MODEL,
            denominator="nv_inference_request_success",
            subtract=("nv_inference_queue_duration_us",),
            scale=MICROSECONDS,
        ),
        rule("gpu_utilization_percent", "nv_gpu_utilization", keep=_GPU, scale=100.0),
        rule("gpu_memory_used_bytes", "nv_gpu_memory_used_bytes", keep=_GPU),
        rule("gpu_memory_total_bytes", "nv_gpu_memory_total_bytes", keep=_GPU),
        rule("gpu_power_watts", "nv_gpu_power_usage", keep=_GPU),
        rule("gpu_power_limit_watts", "nv_gpu_power_limit", keep=_GPU),
    ),
    "NVIDIA Triton Inference Server",
)

# -- Ray Serve ---------------------------------------------------------------

_DEPLOYMENT = (("deployment", "deployment"),)
_REPLICA = (("deployment", "deployment"), ("replica", "replica"))
MILLISECONDS = 1e-3

RAY_SERVE = Preset(
    "ray-serve",
    ("ray_serve_",),
    (
        rule("depth", "ray_serve_deployment_queued_queries", keep=_DEPLOYMENT),
        rule("running", "ray_serve_replica_processing_queries", keep=_REPLICA),
        # The router's view, when requests come through the proxy only.
        rule(
            "running",
            "ray_serve_num_ongoing_requests_at_replicas",
            keep=_DEPLOYMENT,
            unless="ray_serve_replica_processing_queries",
        ),
        rule("replicas", "ray_serve_deployment_replica_healthy", keep=_DEPLOYMENT),
        rule("offered_total", "ray_serve_num_router_requests", "counter", keep=_DEPLOYMENT),
        rule("completed_total", "ray_serve_deployment_request_counter", "counter", keep=_REPLICA),
        rule(
            "failed_total",
            "ray_serve_deployment_error_counter",
            "counter",
            keep=_REPLICA,
            fixed=(("reason", "error"),),
        ),
        # Serve answers 503 when a deployment's max_queued_requests is reached.
        rule(
            "rejected_total",
            "ray_serve_num_deployment_http_error_requests",
            "counter",
            keep=_DEPLOYMENT,
            where=only("error_code", "503"),
            fixed=(("reason", "backpressure"),),
        ),
        rule(
            "service_seconds",
            "ray_serve_deployment_processing_latency_ms",
            "histogram",
            keep=_DEPLOYMENT,
            scale=MILLISECONDS,
        ),
        rule(
            "latency_seconds",
            "ray_serve_http_request_latency_ms",
            "histogram",
            scale=MILLISECONDS,
        ),
    ),
    "Ray Serve",
)

# -- LiteLLM proxy -----------------------------------------------------------

# One model name may be served by several deployments (regions, providers);
# the API base tells them apart, so a state is never added to another's.
_LITELLM_DEPLOYMENT = (("litellm_model_name", "upstream"), ("api_base", "deployment"))

LITELLM = Preset(
    "litellm",
    ("litellm_",),
    (
        rule("running", "litellm_in_flight_requests"),
        rule("offered_total", "litellm_proxy_total_requests_metric", "counter"),
        rule("completed_total", "litellm_deployment_success_responses", "counter"),
        rule(
            "rejected_total",
            "litellm_proxy_failed_requests_metric",
            "counter",
            where=only("exception_status", "429"),
            fixed=(("reason", "rate_limited"),),
        ),
        rule(
            "failed_total",
            "litellm_proxy_failed_requests_metric",
            "counter",
            keep=(("exception_class", "reason"),),
            where=besides("exception_status", "429"),
        ),
        rule("latency_seconds", "litellm_request_total_latency_metric", "histogram"),
        rule(
            "upstream_latency_seconds",
            "litellm_llm_api_latency_metric",
            "histogram",
            keep=(("model", "upstream"),),
        ),
        # 0 healthy, 1 partial outage, 2 complete outage: the same scale as
        # a breaker's closed / half-open / open.
        rule("upstream_state", "litellm_deployment_state", keep=_LITELLM_DEPLOYMENT),
        rule(
            "upstream_remaining_requests",
            "litellm_remaining_requests_metric",
            keep=_LITELLM_DEPLOYMENT,
        ),
    ),
    "LiteLLM proxy",
)

PROMETHEUS_PRESETS: dict[str, Preset] = {
    p.name: p for p in (GATEWAY, VLLM, TGI, TRITON, RAY_SERVE, LITELLM)
}
ALIASES = {"quell-engine": "vllm", "ray": "ray-serve", "nginx-stub-status": "nginx"}
# Sources that are not Prometheus text; read by their own modules.
OTHER_PRESETS = {
    "nginx": "nginx stub_status page",
    "rabbitmq": "RabbitMQ management API queue (rabbitmq+http://user:pass@host:15672/vhost/queue)",
    "celery": "Celery queue in Redis (redis://host:port/db?queue=celery&kind=celery)",
    "rq": "RQ queue in Redis (redis://host:port/db?queue=default&kind=rq)",
}
PRESET_NAMES: tuple[str, ...] = (*PROMETHEUS_PRESETS, *OTHER_PRESETS)


def canonical(name: str) -> str | None:
    """The preset called ``name`` (or an alias of it), or None."""
    name = ALIASES.get(name, name)
    return name if name in PRESET_NAMES else None


def detect(scrape: Scrape) -> Preset | None:
    names = scrape.names()
    best: Preset | None = None
    best_count = 0
    for preset in PROMETHEUS_PRESETS.values():
        count = sum(1 for n in names if n.startswith(preset.prefixes))
        if count > best_count:
            best, best_count = preset, count
    return best


# -- applying a preset -----------------------------------------------------


# (id of a rule, a label set it read) -> (the rule, its kept labels, or None
# where ``where`` refuses them). A page's label sets repeat every scrape, and
# filtering and renaming them again was most of a preset's CPU. The entry
# holds its rule, so the id cannot be reused while the entry is there.
_KEPT: dict[tuple[int, LabelSet], tuple[Rule, Labels | None]] = {}
_KEPT_MAX = 50_000


def _kept_once(
    rule_: Rule, key: LabelSet, source_labels: Mapping[str, str] | None = None
) -> Labels | None:
    """``_kept`` of labels ``where`` accepts, None for the others; ``key``: the labels' set."""
    known = _KEPT.get((id(rule_), key))
    if known is not None and known[0] is rule_:
        return known[1]
    if source_labels is None:
        source_labels = dict(key)
    kept: Labels | None = None
    if rule_.where is None or rule_.where(source_labels):
        kept = _kept(rule_, source_labels)
    if len(_KEPT) >= _KEPT_MAX:
        _KEPT.clear()
    _KEPT[(id(rule_), key)] = (rule_, kept)
    return kept


def _kept(rule_: Rule, source_labels: Mapping[str, str]) -> Labels:
    if not rule_.keep:
        return tuple(sorted(rule_.fixed)) if rule_.fixed else ()
    renames = dict(rule_.rename) if rule_.rename else None
    kept = dict(rule_.fixed)
    for source_label, quell_label in rule_.keep:
        value = source_labels.get(source_label)
        if not value:
            continue
        if quell_label == "reason":
            value = value.lower()
        kept[quell_label] = renames.get(value, value) if renames else value
    return tuple(sorted(kept.items()))


def _sum_histograms(a: HistogramReading, b: HistogramReading) -> HistogramReading:
    if [bound for bound, _ in a.buckets] != [bound for bound, _ in b.buckets]:
        return a  # layouts differ: adding them would invent a distribution
    merged = tuple((bound, x + y) for (bound, x), (_, y) in zip(a.buckets, b.buckets, strict=True))
    return HistogramReading(merged, a.total + b.total, a.count + b.count)


def _values(
    scrape: Scrape, rule_: Rule, families: Iterable[str], sign: float = 1.0
) -> dict[Labels, float]:
    totals: dict[Labels, float] = {}
    for family in families:
        for source_labels, value in scrape.values(family):
            key = _kept_once(rule_, label_set(source_labels), source_labels)
            if key is not None:
                totals[key] = totals.get(key, 0.0) + sign * value
    return totals


def extract(preset: Preset, scrape: Scrape) -> list[Reading]:
    readings: list[Reading] = []
    for r in preset.rules:
        if r.unless and scrape.has(r.unless):
            continue
        if not any(scrape.has(s) for s in r.sources):
            continue
        if r.kind in ("gauge", "counter"):
            for key, value in _values(scrape, r, r.sources).items():
                readings.append(Reading(r.series, key, r.kind, value, scale=r.scale))
        elif r.kind == "histogram":
            readings.extend(_histogram_readings(scrape, r))
        else:
            numerators = _values(scrape, r, r.sources)
            for key, value in _values(scrape, r, r.subtract, -1.0).items():
                numerators[key] = numerators.get(key, 0.0) + value
            denominators = _values(scrape, r, (r.denominator,))
            for key, numerator in numerators.items():
                if key in denominators:
                    readings.append(
                        Reading(
                            r.series,
                            key,
                            "ratio",
                            numerator,
                            denominator=denominators[key],
                            scale=r.scale,
                        )
                    )
    return readings


def _histogram_readings(scrape: Scrape, r: Rule) -> list[Reading]:
    grouped: dict[Labels, HistogramReading] = {}
    for source in r.sources:
        for labels, reading in scrape.histograms(source).items():
            key = _kept_once(r, labels)
            if key is None:
                continue
            previous = grouped.get(key)
            grouped[key] = reading if previous is None else _sum_histograms(previous, reading)
    readings = [
        Reading(r.series, key, "histogram", histogram=h, scale=r.scale)
        for key, h in grouped.items()
    ]
    if len(grouped) > 1:
        # One distribution over every label set too: a p95 of the whole
        # cannot be rebuilt from per-priority p95s downstream.
        overall: HistogramReading | None = None
        for h in grouped.values():
            overall = h if overall is None else _sum_histograms(overall, h)
        if overall is not None:
            readings.append(
                Reading(
                    r.series, tuple(sorted(r.fixed)), "histogram", histogram=overall, scale=r.scale
                )
            )
    return readings
