"""Upstream trouble as the gateway handles it: dead engines, stalls, errors, drain."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.gateway_helpers import (
    HELLO,
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

QUICK_BREAKER = {
    "breaker_consecutive_failures": 2,
    "breaker_cooldown_s": 0.5,
    "health_interval_s": 0.2,
    "read_timeout_s": 1.0,
    "connect_timeout_s": 0.5,
}


def port_of(server: RunningServer) -> str:
    return server.url.rsplit(":", 1)[1]


def test_breaker_opens_when_the_engine_dies_and_closes_when_it_returns(tmp_path: Path) -> None:
    # Health checks are slowed right down here so that only the failed
    # requests themselves decide (the next test covers health checks).
    settings = QUICK_BREAKER | {"health_interval_s": 60.0}
    with engine(*FAST_ENGINE) as first:
        port = port_of(first)
        config = gateway_config(tmp_path, {"engine-0": first.url}, upstream_defaults=settings)
        with gateway(config) as gw:
            assert chat(gw).status_code == 200
            first.stop()

            # Refused connections are failures: two of them open the breaker.
            for _ in range(2):
                assert_openai_error(chat(gw), 502, "upstream_unreachable")
            error = assert_openai_error(chat(gw), 503, "circuit_open")
            assert "engine-0 breaker open" in error["message"]
            assert metric(gw, "quell_gateway_upstream_breaker_state", upstream="engine-0") == 2
            with pytest.raises(openai.InternalServerError) as caught:
                sdk(gw).chat.completions.create(model="quell-mini", messages=HELLO)
            assert caught.value.code == "circuit_open"

            with engine(*FAST_ENGINE, "--port", port):
                # After the cool-down one probe request closes the breaker.
                wait_for(lambda: chat(gw).status_code == 200, timeout=10, every=0.1)
                upstream = state(gw)["upstreams"]["engine-0"]
                assert upstream["breaker"]["state"] == "closed"
                assert upstream["breaker"]["times_opened"] >= 1
                assert metric(gw, "quell_gateway_upstream_breaker_state", upstream="engine-0") == 0


def test_health_checks_take_a_dead_engine_out_and_put_it_back(tmp_path: Path) -> None:
    with engine(*FAST_ENGINE) as first:
        port = port_of(first)
        config = gateway_config(tmp_path, {"engine-0": first.url}, upstream_defaults=QUICK_BREAKER)
        with gateway(config) as gw:
            first.stop()
            wait_for(lambda: not state(gw)["upstreams"]["engine-0"]["healthy"], timeout=5)
            error = assert_openai_error(chat(gw), 503, "circuit_open")
            assert "engine-0 unhealthy" in error["message"]
            assert metric(gw, "quell_gateway_upstream_healthy", upstream="engine-0") == 0
            with engine(*FAST_ENGINE, "--port", port):
                wait_for(lambda: state(gw)["upstreams"]["engine-0"]["healthy"], timeout=5)
                assert chat(gw).status_code == 200


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, RunningServer, RunningServer]]:
    directory = tmp_path_factory.mktemp("gateway-pair")
    with engine(*FAST_ENGINE) as e0, engine(*FAST_ENGINE) as e1:
        config = gateway_config(
            directory,
            {"engine-0": e0.url, "engine-1": e1.url},
            upstream_defaults=QUICK_BREAKER,
        )
        with gateway(config) as gw:
            yield gw, e0, e1


def served_by(gw: RunningServer, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        response = chat(gw, max_tokens=1)
        assert response.status_code == 200, response.text
        seen[response.headers["x-quell-upstream"]] += 1
    return seen


def test_requests_are_balanced_and_drain_moves_them_away(
    pair: tuple[RunningServer, RunningServer, RunningServer],
) -> None:
    gw = pair[0]
    # One at a time, both are equally idle: ties go round-robin.
    assert served_by(gw, 6) == {"engine-0": 3, "engine-1": 3}
    drained = admin(gw, "POST", "upstreams/engine-0/drain")
    assert drained.status_code == 200, drained.text
    assert drained.json()["before"]["drained"] is False
    assert drained.json()["after"]["drained"] is True
    try:
        assert served_by(gw, 4) == {"engine-1": 4}
    finally:
        admin(gw, "POST", "upstreams/engine-0/undrain")
    assert set(served_by(gw, 4)) == {"engine-0", "engine-1"}


def test_read_timeout_answers_504_and_other_replica_takes_over(
    pair: tuple[RunningServer, RunningServer, RunningServer],
) -> None:
    gw, e0, _ = pair
    admin(gw, "POST", "upstreams/engine-1/drain")
    engine_faults(e0, stalled=True)
    try:
        started = time.monotonic()
        error = assert_openai_error(chat(gw), 504, "upstream_timeout")
        assert 0.9 < time.monotonic() - started < 3.0  # read_timeout_s = 1.0
        assert "engine-0" in error["message"]
    finally:
        engine_faults(e0)
        admin(gw, "POST", "upstreams/engine-1/undrain")
        admin(gw, "POST", "upstreams/engine-0/reset")


def test_upstream_errors_open_the_breaker_and_traffic_moves_on(
    pair: tuple[RunningServer, RunningServer, RunningServer],
) -> None:
    gw, e0, _ = pair
    engine_faults(e0, error_rate=1.0)
    try:
        statuses = Counter(chat(gw, max_tokens=1).status_code for _ in range(8))
        # engine-0's 500s count as failures: after two it is cut off and
        # engine-1 answers the rest.
        assert statuses[500] == 2 and statuses[200] == 6
        assert state(gw)["upstreams"]["engine-0"]["breaker"]["state"] == "open"
        assert served_by(gw, 3) == {"engine-1": 3}
    finally:
        engine_faults(e0)
    # Cool-down passes, one probe succeeds, engine-0 is back in rotation.
    wait_for(lambda: "engine-0" in served_by(gw, 2), timeout=5, every=0.1)
    assert state(gw)["upstreams"]["engine-0"]["breaker"]["state"] == "closed"


def test_manual_trip_holds_an_upstream_out_until_reset(
    pair: tuple[RunningServer, RunningServer, RunningServer],
) -> None:
    gw = pair[0]
    tripped = admin(gw, "POST", "upstreams/engine-1/trip").json()
    assert tripped["before"]["breaker"]["state"] == "closed"
    assert (
        tripped["after"]["breaker"] | {"state": "open", "tripped": True}
        == tripped["after"]["breaker"]
    )
    try:
        time.sleep(0.6)  # longer than the cool-down: a trip does not expire
        assert served_by(gw, 3) == {"engine-0": 3}
    finally:
        reset = admin(gw, "POST", "upstreams/engine-1/reset").json()
    assert reset["after"]["breaker"]["state"] == "closed"
    assert "engine-1" in served_by(gw, 2)


def test_a_refused_connection_is_retried_on_another_upstream(
    pair: tuple[RunningServer, RunningServer, RunningServer],
) -> None:
    gw = pair[0]
    dead = admin(gw, "POST", "upstreams", {"name": "dead", "url": "http://127.0.0.1:9"})
    assert dead.status_code == 200, dead.text
    try:
        # Nothing listens on port 9: every request that picks "dead" is
        # refused before anything was sent, so it is safe to resend.
        assert set(served_by(gw, 6)) <= {"engine-0", "engine-1"}
        described = state(gw)["upstreams"]["dead"]
        assert described["failures"] >= 1
        assert described["breaker"]["state"] == "open"
    finally:
        admin(gw, "DELETE", "upstreams/dead")
    assert "dead" not in state(gw)["upstreams"]
