"""Starting the gateway in front of real engines, and talking to both.

Keys and tokens here are test values; the gateway config holds only their
sha256 digests, as a real one would.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from tests.servers import RunningServer, quell_command, running
from tests.servers import metric as metric  # re-exported for the gateway tests

ADMIN_TOKEN = "gateway-admin-secret"
ENGINE_ADMIN = {"Authorization": "Bearer engine-admin-secret"}
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Is the works queue full?"}]
# name -> (key, priority)
KEYS = {
    "team-a": ("sk-team-a-0123456789", "standard"),
    "pager": ("sk-pager-0123456789", "critical"),
    "batch": ("sk-batch-0123456789", "sheddable"),
    "metered": ("sk-metered-0123456789", "standard"),
}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    raise TypeError(f"cannot write {value!r} as TOML here")


def toml_text(config: Mapping[str, Any]) -> str:
    """Tables of scalars and arrays of such tables: all a gateway config needs."""
    lines: list[str] = []
    for section, body in config.items():
        entries = body if isinstance(body, list) else [body]
        header = f"[[{section}]]" if isinstance(body, list) else f"[{section}]"
        for entry in entries:
            lines.append(header)
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in entry.items())
            lines.append("")
    return "\n".join(lines)


def gateway_config(
    directory: Path,
    upstreams: Mapping[str, str],
    *,
    keys: Mapping[str, Mapping[str, Any]] | None = None,
    admin_in_file: bool = False,
    upstream_key_env: str | None = None,
    **sections: Mapping[str, Any],
) -> Path:
    """Write a gateway config into ``directory`` and return its path.

    ``keys`` adds settings (limits) to the standard test keys by name;
    ``upstream_key_env`` names the variable holding the upstreams' bearer key.
    """
    extra = keys or {}
    config: dict[str, Any] = {
        "server": {
            "port": 0,
            "access_log": "access.log",
            **sections.pop("server", {}),
        },
    }
    if admin_in_file:
        config["admin"] = {"token_sha256": digest(ADMIN_TOKEN)}
    config.update(sections)
    config["keys"] = [
        {"name": name, "sha256": digest(secret), "priority": priority, **extra.get(name, {})}
        for name, (secret, priority) in KEYS.items()
    ]
    key_env = {"api_key_env": upstream_key_env} if upstream_key_env else {}
    config["upstreams"] = [{"name": name, "url": url, **key_env} for name, url in upstreams.items()]
    path = directory / "gateway.toml"
    path.write_text(toml_text(config))
    return path


@contextmanager
def gateway(
    config: Path, admin_token: str | None = ADMIN_TOKEN, env: Mapping[str, str] | None = None
) -> Iterator[RunningServer]:
    env = {"QUELL_GATEWAY_ADMIN_TOKEN": admin_token or "", **(env or {})}
    with running(quell_command("gateway", "serve", "--config", str(config)), env) as server:
        yield server


def sdk(server: RunningServer, key: str = "team-a", **options: Any) -> openai.OpenAI:
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEYS[key][0], **options)


def chat(server: RunningServer, key: str = "team-a", **body: Any) -> httpx.Response:
    """A raw chat completion request, for checking statuses and headers."""
    payload = {"model": "quell-mini", "messages": HELLO, "max_tokens": 4, **body}
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {KEYS[key][0]}"},
        timeout=30,
    )


def admin(
    server: RunningServer,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = ADMIN_TOKEN,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(
        method, f"{server.url}/admin/{path}", json=body, headers=headers, timeout=10
    )


def state(server: RunningServer) -> dict[str, Any]:
    response = admin(server, "GET", "state")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def engine_faults(engine: RunningServer, **faults: Any) -> None:
    if faults:
        response = httpx.post(f"{engine.url}/admin/faults", json=faults, headers=ENGINE_ADMIN)
    else:
        response = httpx.delete(f"{engine.url}/admin/faults", headers=ENGINE_ADMIN)
    assert response.status_code == 200, response.text


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)


def access_lines(config: Path, wait_s: float = 0.3) -> list[dict[str, Any]]:
    """The access log's lines, after the writer's flush interval has passed."""
    time.sleep(wait_s)
    path = config.parent / "access.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    return error
