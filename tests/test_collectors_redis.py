"""Celery and RQ queues filled by their own client libraries in a real Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.model import CollectResult
from collectors.redis_queues import CELERY_SEPARATOR, RedisQueueCollector, celery_keys
from collectors.summary import summarize
from tests.conftest import require_program

redis = pytest.importorskip("redis", reason="the test extra installs redis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = require_program("redis-server", "redis-server")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(5)


def collect(collector: RedisQueueCollector) -> CollectResult:
    async def once() -> CollectResult:
        try:
            return await collector.collect(time.time())
        finally:
            await collector.close()

    return asyncio.run(once())


def test_celery_separator_is_kombus() -> None:
    kombu_redis = pytest.importorskip("kombu.transport.redis")
    assert kombu_redis.Channel.sep == CELERY_SEPARATOR
    assert tuple(kombu_redis.PRIORITY_STEPS) == (0, 3, 6, 9)
    assert celery_keys("celery")[1] == ("3", "celery\x06\x163")


def test_celery_queue_depth_by_priority(redis_port: int) -> None:
    celery = pytest.importorskip("celery")
    app = celery.Celery("producer", broker=f"redis://127.0.0.1:{redis_port}/0")
    # No worker: the messages stay queued. A step holds the priorities from
    # it up to the next step (4 lands in step 3, 7 in step 6).
    for priority in (0, 0, 4, 7, 9):
        app.send_task("tasks.summarise", args=(priority,), queue="inference", priority=priority)
    app.close()
    result = collect(RedisQueueCollector("127.0.0.1", redis_port, "inference", "celery"))
    assert result.ok, result.status
    depths = {s.label("priority"): s.value for s in result.samples if s.series == "depth"}
    assert depths == {"0": 2.0, "3": 1.0, "6": 1.0, "9": 1.0}
    values, _ = summarize(result.samples)
    assert values["depth"] == 5
    assert values["unacked"] == 0
    assert {s.label("queue") for s in result.samples} == {"inference"}


def test_rq_queue_started_jobs_and_workers(redis_port: int, tmp_path: Path) -> None:
    rq = pytest.importorskip("rq")
    connection = redis.Redis(port=redis_port, db=1)
    queue = rq.Queue("jobs", connection=connection)
    for _ in range(4):
        queue.enqueue("time.sleep", 5)
    collector = RedisQueueCollector("127.0.0.1", redis_port, "jobs", "rq", db=1)
    values, _ = summarize(collect(collector).samples)
    assert (values["depth"], values["running"], values["workers"]) == (4, 0, 0)

    worker = subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", "--burst", "--worker-class", "rq.SimpleWorker",
         "--url", f"redis://127.0.0.1:{redis_port}/1", "jobs"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            values, _ = summarize(collect(collector).samples)
            if values["running"] == 1:
                break
            assert worker.poll() is None, "the RQ worker exited"
            assert time.monotonic() < deadline, values
            time.sleep(0.1)
        assert values["depth"] == 3
        assert values["workers"] == 1
    finally:
        worker.kill()
        worker.wait(5)


def test_unreachable_redis_is_a_status_not_an_exception() -> None:
    result = collect(RedisQueueCollector("127.0.0.1", free_port(), "celery", "celery", timeout_s=1))
    assert result.status.startswith("error: cannot connect to redis://127.0.0.1:")
    assert result.status.endswith(": connection refused")
    assert result.samples == []


def test_wrong_type_key_is_reported(redis_port: int) -> None:
    redis.Redis(port=redis_port, db=2).set("rq:queue:odd", "not a list")
    result = collect(RedisQueueCollector("127.0.0.1", redis_port, "odd", "rq", db=2))
    assert "WRONGTYPE" in result.status
