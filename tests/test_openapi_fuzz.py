"""Fuzzing the engine, the gateway and the daemon through their own /openapi.json.

schemathesis reads each running server's document and generates requests
from it, valid and invalid, with a client key, an admin token, a wrong
token or none. Whatever it sends, the answer must be no 5xx, a status, a
content type and a body the document declares, and every 4xx must be in the
error shape all quell servers share: ``{"error": {"message", "type", "code"}}``.

Client routes are fuzzed before admin routes on the same server, so an
admin change (shedding, a stalled engine) cannot turn later client answers
into 503s. The engine's POST /admin/crash is fuzzed without the admin token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway_helpers import ADMIN_TOKEN, KEYS, gateway, gateway_config
from tests.servers import FAST_ENGINE, RunningServer, engine, quell_command, running

ENGINE_ADMIN = "engine-admin-secret"
ENGINE_KEY = "sk-engine-client-0123456789"
WEBHOOK_SECRET = "webhook-secret-0123456789"
WRONG = "sk-not-a-key-0123456789"
# Small contexts keep every generated completion short: at 1 ms a token, a
# request never holds the fuzzer up for long.
ENGINE_ARGS = (*FAST_ENGINE, "--max-model-len", "64", "--kv-tokens", "4096")
# Examples per operation; QUELL_FUZZ_EXAMPLES=500 digs deeper on a quiet machine.
EXAMPLES = int(os.environ.get("QUELL_FUZZ_EXAMPLES", "40"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CONFIG = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})


def assert_error_shape(response: Any) -> None:
    if not 400 <= response.status_code < 500:
        return
    body = json.loads(response.content)
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    assert error["code"] is None or isinstance(error["code"], str), body


def fuzz(
    server: RunningServer,
    tokens: Mapping[str, str],
    others: Sequence[str | None],
    *,
    never_authorized: Sequence[str] = (),
) -> list[str]:
    """Fuzz every operation of ``server``; the labels fuzzed, in order.

    ``tokens`` maps the document's security schemes to the token that
    passes; an operation gets its own token three times in four, and one of
    ``others`` (other servers' tokens, client keys, a wrong one, none) the
    rest of the time. ``never_authorized`` operations only get ``others``.
    """
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=CONFIG)
    schema.validate()
    fuzzed = []
    for result in schema.get_all_operations():
        operation = result.ok()
        schemes = [name for entry in operation.definition.raw.get("security", []) for name in entry]
        valid = [tokens[name] for name in schemes]
        pool = list(others)
        if operation.label in never_authorized:
            valid = []
            pool = [c for c in others if c not in tokens.values()]
        credentials = st.sampled_from([*valid * 3, *pool] if valid else [None, *pool])
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
            # The document's own examples: requests that get all the way through.
            *schema.get_strategies_from_examples(operation),
        )

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases, credential=credentials)
        def exercise(case: Any, credential: str | None) -> None:
            headers = {"Authorization": f"Bearer {credential}"} if credential else None
            response = case.call_and_validate(
                base_url=server.url, headers=headers, checks=CHECKS, timeout=10
            )
            assert_error_shape(response)

        exercise()
        fuzzed.append(operation.label)
    return fuzzed


@pytest.fixture(scope="module")
def shared_engine() -> Iterator[RunningServer]:
    with engine(*ENGINE_ARGS, env={"QUELL_ENGINE_API_KEY": ENGINE_KEY}) as server:
        yield server


@pytest.fixture
def engine_server(shared_engine: RunningServer) -> RunningServer:
    """The shared engine without the faults an earlier fuzz left injected."""
    admin = {"Authorization": f"Bearer {ENGINE_ADMIN}"}
    assert httpx.delete(f"{shared_engine.url}/admin/faults", headers=admin).status_code == 200
    reset = httpx.post(f"{shared_engine.url}/admin/faults", json={"slots": 16}, headers=admin)
    assert reset.status_code == 200
    return shared_engine


def test_the_engine_survives_its_own_document(engine_server: RunningServer) -> None:
    tokens = {"engineApiKey": ENGINE_KEY, "engineAdminToken": ENGINE_ADMIN}
    others = [ENGINE_KEY, ENGINE_ADMIN, WRONG, None]
    fuzzed = fuzz(engine_server, tokens, others, never_authorized=["POST /admin/crash"])
    assert fuzzed[0] == "POST /v1/chat/completions" and "POST /admin/faults" in fuzzed
    assert "POST /admin/crash" in fuzzed
    assert engine_server.process.poll() is None, "".join(engine_server.output)
    assert "Traceback" not in "".join(engine_server.output)


# JSON may spell what UTF-8 cannot (a lone surrogate), and nest deeper than
# Python's recursion limit within 1 MiB. The fuzzer's strings are valid
# UTF-8, so these are sent by hand.
LONE_SURROGATE_CHAT = (
    b'{"model": "quell-mini", "max_tokens": 1000, '
    b'"messages": [{"role": "user", "content": "queue \\ud800 full"}]}'
)


def test_json_that_utf8_or_the_stack_cannot_hold_is_answered(engine_server: RunningServer) -> None:
    url = f"{engine_server.url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {ENGINE_KEY}"}
    unknown_model = httpx.post(
        url,
        content=b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
        headers=auth,
    )
    assert unknown_model.status_code == 404, unknown_model.text
    assert "\ud800" in unknown_model.json()["error"]["message"]
    answered = httpx.post(url, content=LONE_SURROGATE_CHAT.replace(b"1000", b"4"), headers=auth)
    assert answered.status_code == 200, answered.text
    for deep in (b"[" * 300_000, b'{"a":' * 200_000):
        refused = httpx.post(url, content=deep, headers=auth)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_json"
    assert engine_server.process.poll() is None


def test_the_gateway_survives_its_own_document(
    engine_server: RunningServer, tmp_path: Path
) -> None:
    # The engine wants its client key; the gateway sends it from the environment.
    config = gateway_config(
        tmp_path,
        {"e0": engine_server.url},
        upstream_key_env="ENGINE_KEY",
        queue={"max_tokens_cap": 32},
    )
    client, sheddable = KEYS["team-a"][0], KEYS["batch"][0]
    tokens = {"clientKey": client, "adminToken": ADMIN_TOKEN}
    others = [client, sheddable, ADMIN_TOKEN, ENGINE_KEY, WRONG, None]
    with gateway(config, env={"ENGINE_KEY": ENGINE_KEY}) as server:
        # max_tokens over the cap: the gateway re-encodes the body it forwards.
        capped = httpx.post(
            f"{server.url}/v1/chat/completions",
            content=LONE_SURROGATE_CHAT,
            headers={"Authorization": f"Bearer {client}"},
            timeout=10,
        )
        assert capped.status_code == 200, capped.text
        assert capped.json()["usage"]["completion_tokens"] <= 32
        fuzzed = fuzz(server, tokens, others)
        assert server.process.poll() is None, "".join(server.output)
        assert "Traceback" not in "".join(server.output)
    assert fuzzed[0] == "POST /v1/chat/completions"
    assert "POST /admin/upstreams/{name}/{action}" in fuzzed


def test_the_daemon_survives_its_own_document(tmp_path: Path) -> None:
    config = tmp_path / "quell.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "quell.db"}"\n'
        "[daemon]\ninterval_s = 0.5\nmetrics_port = 0\n"
        "[host]\nenabled = false\n[gpu]\nenabled = false\n"
    )
    env = {"QUELL_WEBHOOK_SECRET": WEBHOOK_SECRET}
    with running(quell_command("collect", "--config", str(config)), env) as server:
        fuzzed = fuzz(server, {"webhookSecret": WEBHOOK_SECRET}, [WRONG, None])
        assert server.process.poll() is None, "".join(server.output)
        assert "Traceback" not in "".join(server.output)
        wrong_method = httpx.get(f"{server.url}/alertmanager", timeout=5)
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert_error_shape(wrong_method)
        missing = httpx.get(f"{server.url}/nope", timeout=5)
        assert missing.status_code == 404
        assert_error_shape(missing)
    assert "POST /alertmanager" in fuzzed and "GET /status" in fuzzed
