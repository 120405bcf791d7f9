"""The gateway's parts that need no server: buckets, breaker, works queue, config, log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from inference.drain_rate import DrainRate
from inference.gateway.access_log import AccessLog
from inference.gateway.admission import Admission, QueueFull, QueueTimeout
from inference.gateway.cache import ResponseCache
from inference.gateway.circuit_breaker import BreakerState, CircuitBreaker
from inference.gateway.config import ConfigError, load_config, parse_config
from inference.gateway.proxy import usage_counts
from inference.gateway.request_body import parse_request_body
from inference.gateway.token_bucket import TokenBucket
from tests.gateway_helpers import digest, toml_text

# -- token bucket ---------------------------------------------------------------


def test_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, capacity=3, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, 0.0) == pytest.approx(0.5)
    assert bucket.take(1, 0.5) == 0.0
    assert bucket.take(1, 0.5) == pytest.approx(0.5)
    assert bucket.remaining(10.0) == 3


def test_bucket_charges_an_oversized_amount_as_a_full_bucket() -> None:
    bucket = TokenBucket(rate=10.0, capacity=100, now=0.0)
    assert bucket.take(500, 0.0) == 0.0
    assert bucket.take(500, 1.0) == pytest.approx(9.0)


def test_bucket_reconfigure_does_not_hand_out_a_fresh_burst() -> None:
    bucket = TokenBucket(rate=1.0, capacity=10, now=0.0)
    for _ in range(10):
        bucket.take(1, 0.0)
    bucket.reconfigure(rate=100.0, capacity=20, now=0.0)
    assert bucket.remaining(0.0) == 0
    assert bucket.remaining(0.1) == 10


# -- circuit breaker --------------------------------------------------------------


def breaker(**settings: float) -> CircuitBreaker:
    values = {
        "consecutive_failures": 3,
        "error_ratio": 0.5,
        "window_s": 10.0,
        "min_requests": 10,
        "cooldown_s": 5.0,
        **settings,
    }
    return CircuitBreaker(**values)  # type: ignore[arg-type]


def state_of(b: CircuitBreaker) -> BreakerState:
    # A call, so the type checker does not pin the state between transitions.
    return b.state


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    b = breaker()
    for t in (1.0, 2.0):
        b.record(False, t)
    b.record(True, 2.5)
    for t in (3.0, 3.1, 3.2):
        b.record(False, t)
    assert state_of(b) is BreakerState.OPEN
    assert not b.allow(5.0)
    assert b.allow(8.3)  # cool-down over: the single probe
    assert state_of(b) is BreakerState.HALF_OPEN
    assert not b.allow(8.3)
    b.record(False, 8.4)
    assert state_of(b) is BreakerState.OPEN
    assert not b.allow(10.0)
    assert b.allow(13.5)
    b.record(True, 13.6)
    assert state_of(b) is BreakerState.CLOSED and b.allow(13.7)


def test_breaker_opens_on_error_ratio_only_with_enough_requests() -> None:
    b = breaker(consecutive_failures=100, min_requests=10, error_ratio=0.5)
    for i in range(4):
        b.record(True, i * 0.1)
        b.record(False, i * 0.1)
    assert state_of(b) is BreakerState.CLOSED  # 8 requests: too few to judge
    b.record(True, 0.9)
    b.record(False, 0.95)
    assert state_of(b) is BreakerState.OPEN


def test_breaker_window_forgets_old_failures() -> None:
    b = breaker(consecutive_failures=100, min_requests=6, error_ratio=0.5, window_s=10.0)
    for t, ok in ((0.0, False), (0.1, False), (0.2, False), (0.3, False), (0.4, True)):
        b.record(ok, t)
    assert state_of(b) is BreakerState.CLOSED  # 5 requests: too few to judge
    # Eleven seconds later the old failures are outside the window; counted
    # together with them, these two would open it (5 failures out of 7).
    b.record(True, 11.0)
    b.record(False, 11.1)
    assert b.window_counts(11.1) == (2, 1)
    assert state_of(b) is BreakerState.CLOSED


def test_manual_trip_holds_until_reset() -> None:
    b = breaker(cooldown_s=1.0)
    b.trip(0.0)
    assert not b.allow(100.0)
    b.reset()
    assert state_of(b) is BreakerState.CLOSED and b.allow(100.0)


# -- works queue --------------------------------------------------------------------


async def test_works_queue_serves_critical_first_fifo_within_a_class() -> None:
    admission = Admission(workers=1, capacity=10, timeout_s=5.0)
    await admission.acquire(1)
    served: list[str] = []

    async def request(name: str, priority: int) -> None:
        await admission.acquire(priority)
        served.append(name)
        await asyncio.sleep(0)
        admission.release()

    tasks = []
    for name, priority in (("shed-1", 2), ("std-1", 1), ("shed-2", 2), ("crit-1", 0), ("std-2", 1)):
        tasks.append(asyncio.create_task(request(name, priority)))
        await asyncio.sleep(0)
    assert admission.depth == 5 and admission.class_depth == [1, 2, 2]
    admission.release()
    await asyncio.gather(*tasks)
    assert served == ["crit-1", "std-1", "std-2", "shed-1", "shed-2"]
    assert admission.in_flight == 0 and admission.depth == 0


async def test_works_queue_rejects_when_full_and_times_out_waiters() -> None:
    admission = Admission(workers=1, capacity=1, timeout_s=0.05)
    await admission.acquire(1)
    waiter = asyncio.create_task(admission.acquire(1))
    await asyncio.sleep(0)
    assert admission.full()
    with pytest.raises(QueueFull):
        await admission.acquire(0)
    with pytest.raises(QueueTimeout):
        await waiter
    assert admission.depth == 0 and not admission.full()
    admission.release()
    assert admission.in_flight == 0


async def test_works_queue_survives_cancelled_waiters_and_resizes() -> None:
    admission = Admission(workers=1, capacity=10, timeout_s=5.0)
    await admission.acquire(1)
    first = asyncio.create_task(admission.acquire(1))
    second = asyncio.create_task(admission.acquire(1))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    assert admission.depth == 1
    admission.set_workers(2)  # the extra slot goes to the live waiter at once
    await second
    assert admission.in_flight == 2 and admission.depth == 0
    admission.set_workers(1)
    admission.release()
    admission.release()
    assert admission.in_flight == 0


def test_drain_rate_estimates_retry_after() -> None:
    drain = DrainRate(completed=0, now=0.0)
    assert drain.retry_after(10) == 2.0  # nothing completed yet
    drain.update(100, 1.0)
    assert drain.retry_after(99) == pytest.approx(1.0)
    assert drain.retry_after(0) == 0.5
    assert drain.retry_after(10_000) == 30.0


# -- cache, request body, usage ----------------------------------------------------------


def test_cache_expires_and_evicts_least_recently_used() -> None:
    cache = ResponseCache(enabled=True, ttl_s=10.0, max_entries=2)
    cache.put(b"a", b"A", b"application/json", 0.0)
    cache.put(b"b", b"B", b"application/json", 0.0)
    assert cache.get(b"a", 1.0) is not None
    cache.put(b"c", b"C", b"application/json", 1.0)
    assert cache.get(b"b", 1.0) is None
    assert cache.get(b"a", 10.5) is None  # past its TTL
    assert cache.get(b"c", 10.5) is not None
    assert (cache.hits, cache.misses) == (2, 2)


def test_request_body_reads_only_what_the_gateway_needs() -> None:
    raw = b'{"model":"m","messages":[],"stream":true,"max_tokens":50,"temperature":0}'
    body = parse_request_body(raw, 0)
    assert body.raw is raw and body.stream and body.max_tokens == 50 and body.deterministic
    capped = parse_request_body(raw, 10)
    assert json.loads(capped.raw)["max_tokens"] == 10 and capped.max_tokens == 10
    uncapped = parse_request_body(b'{"model":"m","max_completion_tokens":5}', 10)
    assert uncapped.max_tokens == 5 and uncapped.raw == b'{"model":"m","max_completion_tokens":5}'
    assert not parse_request_body(b'{"temperature":false}', 0).deterministic


def test_usage_counts_without_decoding() -> None:
    body = b'{"choices":[],"usage": {"prompt_tokens": 12, "completion_tokens":7}}'
    assert usage_counts(body) == (12, 7)
    assert usage_counts(b'{"choices":[]}') == (None, None)


# -- access log ------------------------------------------------------------------------


def test_access_log_rotates_by_size(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "access.log", max_bytes=4096, backups=2)
    for _ in range(10):
        for _ in range(5):
            log.record('"k"', "standard", "/v1/chat/completions", 200, "ok", 0.001, 0.002,
                       '"e0"', 1, 2, "null")  # fmt: skip
        log.flush()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["access.log", "access.log.1", "access.log.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 4096
        for line in path.read_text().splitlines():
            assert json.loads(line)["key"] == "k"


# -- config ---------------------------------------------------------------------------


def parse(text: str) -> None:
    import tomllib

    parse_config(tomllib.loads(text), {})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[queue]\nworkers = 0", "queue.workers"),
        ("[queue]\nworker = 3", "queue.worker"),
        ("[server]\nport = 70000", "server.port"),
        ('[[keys]]\nname = "a"\nsha256 = "abc"', "keys[0].sha256"),
        (f'[[keys]]\nname = "a"\nsha256 = "{"0" * 64}"\npriority = "vip"', "keys[0].priority"),
        ('[[upstreams]]\nname = "e"\nurl = "ftp://x"', "upstreams[0].url"),
        ('[[upstreams]]\nname = "e"\nurl = "http://h\\u0000"', "upstreams[0].url"),
        ("[upstream_defaults]\nbreaker_error_ratio = 2.0", "upstream_defaults.breaker_error_ratio"),
        ("[cache]\nenabled = 1", "cache.enabled"),
        ("[limits]\nrequests_per_second = -1", "limits.requests_per_second"),
        ("[bogus]\nx = 1", "[bogus]"),
    ],
)
def test_config_errors_name_the_key(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse(text)


def test_config_reads_a_full_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        toml_text(
            {
                "server": {"port": 0, "access_log": "logs/access.log"},
                "queue": {"workers": 4, "capacity": 8, "timeout_s": 1.5},
                "limits": {"requests_per_second": 10},
                "upstream_defaults": {"read_timeout_s": 2.0},
                "keys": [{"name": "a", "sha256": digest("k"), "burst": 5}],
                "upstreams": [
                    {"name": "e0", "url": "http://127.0.0.1:1/"},
                    {"name": "e1", "url": "http://127.0.0.1:2", "read_timeout_s": 9.0},
                ],
            }
        )
    )
    config = load_config(path, env={})
    assert config.server.access_log == tmp_path / "logs" / "access.log"
    assert config.queue.workers == 4 and config.queue.timeout_s == 1.5
    assert config.keys[0].overrides == {"burst": 5}
    assert config.upstreams[0].url == "http://127.0.0.1:1"
    assert config.upstreams[0].settings.read_timeout_s == 2.0
    assert config.upstreams[1].settings.read_timeout_s == 9.0
    assert config.admin_digest is None
    with_env = load_config(path, env={"QUELL_GATEWAY_ADMIN_TOKEN": "t"})
    assert with_env.admin_digest == bytes.fromhex(digest("t"))
