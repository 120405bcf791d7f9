"""A real nginx, overloaded through limit_req: stub_status and its error log."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from collectors.http import make_client
from collectors.http_queue import HttpQueueCollector
from collectors.logs import LogCollector
from collectors.summary import summarize
from tests.conftest import require_program

BURST = 20

CONFIG = """\
worker_processes 1;
error_log {tmp}/error.log info;
pid {tmp}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log combined;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    limit_req_zone $binary_remote_addr zone=api:1m rate=1r/s;
    upstream tiny {{ server 127.0.0.1:{upstream_port}; }}
    server {{
        listen 127.0.0.1:{port};
        location = /nginx_status {{ stub_status; }}
        location /v1/ {{ limit_req zone=api; proxy_pass http://tiny; }}
    }}
    server {{
        listen 127.0.0.1:{upstream_port};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Nginx:
    url: str
    error_log: Path
    access_log: Path


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    binary = require_program("nginx", "nginx")
    tmp = tmp_path_factory.mktemp("nginx")
    port, upstream_port = free_port(), free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(CONFIG.format(tmp=tmp, port=port, upstream_port=upstream_port))
    process = subprocess.Popen(
        [
            binary,
            "-p",
            str(tmp),
            "-e",
            str(tmp / "error.log"),
            "-c",
            str(conf),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"nginx exited: {process.stderr.read() if process.stderr else ''}")
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        yield Nginx(f"http://127.0.0.1:{port}", tmp / "error.log", tmp / "access.log")
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def burst(url: str, count: int) -> list[int]:
    async with httpx.AsyncClient() as client:
        answers = await asyncio.gather(
            *(client.get(f"{url}/v1/chat") for _ in range(count)), return_exceptions=True
        )
    return [a.status_code for a in answers if isinstance(a, httpx.Response)]


def test_stub_status_and_error_log_during_a_limit_req_overload(nginx: Nginx) -> None:
    async def scenario() -> None:
        errors = LogCollector(nginx.error_log, name="nginx-error")
        access = LogCollector(nginx.access_log, name="nginx-access")
        async with make_client() as client:
            status = HttpQueueCollector(f"{nginx.url}/nginx_status", client)
            before = await status.collect(time.time())
            assert before.ok, before.status
            assert status.preset == "nginx"
            await errors.collect(time.time())  # starts at the end: startup lines are old news
            await access.collect(time.time())

            answers = await burst(nginx.url, BURST)
            assert answers.count(503) >= BURST - 2, answers  # 1 r/s lets one or two through
            await asyncio.sleep(0.3)

            after = await status.collect(time.time())
            assert after.ok, after.status
            values, _ = summarize(after.samples)
            # The burst, plus this page read twice.
            assert values["offered_total"] >= BURST + 2
            assert values["offered_rate"] > 0
            assert values["connections_active"] >= 1
            assert values["running"] >= 1  # this very request is being written
            assert values["connections_dropped_total"] == 0

            from_errors = await errors.collect(time.time())
            from_access = await access.collect(time.time())
        limited = [e for e in from_errors.events if e.kind == "limit_req"]
        assert len(limited) >= BURST - 2
        assert all(e.source == "nginx-error" and "limiting requests" in e.text for e in limited)
        assert all(e.severity == "error" for e in limited)
        rates = {
            s.label("kind"): s.value for s in from_errors.samples if s.series == "log_events_rate"
        }
        assert rates["limit_req"] > 0
        server_errors = [e for e in from_access.events if e.kind == "http_5xx"]
        assert len(server_errors) >= BURST - 2
        assert all('" 503 ' in e.text for e in server_errors)

    asyncio.run(scenario())
