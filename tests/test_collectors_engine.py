"""The HTTP queue collector and `quell probe` against a real, stalled engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from collectors.http import make_client
from collectors.http_queue import HttpQueueCollector
from collectors.model import CollectResult
from collectors.summary import summarize
from tests.servers import RunningServer, engine

ADMIN = {"Authorization": "Bearer engine-admin-secret"}
SLOTS = 2
MAX_WAITING = 2
# Slow enough that a request admitted before the stall is still running.
SLOW_ENGINE = ("--decode-step-ms", "50", "--decode-ms-per-seq", "0", "--prefill-ms-per-token", "0")
BODY = {
    "model": "quell-mini",
    "messages": [{"role": "user", "content": "full?"}],
    "max_tokens": 400,
}


def collect(url: str) -> CollectResult:
    async def once() -> CollectResult:
        async with make_client() as client:
            return await HttpQueueCollector(url + "/metrics", client).collect(time.time())

    return asyncio.run(once())


def signals(url: str) -> dict[str, float]:
    result = collect(url)
    assert result.ok, result.status
    return summarize(result.samples)[0]


def send_in_background(url: str, count: int) -> list[httpx.Response]:
    answers: list[httpx.Response] = []

    def send() -> None:
        # The engine is killed under the hung requests at the end of the test.
        with contextlib.suppress(httpx.HTTPError):
            answers.append(httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60))

    for _ in range(count):
        threading.Thread(target=send, daemon=True).start()
    return answers


def wait_for(url: str, check: str, predicate: object, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        values = signals(url)
        if predicate(values):  # type: ignore[operator]
            return values
        assert time.monotonic() < deadline, f"{check}: {values}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stalled_engine() -> Iterator[RunningServer]:
    """SLOTS requests running, MAX_WAITING waiting, one refused: then stalled."""
    args = ("--slots", str(SLOTS), "--max-waiting", str(MAX_WAITING), *SLOW_ENGINE)
    with engine(*args) as server:
        send_in_background(server.url, SLOTS)
        wait_for(server.url, "both slots busy", lambda v: v["running"] == SLOTS)
        httpx.post(f"{server.url}/admin/faults", json={"stalled": True}, headers=ADMIN)
        answers = send_in_background(server.url, MAX_WAITING + 1)
        deadline = time.monotonic() + 10
        while not answers:  # the one beyond capacity is refused at once
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert answers[0].status_code == 503
        try:
            yield server
        finally:
            # A graceful stop would wait out the hung requests; nothing here
            # needs one.
            server.process.kill()
            server.process.wait(5)


def test_collector_reads_depth_running_capacity_of_a_stalled_engine(
    stalled_engine: RunningServer,
) -> None:
    values = wait_for(stalled_engine.url, "queue filled", lambda v: v["depth"] == MAX_WAITING)
    assert values["running"] == SLOTS
    assert values["workers"] == SLOTS
    assert values["capacity"] == MAX_WAITING
    assert values["rejected_total"] == 1
    result = collect(stalled_engine.url)
    refused = {
        s.label("reason"): s.value
        for s in result.samples
        if s.series == "rejected_total" and s.value
    }
    assert refused == {"queue_full": 1.0}
    assert all(s.label("target") == f"{stalled_engine.url}/metrics" for s in result.samples)


def test_probe_detects_vllm_and_reports_the_stall_in_quell_words(
    stalled_engine: RunningServer,
) -> None:
    wait_for(stalled_engine.url, "queue filled", lambda v: v["depth"] == MAX_WAITING)
    probe = subprocess.run(
        [
            sys.executable,
            "-m",
            "console",
            "probe",
            stalled_engine.url,
            "--json",
            "--interval",
            "0.3",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 0, probe.stderr
    document = json.loads(probe.stdout)
    assert document["preset"] == "vllm"
    found = document["signals"]
    assert (found["depth"], found["running"], found["capacity"], found["workers"]) == (
        MAX_WAITING,
        SLOTS,
        MAX_WAITING,
        SLOTS,
    )
    assert found["rejected_total"] == 1
    # Stalled: nothing completes and nothing more is refused between readings.
    assert found["completed_rate"] == 0
    assert found["rejected_rate"] == 0
    assert "queue_wait_seconds" not in found


def test_probe_prints_a_table_by_default(stalled_engine: RunningServer) -> None:
    probe = subprocess.run(
        [sys.executable, "-m", "console", "probe", stalled_engine.url, "--interval", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0].startswith("preset vllm")
    rows = {line.split()[0]: line.split()[1] for line in lines[1:] if line.startswith("  ")}
    assert rows["depth"] == str(MAX_WAITING)
    assert rows["{reason=queue_full}"] == "1"
