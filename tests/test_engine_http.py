"""The engine as a real process on 127.0.0.1, driven by the official OpenAI SDK and raw HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inference.engine.tokens import count_tokens
from tests.servers import FAST_ENGINE, RunningServer, engine, metric

ADMIN = {"Authorization": "Bearer engine-admin-secret"}
HELLO = [{"role": "user", "content": "Is the works queue full?"}]


@pytest.fixture(scope="module")
def shared_engine() -> Iterator[RunningServer]:
    with engine(*FAST_ENGINE) as server:
        yield server


def sdk(server: RunningServer, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", **options)  # type: ignore[arg-type]


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_non_streaming_completion_with_the_sdk(shared_engine: RunningServer) -> None:
    reply = sdk(shared_engine).chat.completions.create(
        model="quell-mini", messages=HELLO, max_tokens=12
    )
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 12 == count_tokens(text or "")
    assert reply.usage.prompt_tokens == 3 + 3 + count_tokens("user") + count_tokens(
        HELLO[0]["content"]
    )
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_streaming_completion_with_the_sdk_matches_the_non_streaming_text(
    shared_engine: RunningServer,
) -> None:
    client = sdk(shared_engine)
    whole = client.chat.completions.create(model="quell-mini", messages=HELLO, max_tokens=9, seed=7)
    stream = client.chat.completions.create(
        model="quell-mini",
        messages=HELLO,
        max_tokens=9,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 9


def test_stream_ends_with_done_and_arrives_token_by_token() -> None:
    with engine("--decode-step-ms", "40", "--decode-ms-per-seq", "0") as server:
        arrivals = []
        body = {"model": "quell-mini", "messages": HELLO, "max_tokens": 5, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = []
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    arrivals.append(time.monotonic())
    assert lines[-1] == "data: [DONE]"
    # Five token chunks spread over five 40 ms steps, not one buffered burst.
    assert arrivals[-1] - arrivals[1] >= 0.12


def test_same_prompt_and_seed_give_the_same_text(shared_engine: RunningServer) -> None:
    client = sdk(shared_engine)

    def ask(seed: int) -> str | None:
        reply = client.chat.completions.create(
            model="quell-mini", messages=HELLO, max_tokens=20, seed=seed
        )
        return reply.choices[0].message.content

    assert ask(1) == ask(1)
    assert ask(1) != ask(2)


def test_without_max_tokens_the_default_length_and_stop(shared_engine: RunningServer) -> None:
    reply = sdk(shared_engine).chat.completions.create(model="quell-mini", messages=HELLO)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 64


def test_models_health_and_metrics(shared_engine: RunningServer) -> None:
    models = sdk(shared_engine).models.list()
    assert [m.id for m in models.data] == ["quell-mini"]
    assert httpx.get(f"{shared_engine.url}/health").status_code == 200
    response = httpx.get(f"{shared_engine.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")


def test_metrics_use_the_vllm_v1_names_and_labels(shared_engine: RunningServer, fixtures) -> None:
    sdk(shared_engine).chat.completions.create(model="quell-mini", messages=HELLO, max_tokens=3)
    ours = {
        family.name: family
        for family in text_string_to_metric_families(httpx.get(f"{shared_engine.url}/metrics").text)
    }
    theirs = {
        family.name: family
        for family in text_string_to_metric_families((fixtures / "vllm_v1.prom").read_text())
    }
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    for name, family in theirs.items():
        assert ours[name].type == family.type, name
        for sample in ours[name].samples:
            assert {"model_name", "engine"} <= set(sample.labels), sample
    for name in (
        "vllm:time_to_first_token_seconds",
        "vllm:time_per_output_token_seconds",
        "quell_engine_requests_rejected",
    ):
        assert name in ours
    success = ours["vllm:request_success"]
    assert any(
        s.labels.get("finished_reason") == "length" and s.value >= 1 for s in success.samples
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (json.dumps({"model": "quell-mini"}).encode(), "messages"),
        (json.dumps({"messages": HELLO}).encode(), "model"),
        (json.dumps({"model": "quell-mini", "messages": "hi"}).encode(), "messages"),
        (json.dumps({"model": "quell-mini", "messages": []}).encode(), "messages"),
        (json.dumps({"model": "quell-mini", "messages": [{"role": "bot"}]}).encode(),
         "messages[0].role"),
        (json.dumps({"model": "quell-mini", "messages": [{"role": "user", "content": 5}]}).encode(),
         "messages[0].content"),
        (json.dumps({"model": "quell-mini", "messages": HELLO, "max_tokens": "ten"}).encode(),
         "max_tokens"),
        (json.dumps({"model": "quell-mini", "messages": HELLO, "max_tokens": 0}).encode(),
         "max_tokens"),
        (json.dumps({"model": "quell-mini", "messages": HELLO, "temperature": 9}).encode(),
         "temperature"),
        (json.dumps({"model": "quell-mini", "messages": HELLO, "stream": "yes"}).encode(),
         "stream"),
        (json.dumps({"model": "quell-mini", "messages": HELLO, "n": 2}).encode(), "n"),
        (json.dumps({"model": "quell-mini", "messages": HELLO, "max_tokens": 10**9}).encode(),
         "messages"),
    ],
)  # fmt: skip
def test_bad_requests_get_400_in_the_openai_shape(
    shared_engine: RunningServer, body: bytes, param: str | None
) -> None:
    response = httpx.post(
        f"{shared_engine.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(response, 400)
    assert error["param"] == param


def test_unknown_model_route_and_method(shared_engine: RunningServer) -> None:
    url = shared_engine.url
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-9", "messages": HELLO})
    assert_openai_error(response, 404, "model_not_found")
    assert_openai_error(httpx.get(f"{url}/v2/nothing"), 404)
    response = httpx.get(f"{url}/v1/chat/completions")
    assert_openai_error(response, 405)
    assert response.headers["allow"] == "POST"


def test_oversized_body_gets_413_declared_or_streamed() -> None:
    with engine(*FAST_ENGINE, "--max-body-bytes", "2048") as server:
        big = json.dumps(
            {"model": "quell-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
        )
        response = httpx.post(f"{server.url}/v1/chat/completions", content=big.encode())
        assert_openai_error(response, 413, "request_too_large")

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must still hold
            for _ in range(10):
                yield b"x" * 1000

        response = httpx.post(f"{server.url}/v1/chat/completions", content=chunked())
        assert_openai_error(response, 413, "request_too_large")
        assert metric(server, "quell_engine_requests_rejected_total", reason="body_too_large") == 2


def test_full_queue_answers_503_works_queue_full_with_retry_after() -> None:
    with engine(*FAST_ENGINE, "--slots", "1", "--max-waiting", "1") as server:
        httpx.post(f"{server.url}/admin/faults", json={"stalled": True}, headers=ADMIN)
        body = {"model": "quell-mini", "messages": HELLO, "max_tokens": 2}
        hung = [
            threading.Thread(
                target=lambda: httpx.post(
                    f"{server.url}/v1/chat/completions", json=body, timeout=30
                ),
                daemon=True,
            )
            for _ in range(2)
        ]
        for thread in hung:  # one takes the slot, one waits
            thread.start()
        deadline = time.monotonic() + 5
        while (
            metric(server, "vllm:num_requests_waiting")
            + metric(server, "vllm:num_requests_running")
            < 2
        ):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body)
        error = assert_openai_error(response, 503, "queue_full")
        assert "works queue_full" in error["message"]
        assert int(response.headers["retry-after"]) >= 1
        assert int(response.headers["retry-after-ms"]) > 0

        # The SDK surfaces the message and honours Retry-After between tries:
        # with no drain rate to estimate from, the engine asks for 2 s, where
        # the SDK's own backoff would have waited about 0.5 s.
        rejected_before = metric(
            server, "quell_engine_requests_rejected_total", reason="queue_full"
        )
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as raised:
            sdk(server, max_retries=1).chat.completions.create(
                model="quell-mini", messages=HELLO, max_tokens=2
            )
        elapsed = time.monotonic() - started
        assert "works queue_full" in str(raised.value)
        assert raised.value.status_code == 503
        rejected = metric(server, "quell_engine_requests_rejected_total", reason="queue_full")
        assert rejected - rejected_before == 2
        assert 1.9 <= elapsed < 4.0

        httpx.delete(f"{server.url}/admin/faults", headers=ADMIN)
        for thread in hung:
            thread.join(10)
        assert metric(server, "vllm:request_success_total") == 2


def test_admin_needs_its_own_token() -> None:
    with engine(*FAST_ENGINE, env={"QUELL_ENGINE_API_KEY": "client-key"}) as server:
        url = f"{server.url}/admin/faults"
        assert_openai_error(httpx.post(url, json={"slowdown": 2}), 401)
        client = {"Authorization": "Bearer client-key"}
        assert_openai_error(httpx.post(url, json={"slowdown": 2}, headers=client), 401)
        assert_openai_error(httpx.get(f"{server.url}/admin/state", headers=client), 401)
        # and the client API now needs the client key, not the admin token
        chat = {"model": "quell-mini", "messages": HELLO, "max_tokens": 1}
        response = httpx.post(f"{server.url}/v1/chat/completions", json=chat)
        assert_openai_error(response, 401, "invalid_api_key")
        response = httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers=client)
        assert response.status_code == 200


def test_admin_disabled_without_a_token() -> None:
    with engine(*FAST_ENGINE, admin_token=None) as server:
        response = httpx.post(f"{server.url}/admin/faults", json={"slowdown": 2}, headers=ADMIN)
        assert_openai_error(response, 403, "admin_disabled")


@pytest.mark.parametrize(
    "change",
    [
        {"slowdown": 0.5},
        {"slowdown": "fast"},
        {"error_rate": 1.5},
        {"dependency_ms": -1},
        {"stalled": "yes"},
        {"slots": 0},
        {"slots": 2.5},
        {"warp_speed": 9},
        {},
        # valid and invalid together: nothing may be applied
        {"slowdown": 4, "error_rate": 2},
    ],
)
def test_invalid_fault_settings_get_422_and_change_nothing(
    shared_engine: RunningServer, change: dict
) -> None:
    before = httpx.get(f"{shared_engine.url}/admin/state", headers=ADMIN).json()
    response = httpx.post(f"{shared_engine.url}/admin/faults", json=change, headers=ADMIN)
    assert_openai_error(response, 422, "invalid_setting")
    after = httpx.get(f"{shared_engine.url}/admin/state", headers=ADMIN).json()
    assert after["faults"] == before["faults"] and after["slots"] == before["slots"]


def test_fault_changes_answer_before_and_after_and_clear(shared_engine: RunningServer) -> None:
    url = f"{shared_engine.url}/admin/faults"
    changed = httpx.post(url, json={"slowdown": 3, "slots": 5}, headers=ADMIN).json()
    assert changed["before"]["slowdown"] == 1.0 and changed["after"]["slowdown"] == 3.0
    assert changed["after"]["slots"] == 5
    assert metric(shared_engine, "quell_engine_fault_slowdown") == 3.0
    assert metric(shared_engine, "quell_engine_slots") == 5
    cleared = httpx.delete(url, headers=ADMIN).json()
    assert cleared["after"]["slowdown"] == 1.0
    httpx.post(url, json={"slots": 16}, headers=ADMIN)


def test_slowdown_stretches_latency_by_its_factor() -> None:
    with engine("--decode-step-ms", "10", "--decode-ms-per-seq", "0") as server:
        client = sdk(server)

        def latency() -> float:
            started = time.monotonic()
            client.chat.completions.create(model="quell-mini", messages=HELLO, max_tokens=10)
            return time.monotonic() - started

        normal = latency()
        httpx.post(f"{server.url}/admin/faults", json={"slowdown": 4}, headers=ADMIN)
        slowed = latency()
    assert normal >= 0.1 and slowed >= 0.4
    assert slowed > 2.5 * normal


def test_error_rate_fails_requests_with_500_in_the_openai_shape() -> None:
    with engine(*FAST_ENGINE) as server:
        httpx.post(f"{server.url}/admin/faults", json={"error_rate": 1.0}, headers=ADMIN)
        body = {"model": "quell-mini", "messages": HELLO, "max_tokens": 1}
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body)
        assert_openai_error(response, 500, "internal_error")
        httpx.delete(f"{server.url}/admin/faults", headers=ADMIN)
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body).status_code == 200


def test_slow_dependency_holds_slots_while_no_tokens_are_generated() -> None:
    with engine(*FAST_ENGINE, "--slots", "2") as server:
        httpx.post(f"{server.url}/admin/faults", json={"dependency_ms": 400}, headers=ADMIN)
        started = time.monotonic()
        reply = sdk(server).chat.completions.create(
            model="quell-mini", messages=HELLO, max_tokens=2
        )
        assert time.monotonic() - started >= 0.4
        assert reply.usage is not None and reply.usage.completion_tokens == 2
        assert metric(server, "quell_engine_fault_dependency_seconds") == 0.4


def test_client_that_hangs_up_is_aborted_and_frees_its_slot() -> None:
    with engine("--decode-step-ms", "20", "--decode-ms-per-seq", "0", "--slots", "1") as server:
        body = {"model": "quell-mini", "messages": HELLO, "max_tokens": 1000}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=0.2)
        deadline = time.monotonic() + 3
        while metric(server, "vllm:request_success_total", finished_reason="abort") < 1:
            assert time.monotonic() < deadline, "the abandoned request was never aborted"
            time.sleep(0.05)
        assert metric(server, "vllm:num_requests_running") == 0


def test_crash_ends_the_process() -> None:
    with engine(*FAST_ENGINE) as server:
        response = httpx.post(f"{server.url}/admin/crash", headers=ADMIN)
        assert response.status_code == 202
        assert server.process.wait(5) == 70
