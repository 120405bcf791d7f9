"""The lab supervisor as a user drives it: up, status, scale, fault, down, and no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.lab_helpers import lab_pids, lab_state, quell, wait_gone
from tests.servers import quell_command


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Path]:
    result = quell(tmp_path, "lab", "up", "--detach")
    assert result.returncode == 0, result.stdout + result.stderr
    pids = lab_pids(lab_state(tmp_path))
    yield tmp_path
    quell(tmp_path, "lab", "down")
    assert wait_gone(pids) == [], "lab processes outlived `quell lab down`"


def test_status_json_is_the_documented_interface(lab: Path) -> None:
    state = lab_state(lab)
    assert {"url", "admin_token", "pid", "access_log"} <= set(state["gateway"])
    assert [set(k) >= {"name", "key", "priority"} for k in state["keys"]] == [True] * 3
    assert {k["priority"] for k in state["keys"]} == {"critical", "standard", "sheddable"}
    assert len(state["engines"]) == 2
    for engine in state["engines"]:
        assert {"url", "admin_token", "pid", "healthy"} <= set(engine)
        assert engine["healthy"] is True
        assert engine["url"].startswith("http://127.0.0.1:")
    # The state holds secrets: only its owner may read it.
    state_file = lab / "lab" / "lab.json"
    assert state_file.stat().st_mode & 0o777 == 0o600
    # A request through the gateway with a lab key is served.
    key = state["keys"][0]["key"]
    response = httpx.post(
        f"{state['gateway']['url']}/v1/chat/completions",
        json={"model": "quell-mini", "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": 2},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )  # fmt: skip
    assert response.status_code == 200, response.text


def test_scale_registers_and_removes_replicas_with_the_gateway(lab: Path) -> None:
    result = quell(lab, "lab", "scale", "3")
    assert result.returncode == 0, result.stderr
    assert "2 -> 3" in result.stdout
    state = lab_state(lab)
    assert len(state["engines"]) == 3
    admin = {"Authorization": f"Bearer {state['gateway']['admin_token']}"}
    gateway_state = httpx.get(f"{state['gateway']['url']}/admin/state", headers=admin).json()
    assert "engine-2" in str(gateway_state["upstreams"])
    removed = state["engines"][2]["pid"]
    result = quell(lab, "lab", "scale", "2")
    assert result.returncode == 0, result.stderr
    assert wait_gone([removed]) == []
    gateway_state = httpx.get(f"{state['gateway']['url']}/admin/state", headers=admin).json()
    assert "engine-2" not in str(gateway_state["upstreams"])


def test_fault_changes_one_replica_and_clear_puts_it_back(lab: Path) -> None:
    result = quell(lab, "lab", "fault", "1", "--slowdown", "3")
    assert result.returncode == 0, result.stderr
    assert "engine-1: slowdown 1.0 -> 3.0" in result.stdout
    state = lab_state(lab)
    metrics = httpx.get(f"{state['engines'][1]['url']}/metrics").text
    assert 'quell_engine_fault_slowdown{engine="1"' in metrics
    assert "quell_engine_fault_slowdown" in metrics and " 3.0" in metrics
    result = quell(lab, "lab", "fault", "all", "--clear")
    assert "engine-1: slowdown 3.0 -> 1.0" in result.stdout
    bad = quell(lab, "lab", "fault", "7", "--stall")
    assert bad.returncode == 2 and "no replica 7" in bad.stderr


def test_a_replica_that_dies_is_reported_not_restarted(lab: Path) -> None:
    state = lab_state(lab)
    victim = state["engines"][0]
    assert quell(lab, "lab", "fault", "0", "--crash").returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        engine = lab_state(lab)["engines"][0]
        if engine["exit_status"] is not None:
            break
        time.sleep(0.1)
    assert engine["exit_status"] == 70 and engine["healthy"] is False
    assert engine["pid"] == victim["pid"], "the dead replica was silently replaced"
    assert "engine-0 (pid" in (lab / "lab" / "supervisor.log").read_text()


def test_second_lab_is_refused_while_one_runs(lab: Path) -> None:
    result = quell(lab, "lab", "up", "--detach")
    assert result.returncode == 2
    assert "already running" in result.stderr


def test_lab_down_kills_a_child_that_hangs(lab: Path) -> None:
    state = lab_state(lab)
    # A stopped process cannot act on SIGTERM: the supervisor must escalate.
    os.kill(state["engines"][0]["pid"], signal.SIGSTOP)
    pids = lab_pids(state)
    result = quell(lab, "lab", "down")
    assert result.returncode == 0
    assert wait_gone(pids, 15) == []


def test_supervisor_killed_with_9_takes_its_children_along(lab: Path) -> None:
    state = lab_state(lab)
    os.kill(state["supervisor_pid"], signal.SIGKILL)
    children = lab_pids(state)[1:]
    assert wait_gone(children, 10) == [], "children outlived their supervisor"
    result = quell(lab, "lab", "status")
    assert result.returncode == 2 and "not running" in result.stderr


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_foreground_lab_stops_everything_on_a_signal(tmp_path: Path, stop_signal: int) -> None:
    env = {**os.environ, "QUELL_STATE_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        quell_command("lab", "up", "--replicas", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "Ctrl-C stops the lab" in line:
                break
        pids = lab_pids(lab_state(tmp_path))
        process.send_signal(stop_signal)
        assert process.wait(20) == 0
        assert wait_gone(pids) == []
        assert not (tmp_path / "lab" / "lab.json").exists()
    finally:
        if process.poll() is None:
            process.kill()


def test_load_against_the_lab_then_down_leaves_no_process(lab: Path) -> None:
    before = lab_pids(lab_state(lab))
    result = quell(
        lab, "load", "--scenario", "producer_surge", "--time-scale", "0.1", "--quiet",
        "--out", str(lab / "results.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "works_queue_full" in result.stdout or "ok" in result.stdout
    assert (lab / "results.json").exists()
    quell(lab, "lab", "down")
    assert wait_gone(before) == []


def test_bad_lab_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text("replicas = 0\n")
    result = quell(tmp_path, "lab", "up", "--config", str(config))
    assert result.returncode == 2
    assert "replicas" in result.stderr and "Traceback" not in result.stderr


def test_commands_without_a_lab_say_how_to_start_one(tmp_path: Path) -> None:
    for args in (("lab", "status"), ("lab", "scale", "2"), ("load", "--scenario", "steady")):
        result = quell(tmp_path, *args)
        assert result.returncode == 2, args
        assert "quell lab up" in result.stderr
    result = quell(tmp_path, "lab", "down")
    assert result.returncode == 0 and "no lab is running" in result.stdout
