"""The admin API: who may use it, what it answers, and that changes outlive a restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_helpers import (
    ADMIN_TOKEN,
    KEYS,
    admin,
    assert_openai_error,
    chat,
    gateway,
    gateway_config,
    state,
)
from tests.servers import FAST_ENGINE, RunningServer, engine


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    with engine(*FAST_ENGINE) as server:
        yield server


@pytest.fixture(scope="module")
def gw(
    upstream: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("gateway-admin")
    config = gateway_config(directory, {"engine-0": upstream.url}, admin_in_file=True)
    # The token comes from the file's digest here, not the environment.
    with gateway(config, admin_token=None) as server:
        yield server


def test_admin_needs_the_admin_token(gw: RunningServer) -> None:
    assert_openai_error(admin(gw, "GET", "state", token=None), 401, "unauthorized")
    assert_openai_error(admin(gw, "GET", "state", token="not-it"), 401, "unauthorized")
    client_key = KEYS["pager"][0]
    assert_openai_error(admin(gw, "GET", "state", token=client_key), 403, "forbidden")
    assert_openai_error(
        admin(gw, "POST", "queue", {"workers": 2}, token=client_key), 403, "forbidden"
    )
    assert admin(gw, "GET", "state").status_code == 200


def test_state_describes_the_whole_gateway(gw: RunningServer) -> None:
    current = state(gw)
    assert current["queue"]["workers"] == 32 and current["queue"]["capacity"] == 256
    assert current["queue"]["depth_by_priority"] == {"critical": 0, "standard": 0, "sheddable": 0}
    assert set(current["keys"]) == set(KEYS)
    assert current["keys"]["pager"]["priority"] == "critical"
    assert current["upstreams"]["engine-0"]["breaker"]["state"] == "closed"
    assert current["shed"] == [] and current["cache"]["enabled"] is False
    text = json.dumps(current)
    for secret, _ in KEYS.values():
        assert secret not in text
    assert ADMIN_TOKEN not in text


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("queue", {"workers": 0}, "queue.workers"),
        ("queue", {"workers": 8, "capacity": -1}, "queue.capacity"),
        ("queue", {"wokers": 8}, "wokers"),
        ("queue", {}, "no change"),
        ("limits", {"key": "nobody", "requests_per_second": 1}, "nobody"),
        ("limits", {"factor": 0.5, "burst": 3}, "either"),
        ("limits", {"requests_per_second": "fast"}, "limits.requests_per_second"),
        ("shed", {"classes": ["vip"]}, "classes"),
        ("cache", {"ttl_s": 0}, "cache.ttl_s"),
        ("upstreams", {"name": "e9", "url": "gopher://x"}, "upstream.url"),
        # Found by fuzzing: a non-ASCII host cannot go into a Host header as it is.
        ("upstreams", {"name": "e9", "url": "https://j\u00eaz"}, "xn--"),
        ("upstreams", {"name": "e9", "url": "http://h", "health_path": "/a b"}, "health_path"),
        ("upstreams", {"name": "engine-0", "url": "http://127.0.0.1:1"}, "exists"),
    ],
)
def test_invalid_changes_get_422_and_change_nothing(
    gw: RunningServer, path: str, body: dict[str, object], reason: str
) -> None:
    before = state(gw)
    error = assert_openai_error(admin(gw, "POST", path, body), 422, "invalid_setting")
    assert reason in error["message"]
    after = state(gw)
    for moving in (before, after):
        moving["queue"].pop("service_rate")  # a measurement, not a setting
    for section in ("queue", "limits", "keys", "shed", "cache"):
        assert after[section] == before[section]
    assert set(after["upstreams"]) == set(before["upstreams"])


def test_changes_answer_before_and_after(gw: RunningServer) -> None:
    queue = admin(gw, "POST", "queue", {"workers": 48, "capacity": 300}).json()
    assert queue["before"]["workers"] == 32 and queue["after"]["workers"] == 48
    assert queue["after"]["capacity"] == 300

    limited = admin(gw, "POST", "limits", {"key": "batch", "requests_per_second": 5}).json()
    assert limited["before"]["limits"]["requests_per_second"] == 0
    assert limited["after"]["limits"] == {
        "requests_per_second": 5.0,
        "burst": 0,
        "tokens_per_minute": 0,
    }
    halved = admin(gw, "POST", "limits", {"key": "batch", "factor": 0.5}).json()
    assert halved["after"]["limits"]["requests_per_second"] == 2.5
    defaults = admin(gw, "POST", "limits", {"tokens_per_minute": 100000}).json()
    assert defaults["after"]["defaults"]["tokens_per_minute"] == 100000
    assert defaults["after"]["keys"]["pager"]["tokens_per_minute"] == 100000
    assert chat(gw, "pager").status_code == 200

    added = admin(gw, "POST", "upstreams", {"name": "spare", "url": "http://127.0.0.1:9"})
    assert added.json()["before"] is None and added.json()["after"]["url"] == "http://127.0.0.1:9"
    removed = admin(gw, "DELETE", "upstreams/spare").json()
    assert removed["after"] is None
    assert_openai_error(admin(gw, "POST", "upstreams/spare/drain"), 404, "not_found")
    assert_openai_error(admin(gw, "POST", "upstreams/engine-0/explode"), 404, "not_found")


def test_changes_survive_a_restart(upstream: RunningServer, tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path, {"engine-0": upstream.url}, server={"state_file": "state.json"}
    )
    with gateway(config) as first:
        admin(first, "POST", "queue", {"workers": 7, "timeout_s": 2.5})
        admin(first, "POST", "limits", {"key": "team-a", "requests_per_second": 9, "burst": 3})
        admin(first, "POST", "shed", {"classes": ["sheddable"]})
        admin(first, "POST", "cache", {"enabled": True, "ttl_s": 30})
        admin(first, "POST", "upstreams", {"name": "spare", "url": "http://127.0.0.1:9"})
        admin(first, "POST", "upstreams/spare/trip")
        admin(first, "POST", "upstreams/engine-0/drain")
        saved = state(first)
    assert not list(tmp_path.glob(".state.json.*"))  # written via a temporary, renamed
    with gateway(config) as second:
        restored = state(second)
        assert restored["queue"]["workers"] == 7 and restored["queue"]["timeout_s"] == 2.5
        assert restored["keys"]["team-a"] == saved["keys"]["team-a"]
        assert restored["keys"]["team-a"]["own_limits"] == {"requests_per_second": 9, "burst": 3}
        assert restored["shed"] == ["sheddable"]
        assert restored["cache"]["enabled"] is True and restored["cache"]["ttl_s"] == 30
        assert restored["upstreams"]["engine-0"]["drained"] is True
        assert restored["upstreams"]["spare"]["breaker"]["tripped"] is True
        assert_openai_error(chat(second), 503, "circuit_open")


def test_a_broken_state_file_stops_the_start_with_one_line(
    upstream: RunningServer, tmp_path: Path
) -> None:
    import subprocess

    from tests.servers import quell_command

    config = gateway_config(
        tmp_path, {"engine-0": upstream.url}, server={"state_file": "state.json"}
    )
    (tmp_path / "state.json").write_text(json.dumps({"format": 1, "queue": {"workers": -3}}))
    result = subprocess.run(
        quell_command("gateway", "serve", "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "queue.workers" in result.stderr and "state.json" in result.stderr


def test_without_any_admin_token_the_admin_api_is_off(
    upstream: RunningServer, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, {"engine-0": upstream.url})
    with gateway(config, admin_token=None) as gw:
        response = httpx.get(f"{gw.url}/admin/state")
        assert_openai_error(response, 403, "admin_disabled")
