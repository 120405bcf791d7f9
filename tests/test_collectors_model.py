"""The value types and the shape every source shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.gpu import GpuCollector
from collectors.host import HostCollector
from collectors.http import make_client, redact
from collectors.http_queue import HttpQueueCollector
from collectors.logs import LogCollector
from collectors.model import Collector, Event, Sample, error, labels
from collectors.redis_queues import RedisQueueCollector
from collectors.summary import summarize


def test_samples_and_events_are_frozen_values() -> None:
    sample = Sample("depth", labels(target="gw", priority="critical"), 1.0, 3.0)
    assert sample.labels == (("priority", "critical"), ("target", "gw"))
    assert sample == Sample("depth", labels(priority="critical", target="gw"), 1.0, 3.0)
    assert sample.label("priority") == "critical"
    with pytest.raises(AttributeError):
        sample.value = 4.0  # type: ignore[misc]
    assert Event(1.0, "queue_full", "access.log", "works queue_full").severity == "info"
    assert not hasattr(sample, "__dict__")  # slotted: millions of these are cheap


def test_statuses_are_one_line() -> None:
    assert error("cannot connect\n  to x:\tconnection refused") == (
        "error: cannot connect to x: connection refused"
    )


async def test_every_source_is_a_collector(tmp_path: Path) -> None:
    async with make_client() as client:
        sources = [
            HttpQueueCollector("http://127.0.0.1:1/metrics", client),
            RedisQueueCollector("127.0.0.1", 1, "celery", "celery"),
            HostCollector(),
            GpuCollector(),
            LogCollector(tmp_path / "x.log"),
        ]
        for source in sources:
            assert isinstance(source, Collector)
            assert source.name


def test_redact_hides_only_the_password() -> None:
    assert redact("http://ops:hunter2@mq:15672/api") == "http://ops:***@mq:15672/api"
    assert redact("http://mq:15672/api") == "http://mq:15672/api"
    assert redact("redis://:hunter2@[::1]:6379/0") == "redis://[::1]:6379/0"


def test_summary_prefers_the_overall_series_and_adds_up_the_parts() -> None:
    samples = [
        Sample("queue_wait_seconds", labels(target="t", priority="critical"), 0, 0.1),
        Sample("queue_wait_seconds", labels(target="t", priority="sheddable"), 0, 3.0),
        Sample("queue_wait_seconds", labels(target="t"), 0, 0.9),
        Sample("depth", labels(target="t", engine="0"), 0, 2.0),
        Sample("depth", labels(target="t", engine="1"), 0, 5.0),
        Sample("kv_usage", labels(target="t", engine="0"), 0, 0.5),
        Sample("kv_usage", labels(target="t", engine="1"), 0, 0.9),
    ]
    values, parts = summarize(samples)
    assert values == {"queue_wait_seconds": 0.9, "depth": 7.0, "kv_usage": pytest.approx(0.7)}
    assert [p.labels for p in parts["depth"]] == [{"engine": "0"}, {"engine": "1"}]


async def test_credentials_in_a_url_are_sent_as_basic_auth_and_never_shown() -> None:
    from aiohttp import web

    from collectors.http import FetchError, fetch

    seen: list[str | None] = []

    async def metrics(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Basic c2NyYXBlcjpzM2NyZXQ=":
            return web.Response(status=401)
        return web.Response(text="# TYPE up gauge\nup 1\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with make_client() as client:
            body, _ = await fetch(client, f"http://scraper:s3cret@127.0.0.1:{port}/metrics")
            assert body.startswith("# TYPE up gauge")
            with pytest.raises(FetchError) as refused:
                await fetch(client, f"http://scraper:wrong@127.0.0.1:{port}/metrics")
            assert "wrong" not in str(refused.value)
            assert "scraper:***@" in str(refused.value)
            assert "check the user and password" in str(refused.value)
    finally:
        await runner.cleanup()
    assert seen == ["Basic c2NyYXBlcjpzM2NyZXQ=", "Basic c2NyYXBlcjp3cm9uZw=="]
