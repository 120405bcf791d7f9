"""`quell diagnose` as scripts use it: exit status and the JSON contract."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.lab_helpers import lab_pids, lab_state, quell, wait_gone


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state_dir = tmp_path_factory.mktemp("diagnose")
    result = quell(state_dir, "lab", "up", "--detach")
    assert result.returncode == 0, result.stderr
    pids = lab_pids(lab_state(state_dir))
    yield state_dir
    quell(state_dir, "lab", "down")
    assert wait_gone(pids) == []


def test_a_quiet_lab_is_healthy_exit_0(lab: Path) -> None:
    result = quell(lab, "diagnose", "--window", "4", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "healthy" and report["verdicts"] == []


def test_a_stalled_lab_is_an_imbalance_exit_1_with_the_contract(lab: Path) -> None:
    state = lab_state(lab)
    key = state["keys"][1]["key"]
    for engine in state["engines"]:
        httpx.post(f"{engine['url']}/admin/faults", json={"stalled": True},
                   headers={"Authorization": f"Bearer {engine['admin_token']}"})  # fmt: skip
    stop = threading.Event()

    def traffic() -> None:
        # About 30 requests/s, each waiting in vain, until the test is done.
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                threading.Thread(
                    target=lambda: _ignore(lambda: client.post(
                        f"{state['gateway']['url']}/v1/chat/completions",
                        json={"model": "quell-mini", "max_tokens": 4,
                              "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": f"Bearer {key}"},
                    )),
                    daemon=True,
                ).start()  # fmt: skip
                time.sleep(1 / 30)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        result = quell(lab, "diagnose", "--window", "8", "--json")
    finally:
        stop.set()
        for engine in state["engines"]:
            httpx.delete(f"{engine['url']}/admin/faults",
                         headers={"Authorization": f"Bearer {engine['admin_token']}"})  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "imbalance"
    verdict = report["verdicts"][0]
    assert set(verdict) >= {"target", "cause", "confidence", "since", "time_to_full", "evidence",
                            "playbooks"}  # fmt: skip
    assert verdict["cause"] == "stalled_consumers"
    assert verdict["evidence"]["service_rate"] == 0
    assert "drain-replica" in verdict["playbooks"]


def _ignore(call: object) -> None:
    with contextlib.suppress(httpx.HTTPError):
        call()  # type: ignore[operator]


def test_without_a_lab_or_url_it_is_an_error_exit_2(tmp_path: Path) -> None:
    result = quell(tmp_path, "diagnose", "--window", "3")
    assert result.returncode == 2
    assert "quell lab up" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_url_is_an_error_exit_2(tmp_path: Path) -> None:
    result = quell(tmp_path, "diagnose", "--window", "3", "--url", "http://127.0.0.1:1/metrics")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
