"""quell's vocabulary: every series a collector may emit, its meaning and unit.

This table is the interface between the sources and everything downstream
(store, diagnosis, console, playbooks, `quell probe --json`). Presets map each
system's own names onto these words; nothing downstream knows a system's
native names. Add a word here before a collector emits it, and never change
the meaning of one that exists: recorded incidents are replayed against it.

Conventions:

- ``*_total`` is a counter (only ever grows, except across a restart). The
  rate tracker turns each into ``*_rate`` (per second) from the second scrape
  on; a counter that went down is read as a restart, never as a negative rate.
- ``*_seconds`` from a histogram is the mean over the last interval (sum and
  count deltas); ``*_p95_seconds`` is the 95th percentile estimated from the
  bucket deltas of the same interval. Neither is emitted for an interval in
  which nothing was observed: a stalled queue completes nothing.
- Labels, where present: ``target`` (the source's name, on every queue
  sample), ``queue``, ``engine``, ``replica``, ``deployment``, ``model``,
  ``priority``, ``reason``, ``upstream``, ``gpu``, ``mig``, ``core``,
  ``process``, ``pid``, ``port``, ``kind``, ``source``. Reasons are lower-case
  words (``queue_full``, ``rejected``, ``overloaded``).
- ``aggregate`` says how values of one series under different label sets
  combine into one number (``sum`` for counts, ``mean`` for ratios,
  ``max`` for worst-of).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Aggregate = Literal["sum", "mean", "max"]
Kind = Literal["gauge", "counter", "rate", "interval"]


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    kind: Kind
    unit: str
    aggregate: Aggregate
    meaning: str


def _counter(name: str, unit: str, meaning: str) -> tuple[Signal, Signal]:
    base = name.removesuffix("_total")
    return (
        Signal(name, "counter", unit, "sum", meaning),
        Signal(f"{base}_rate", "rate", f"{unit}/s", "sum", f"{meaning}, per second"),
    )


def _histogram(base: str, meaning: str) -> tuple[Signal, Signal]:
    return (
        Signal(f"{base}_seconds", "interval", "s", "mean", f"{meaning}: mean over the interval"),
        Signal(
            f"{base}_p95_seconds",
            "interval",
            "s",
            "max",
            f"{meaning}: 95th percentile over the interval, from histogram buckets",
        ),
    )


QUEUE: tuple[Signal, ...] = (
    Signal("depth", "gauge", "requests", "sum", "requests waiting for a worker (queue length)"),
    Signal("capacity", "gauge", "requests", "sum", "most requests the queue may hold"),
    Signal("running", "gauge", "requests", "sum", "requests being served by a worker now"),
    Signal(
        "workers",
        "gauge",
        "requests",
        "sum",
        "concurrency limit: requests that may be served at once (slots, pool size, consumers)",
    ),
    Signal("replicas", "gauge", "count", "sum", "healthy replicas serving the queue"),
    Signal("kv_usage", "gauge", "ratio", "mean", "KV-cache blocks in use, 0 to 1"),
    # What diagnosis concluded, written back each tick by the daemon.
    Signal("occupancy", "gauge", "ratio", "max", "depth / capacity of a watched queue"),
    Signal(
        "time_to_full_seconds",
        "gauge",
        "s",
        "max",
        "(capacity - depth) / (offered - service rate) while offered exceeds it",
    ),
    Signal("imbalance", "gauge", "flag", "max", "1 while a verdict is open on the queue"),
    Signal(
        "verdict",
        "gauge",
        "confidence",
        "max",
        "confidence of the open verdict for its cause label; 0 for the other causes",
    ),
    Signal("swapped", "gauge", "requests", "sum", "sequences swapped out to CPU memory"),
    *_counter("offered_total", "requests", "requests that arrived, admitted or not (lambda)"),
    *_counter("completed_total", "requests", "requests served to completion (mu)"),
    *_counter("rejected_total", "requests", "requests refused without being served, by reason"),
    *_counter("failed_total", "requests", "requests admitted that ended in an error, by reason"),
    *_counter("preemptions_total", "sequences", "running sequences preempted to free memory"),
    *_counter(
        "retried_total", "requests", "arrivals that are a client's retry of an earlier attempt"
    ),
    *_histogram("queue_wait", "time an admitted request waited for a worker (sojourn time)"),
    *_histogram("service", "time a worker spent serving a request"),
    *_histogram("latency", "end-to-end time from arrival to the last byte of the answer"),
    *_histogram("token", "time per generated token once generation started (decode speed)"),
    Signal("queue_timeout_seconds", "gauge", "s", "max", "longest a request may wait queued"),
    Signal("priority_shed", "gauge", "flag", "max", "1 while a priority class is refused"),
    Signal(
        "unacked",
        "gauge",
        "messages",
        "sum",
        "messages handed to workers and not yet acknowledged (Celery on Redis: whole broker)",
    ),
    Signal(
        "consumer_utilisation",
        "gauge",
        "ratio",
        "mean",
        "share of time the queue could deliver to its consumers at once (RabbitMQ)",
    ),
    Signal("upstream_in_flight", "gauge", "requests", "sum", "requests in flight to an upstream"),
    Signal(
        "upstream_state",
        "gauge",
        "state",
        "max",
        "upstream health: 0 ok (breaker closed), 1 degraded (half-open), 2 down (open)",
    ),
    Signal("upstream_healthy", "gauge", "flag", "mean", "1 while an upstream passes checks"),
    Signal(
        "upstream_remaining_requests",
        "gauge",
        "requests",
        "sum",
        "requests left in the provider's rate-limit window",
    ),
    *_histogram("upstream_latency", "time an upstream took to answer"),
    Signal("connections_active", "gauge", "connections", "sum", "open client connections"),
    Signal("connections_idle", "gauge", "connections", "sum", "keep-alive connections idle"),
    *_counter("connections_accepted_total", "connections", "client connections accepted"),
    *_counter(
        "connections_dropped_total",
        "connections",
        "connections accepted but not handled (a resource limit, e.g. worker_connections)",
    ),
)

HOST: tuple[Signal, ...] = (
    Signal("host_cpu_percent", "gauge", "%", "mean", "CPU busy, all cores, 0 to 100"),
    Signal("host_cpu_core_percent", "gauge", "%", "mean", "CPU busy per core, 0 to 100"),
    Signal("host_cpu_iowait_percent", "gauge", "%", "mean", "CPU time waiting on I/O"),
    Signal("host_load1", "gauge", "tasks", "max", "one-minute load average"),
    Signal("host_memory_percent", "gauge", "%", "max", "memory in use"),
    Signal("host_swap_percent", "gauge", "%", "max", "swap in use"),
    Signal("host_disk_read_bytes_rate", "rate", "B/s", "sum", "bytes read from disks"),
    Signal("host_disk_write_bytes_rate", "rate", "B/s", "sum", "bytes written to disks"),
    Signal("host_net_recv_bytes_rate", "rate", "B/s", "sum", "bytes received, all interfaces"),
    Signal("host_net_sent_bytes_rate", "rate", "B/s", "sum", "bytes sent, all interfaces"),
    Signal("host_net_drops_rate", "rate", "packets/s", "sum", "packets dropped in or out"),
    Signal("host_net_errors_rate", "rate", "packets/s", "sum", "packet errors in or out"),
    *_counter(
        "host_listen_overflows_total",
        "connections",
        "connections the kernel refused because a listen (accept) queue was full",
    ),
    *_counter(
        "host_listen_drops_total", "connections", "SYNs dropped on listening sockets, any cause"
    ),
    Signal(
        "host_listen_queue_depth",
        "gauge",
        "connections",
        "sum",
        "connections waiting in a listening socket's accept queue, by port",
    ),
    Signal(
        "host_listen_queue_capacity",
        "gauge",
        "connections",
        "sum",
        "accept queue bound (listen backlog) of a listening socket, by port",
    ),
    Signal(
        "process_cpu_percent",
        "gauge",
        "%",
        "sum",
        "CPU used by a watched process; 100 per fully busy core",
    ),
    Signal("process_rss_bytes", "gauge", "B", "sum", "resident memory of a watched process"),
    Signal("process_threads", "gauge", "threads", "sum", "threads of a watched process"),
    Signal(
        "process_open_files",
        "gauge",
        "descriptors",
        "sum",
        "open file descriptors (files and sockets) of a watched process",
    ),
)

GPU: tuple[Signal, ...] = (
    Signal("gpu_utilization_percent", "gauge", "%", "mean", "time a kernel was running"),
    Signal("gpu_memory_used_bytes", "gauge", "B", "sum", "device memory in use"),
    Signal("gpu_memory_total_bytes", "gauge", "B", "sum", "device memory installed"),
    Signal("gpu_temperature_celsius", "gauge", "°C", "max", "GPU core temperature"),
    Signal("gpu_power_watts", "gauge", "W", "sum", "power draw"),
    Signal("gpu_power_limit_watts", "gauge", "W", "sum", "enforced power limit"),
    Signal("gpu_sm_clock_mhz", "gauge", "MHz", "mean", "streaming multiprocessor clock"),
    Signal(
        "gpu_throttle_reasons",
        "gauge",
        "bitmask",
        "max",
        "NVML clocks-event (throttle) reasons bitmask",
    ),
    Signal(
        "gpu_throttle",
        "gauge",
        "flag",
        "max",
        "1 while a throttle reason is active, by reason (sw_power_cap, hw_slowdown, ...)",
    ),
    Signal(
        "gpu_ecc_errors_total",
        "counter",
        "errors",
        "sum",
        "uncorrected ECC errors since the driver loaded",
    ),
    Signal("gpu_process_memory_bytes", "gauge", "B", "sum", "device memory used by a process"),
)

LOGS: tuple[Signal, ...] = (
    Signal(
        "log_events_rate", "rate", "lines/s", "sum", "log lines of one kind, by kind and source"
    ),
    Signal("log_lines_rate", "rate", "lines/s", "sum", "log lines read, by source"),
    Signal(
        "log_lines_skipped_total",
        "counter",
        "lines",
        "sum",
        "log lines skipped as too long (over 64 KiB) or binary, by source",
    ),
)

SIGNALS: dict[str, Signal] = {s.name: s for s in (*QUEUE, *HOST, *GPU, *LOGS)}

# The order `quell probe` prints queue signals in.
QUEUE_ORDER: tuple[str, ...] = tuple(s.name for s in QUEUE)


def rate_name(counter: str) -> str:
    """``offered_total`` -> ``offered_rate``."""
    return counter.removesuffix("_total") + "_rate"


def p95_name(interval_series: str) -> str:
    """``queue_wait_seconds`` -> ``queue_wait_p95_seconds``."""
    return interval_series.removesuffix("_seconds") + "_p95_seconds"
