"""Overload as clients see it: 429s, works queue_full, queue timeouts, priorities, shedding.

The gateway runs with one worker. Stalling the engine (its admin API) holds
that worker with one request, so the works queue fills exactly as far as a
test wants; clearing the fault lets everything drain.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway_helpers import (
    HELLO,
    access_lines,
    admin,
    assert_openai_error,
    chat,
    engine_faults,
    gateway,
    gateway_config,
    metric,
    sdk,
    state,
    wait_for,
)
from tests.servers import FAST_ENGINE, RunningServer, engine


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, RunningServer, Path]]:
    directory = tmp_path_factory.mktemp("gateway-overload")
    with engine(*FAST_ENGINE) as upstream:
        config = gateway_config(
            directory,
            {"engine-0": upstream.url},
            queue={"workers": 1, "capacity": 3, "timeout_s": 5.0},
            keys={"metered": {"requests_per_second": 0.5, "burst": 1}},
        )
        with gateway(config) as server:
            yield server, upstream, config


@pytest.fixture
def gw(lab: tuple[RunningServer, RunningServer, Path]) -> RunningServer:
    return lab[0]


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


@pytest.fixture
def stalled(lab: tuple[RunningServer, RunningServer, Path]) -> Iterator[RunningServer]:
    """The engine stalled; whatever a test leaves waiting drains afterwards."""
    upstream = lab[1]
    engine_faults(upstream, stalled=True)
    try:
        yield upstream
    finally:
        engine_faults(upstream)
        wait_for(lambda: state(lab[0])["queue"]["in_flight"] == 0)


def hold_the_worker(gw: RunningServer, pool: ThreadPoolExecutor) -> Future[httpx.Response]:
    held = pool.submit(chat, gw, "team-a")
    wait_for(lambda: state(gw)["queue"]["in_flight"] == 1)
    return held


def test_rate_limit_answers_429_and_the_sdk_retries_after_retry_after(gw: RunningServer) -> None:
    first = chat(gw, "metered")
    assert first.status_code == 200, first.text
    limited = chat(gw, "metered")
    error = assert_openai_error(limited, 429, "rate_limit_exceeded")
    assert "metered" in error["message"]
    headers = limited.headers
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
    wait_ms = int(headers["retry-after-ms"])
    assert 1500 < wait_ms <= 2000 and headers["retry-after"] == "2"

    started = time.monotonic()
    reply = sdk(gw, "metered", max_retries=2).chat.completions.create(
        model="quell-mini", messages=HELLO, max_tokens=2
    )
    elapsed = time.monotonic() - started
    assert reply.choices[0].message.content
    # The SDK's first try is refused; it waits what Retry-After said (about
    # 2 s at 0.5 requests/s) instead of its own 0.5-8 s backoff.
    assert 1.4 < elapsed < 3.5, elapsed
    assert metric(gw, "quell_gateway_rate_limited_total", key="metered") >= 2


def test_full_works_queue_answers_503_works_queue_full(
    gw: RunningServer,
    pool: ThreadPoolExecutor,
    stalled: RunningServer,
    lab: tuple[RunningServer, RunningServer, Path],
) -> None:
    held = hold_the_worker(gw, pool)
    queued = [pool.submit(chat, gw, "team-a") for _ in range(3)]
    wait_for(lambda: state(gw)["queue"]["depth"] == 3)

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(gw).chat.completions.create(model="quell-mini", messages=HELLO, max_tokens=2)
    assert time.monotonic() - started < 1.0  # rejected at once, not queued
    rejection = caught.value
    assert rejection.status_code == 503 and rejection.code == "works_queue_full"
    assert "works queue_full" in rejection.message
    assert float(rejection.response.headers["retry-after"]) >= 1
    assert int(rejection.response.headers["retry-after-ms"]) >= 500
    assert metric(gw, "quell_gateway_queue_depth") == 3
    assert metric(gw, "quell_gateway_queue_depth_by_priority", priority="standard") == 3

    engine_faults(stalled)
    assert held.result(10).status_code == 200
    assert [f.result(10).status_code for f in queued] == [200, 200, 200]
    lines = access_lines(lab[2])
    full = [line for line in lines if line["outcome"] == "works_queue_full"]
    assert full and "works queue_full" in full[-1]["error"]
    assert full[-1]["status"] == 503 and full[-1]["key"] == "team-a"
    assert metric(gw, "quell_gateway_requests_total", outcome="works_queue_full") >= 1


def test_waiting_past_the_queue_timeout_answers_queue_timeout(
    gw: RunningServer, pool: ThreadPoolExecutor, stalled: RunningServer
) -> None:
    admin(gw, "POST", "queue", {"timeout_s": 0.3})
    try:
        hold_the_worker(gw, pool)
        started = time.monotonic()
        response = chat(gw, "pager")
        waited = time.monotonic() - started
    finally:
        admin(gw, "POST", "queue", {"timeout_s": 5.0})
    error = assert_openai_error(response, 503, "queue_timeout")
    assert "queue_timeout" in error["message"]
    assert 0.25 < waited < 2.0
    assert "retry-after" in response.headers


def test_critical_requests_are_served_before_sheddable_ones(
    gw: RunningServer,
    pool: ThreadPoolExecutor,
    stalled: RunningServer,
    lab: tuple[RunningServer, RunningServer, Path],
) -> None:
    held = hold_the_worker(gw, pool)
    # Each request asks for a different length, so the access log (written
    # in the order the single worker finished them) says which was which.
    queued = []
    for count, (key, length) in enumerate((("batch", 5), ("batch", 6), ("pager", 7)), 1):
        queued.append(pool.submit(chat, gw, key, max_tokens=length))
        wait_for(lambda count=count: state(gw)["queue"]["depth"] == count)  # type: ignore[misc]
    assert state(gw)["queue"]["depth_by_priority"] == {
        "critical": 1,
        "standard": 0,
        "sheddable": 2,
    }

    engine_faults(stalled)
    assert held.result(10).status_code == 200
    assert [f.result(10).status_code for f in queued] == [200, 200, 200]
    served = [
        (line["priority"], line["completion_tokens"])
        for line in access_lines(lab[2])
        if line["outcome"] == "ok" and line["completion_tokens"] in (5, 6, 7)
    ][-3:]
    # Queued last, served first; the sheddable two in their arrival order.
    assert served == [("critical", 7), ("sheddable", 5), ("sheddable", 6)]


def test_shed_switch_rejects_a_priority_class_outright(gw: RunningServer) -> None:
    switched = admin(gw, "POST", "shed", {"classes": ["sheddable"]})
    assert switched.json() == {"before": [], "after": ["sheddable"]}
    try:
        error = assert_openai_error(chat(gw, "batch"), 503, "priority_shed")
        assert "sheddable" in error["message"]
        assert chat(gw, "pager").status_code == 200
        assert metric(gw, "quell_gateway_priority_shed", priority="sheddable") == 1
    finally:
        admin(gw, "POST", "shed", {"classes": []})
    assert chat(gw, "batch").status_code == 200
    assert metric(gw, "quell_gateway_requests_total", outcome="priority_shed") >= 1
    received = metric(gw, "quell_gateway_requests_received_total", priority="sheddable")
    assert received >= 2  # the shed request counts as offered load too
