"""The gateway as clients meet it: the OpenAI SDK through it to a real engine."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway_helpers import (
    HELLO,
    KEYS,
    access_lines,
    admin,
    assert_openai_error,
    chat,
    gateway,
    gateway_config,
    metric,
    sdk,
    state,
    wait_for,
)
from tests.servers import RunningServer, engine

# 5 ms a decode step: a 20-token stream takes about 100 ms, long enough to
# tell chunks passed through as they come from a buffered answer.
ENGINE = ("--decode-step-ms", "5", "--decode-ms-per-seq", "0", "--prefill-ms-per-token", "0")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    directory = tmp_path_factory.mktemp("gateway-proxy")
    with engine(*ENGINE) as upstream:
        config = gateway_config(
            directory,
            {"engine-0": upstream.url},
            server={"max_body_bytes": 4096, "max_header_bytes": 4096, "body_timeout_s": 0.5},
        )
        with gateway(config) as server:
            yield server, config


@pytest.fixture
def gw(setup: tuple[RunningServer, Path]) -> RunningServer:
    return setup[0]


def test_completion_through_the_gateway(gw: RunningServer) -> None:
    reply = sdk(gw).chat.completions.create(model="quell-mini", messages=HELLO, max_tokens=6)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    models = sdk(gw).models.list()
    assert [m.id for m in models.data] == ["quell-mini"]


def test_streaming_passes_chunks_through_as_they_arrive(gw: RunningServer) -> None:
    stream = sdk(gw).chat.completions.create(
        model="quell-mini",
        messages=HELLO,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals, pieces, usage = [], [], None
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert usage is not None and usage.completion_tokens == 20
    assert len(pieces) >= 10
    # Twenty 5 ms steps: a buffered answer would arrive all at once.
    assert arrivals[-1] - arrivals[0] > 0.05


def test_missing_or_unknown_key_gets_401(gw: RunningServer) -> None:
    url = f"{gw.url}/v1/chat/completions"
    body = {"model": "quell-mini", "messages": HELLO}
    assert_openai_error(httpx.post(url, json=body), 401, "invalid_api_key")
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-nobody"})
    assert_openai_error(wrong, 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-nobody").models.list()


def test_oversized_body_gets_413_and_oversized_headers_431(gw: RunningServer) -> None:
    big = chat(gw, messages=[{"role": "user", "content": "x" * 5000}])
    assert_openai_error(big, 413, "request_too_large")
    headers = {"Authorization": f"Bearer {KEYS['team-a'][0]}", "X-Padding": "p" * 5000}
    response = httpx.post(f"{gw.url}/v1/chat/completions", json={}, headers=headers)
    assert_openai_error(response, 431, "request_header_fields_too_large")


def test_a_client_that_never_finishes_its_body_gets_408(gw: RunningServer) -> None:
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + KEYS["team-a"][0].encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model"'
        )
        started = time.monotonic()
        answer = conn.recv(4096)
        waited = time.monotonic() - started
        while chunk := conn.recv(4096):  # the gateway closes after a 408
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"request_timeout"' in answer
    assert 0.4 < waited < 2.5  # 0.5 s limit, enforced within one 0.5 s tick


def test_bad_json_gets_400_and_unknown_routes_404(gw: RunningServer) -> None:
    response = httpx.post(
        f"{gw.url}/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {KEYS['team-a'][0]}"},
    )
    assert_openai_error(response, 400, "invalid_json")
    assert_openai_error(httpx.get(f"{gw.url}/v2/nothing"), 404, "not_found")
    assert_openai_error(httpx.get(f"{gw.url}/v1/chat/completions"), 405, "method_not_allowed")


def test_upstream_4xx_passes_through_unchanged(gw: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(gw).chat.completions.create(model="no-such-model", messages=HELLO)
    assert caught.value.code == "model_not_found"


def test_cache_answers_repeated_deterministic_requests(gw: RunningServer) -> None:
    switched = admin(gw, "POST", "cache", {"enabled": True})
    assert switched.json()["after"]["enabled"] is True
    try:
        hits = metric(gw, "quell_gateway_cache_hits_total")
        first = chat(gw, temperature=0, max_tokens=5, seed=11)
        second = chat(gw, temperature=0, max_tokens=5, seed=11)
        assert first.status_code == second.status_code == 200
        assert first.content == second.content
        assert "x-quell-upstream" in first.headers and "x-quell-upstream" not in second.headers
        assert metric(gw, "quell_gateway_cache_hits_total") == hits + 1
        # Sampling requests are never served from the cache.
        chat(gw, temperature=1.0, max_tokens=5, seed=11)
        assert "x-quell-upstream" in chat(gw, temperature=1.0, max_tokens=5, seed=11).headers
    finally:
        admin(gw, "POST", "cache", {"enabled": False})
    assert "x-quell-upstream" in chat(gw, temperature=0, max_tokens=5, seed=11).headers


def test_max_tokens_cap_is_applied_upstream(gw: RunningServer) -> None:
    admin(gw, "POST", "queue", {"max_tokens_cap": 3})
    try:
        reply = sdk(gw).chat.completions.create(model="quell-mini", messages=HELLO, max_tokens=50)
        assert reply.usage is not None and reply.usage.completion_tokens == 3
    finally:
        admin(gw, "POST", "queue", {"max_tokens_cap": 0})


def test_access_log_has_one_json_line_per_request_and_no_key(
    setup: tuple[RunningServer, Path],
) -> None:
    gw, config = setup
    assert chat(gw, max_tokens=3).status_code == 200
    lines = access_lines(config)
    last_ok = [line for line in lines if line["outcome"] == "ok"][-1]
    assert last_ok["key"] == "team-a" and last_ok["priority"] == "standard"
    assert last_ok["status"] == 200 and last_ok["upstream"] == "engine-0"
    assert last_ok["prompt_tokens"] > 0 and last_ok["completion_tokens"] == 3
    assert last_ok["queue_wait_ms"] >= 0 and last_ok["service_ms"] > 0
    fields = {"time", "key", "priority", "status", "outcome", "queue_wait_ms", "service_ms",
              "upstream", "prompt_tokens", "completion_tokens"}  # fmt: skip
    assert set(last_ok) >= fields
    assert any(line["outcome"] == "unauthorized" and line["key"] is None for line in lines)
    text = (config.parent / "access.log").read_text()
    for secret, _ in KEYS.values():
        assert secret not in text


def test_metrics_expose_the_documented_names(gw: RunningServer) -> None:
    chat(gw, max_tokens=2)
    text = httpx.get(f"{gw.url}/metrics").text
    for name in (
        "quell_gateway_requests_received_total",
        "quell_gateway_requests_total",
        "quell_gateway_queue_depth",
        "quell_gateway_queue_depth_by_priority",
        "quell_gateway_queue_capacity",
        "quell_gateway_workers",
        "quell_gateway_in_flight",
        "quell_gateway_queue_wait_seconds_bucket",
        "quell_gateway_request_duration_seconds_bucket",
        "quell_gateway_upstream_in_flight",
        "quell_gateway_upstream_latency_seconds_bucket",
        "quell_gateway_upstream_breaker_state",
        "quell_gateway_cache_hits_total",
        "quell_gateway_cache_misses_total",
        "quell_gateway_rate_limited_total",
        "quell_gateway_priority_shed",
    ):
        assert f"\n{name}" in text, name
    assert metric(gw, "quell_gateway_requests_total", outcome="ok", priority="standard") >= 1
    assert metric(gw, "quell_gateway_upstream_breaker_state", upstream="engine-0") == 0
    assert metric(gw, "quell_gateway_requests_received_total", priority="none") >= 1


def test_a_client_leaving_mid_stream_frees_its_worker(gw: RunningServer) -> None:
    body = {"model": "quell-mini", "messages": HELLO, "max_tokens": 2000, "stream": True}
    headers = {"Authorization": f"Bearer {KEYS['team-a'][0]}"}
    with httpx.stream(
        "POST", f"{gw.url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # 2000 tokens at 5 ms would hold the worker for 10 s.
    wait_for(lambda: state(gw)["queue"]["in_flight"] == 0, timeout=3)
    assert state(gw)["upstreams"]["engine-0"]["in_flight"] == 0


def test_retried_requests_are_counted_apart_from_first_attempts(gw: RunningServer) -> None:
    # The OpenAI SDKs number their attempts in this header; a retry storm is
    # a rising share of retried arrivals, so the gateway must tell them apart.
    before_retried = metric(gw, "quell_gateway_requests_retried_total", priority="standard")
    before_received = metric(gw, "quell_gateway_requests_received_total", priority="standard")
    body = {"model": "quell-mini", "messages": HELLO, "max_tokens": 1}
    for attempt in ("0", "1", "2"):
        response = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json=body,
            headers={
                "Authorization": "Bearer sk-team-a-0123456789",
                "x-stainless-retry-count": attempt,
            },
        )
        assert response.status_code == 200
    retried = metric(gw, "quell_gateway_requests_retried_total", priority="standard")
    received = metric(gw, "quell_gateway_requests_received_total", priority="standard")
    assert retried - before_retried == 2
    assert received - before_received == 3
