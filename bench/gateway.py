"""Benchmark the quell gateway against nginx and LiteLLM's proxy, on loopback.

Three parts, in one run, each against the same upstream:

1. proxy throughput: wrk, closed-loop at 64 connections, through the quell
   gateway, nginx ``proxy_pass`` and LiteLLM's proxy, with the upstream alone
   as a reference row (median of ``--runs`` runs of ``--duration`` seconds);
2. rejection path: a gateway that turns every request away at once with 503
   ``works_queue_full`` (one worker, no queue, the worker held by a request to
   a stalled upstream);
3. overload: an engine of known capacity C behind the gateway and behind
   nginx, offered 1x, 2x and 5x C open-loop (arrivals on a fixed schedule that
   never waits for answers, latency counted from the scheduled send time, so
   no coordinated omission).

Run ``python bench/gateway.py --help``. Tables go to stdout in markdown;
progress to stderr. Every process the bench starts lives in its own process
group and is killed at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

# bench/ for _common, the repository for the cost model when quell is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO_ROOT,
    Managed,
    WrkResult,
    cpu_snapshot,
    fmt_mib,
    fmt_num,
    free_port,
    http_ok,
    http_request,
    load_average,
    log,
    machine_facts,
    markdown_table,
    median_wrk,
    others_cores,
    percentile,
    port_open,
    python_speed_ns,
    raise_open_file_limit,
    rss_bytes,
    run_wrk,
    start,
    summarize_problems,
    write_wrk_script,
    wrk_available,
)

MODEL = "quell-mini"
MAX_TOKENS = 16
REQUEST_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS},
    separators=(",", ":"),
)
CHAT_PATH = "/v1/chat/completions"
HOST = "127.0.0.1"

# Newer releases in the package index need a certifi that is not published
# yet, and a pin keeps the LiteLLM figure from moving with every release (and
# from picking up a bad one: releases of this package have been pulled after
# a supply-chain compromise).
LITELLM_REQUIREMENT = "litellm[proxy]==1.81.13"
LITELLM_VENV = REPO_ROOT / "bench" / ".venv-litellm"

THROUGHPUT_GOAL = 6000.0
LITELLM_FACTOR_GOAL = 10.0
REJECTION_GOAL = 25000.0
GOODPUT_GOAL = 0.95


# -- the fast upstream -------------------------------------------------------
#
# The engine at zero cost still spends ~100 us of Python per request (about
# 10,000 req/s on a core of its own, less when it shares one with wrk), too
# close to the throughput the gateway is meant to reach, so parts 1 and 2
# default to a fixed-response server on uvloop + httptools that does nothing
# but answer. Its reference row shows that it is not the bottleneck.


def _completion_body() -> bytes:
    payload = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "the quick brown fox jumps over the lazy dog and runs far away",
                },
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def _http_response(body: bytes, status: str = "200 OK") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def serve_fast_upstream(stall: bool) -> None:
    import httptools
    import uvloop

    completion = _http_response(_completion_body())
    models = _http_response(
        json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
    )
    health = _http_response(b'{"status":"ok"}')
    not_found = _http_response(b'{"error":{"message":"not found"}}', "404 Not Found")

    class Upstream(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # uvloop's transports do not subclass asyncio.Transport.
            self.transport = cast(asyncio.Transport, transport)

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                if self.transport is not None:
                    self.transport.close()

        def on_message_begin(self) -> None:
            self.url = b""

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_message_complete(self) -> None:
            assert self.transport is not None
            path = self.url.split(b"?", 1)[0]
            if path in (b"/v1/chat/completions", b"/chat/completions"):
                if stall:
                    return  # hold the connection open and never answer
                self.transport.write(completion)
            elif path in (b"/health", b"/healthz", b"/"):
                self.transport.write(health)
            elif path == b"/v1/models":
                self.transport.write(models)
            else:
                self.transport.write(not_found)
            if not self.parser.should_keep_alive():
                self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Upstream, HOST, 0, backlog=4096, reuse_address=True)
        port = server.sockets[0].getsockname()[1]
        kind = "stalled upstream" if stall else "fast upstream"
        print(f"{kind} listening on http://{HOST}:{port}", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())


# -- the open-loop generator -------------------------------------------------


@dataclass
class OpenLoopResult:
    target_rate: float
    duration_s: float
    scheduled: int = 0
    sent: int = 0
    achieved_rate: float = 0.0
    ok: int = 0
    ok_latencies_s: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    span_s: float = 0.0
    send_lag_p99_ms: float = 0.0
    send_lag_max_ms: float = 0.0
    connection_waits: int = 0
    error: str | None = None

    @property
    def goodput(self) -> float:
        return self.ok / self.span_s if self.span_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "target_rate": self.target_rate,
            "duration_s": self.duration_s,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "achieved_rate": round(self.achieved_rate, 1),
            "ok": self.ok,
            "goodput": round(self.goodput, 1),
            "ok_p50_ms": _ms(percentile(self.ok_latencies_s, 50)),
            "ok_p99_ms": _ms(percentile(self.ok_latencies_s, 99)),
            "outcomes": self.outcomes,
            "span_s": round(self.span_s, 2),
            "send_lag_p99_ms": round(self.send_lag_p99_ms, 2),
            "send_lag_max_ms": round(self.send_lag_max_ms, 2),
            "connection_waits": self.connection_waits,
            "error": self.error,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def _outcome(status: int, body: bytes) -> str:
    code = None
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        code = json.loads(body)["error"]["code"]
    return f"{status} {code}" if code else str(status)


async def open_loop(
    url: str, rate: float, duration_s: float, timeout_s: float, key: str | None, connections: int
) -> OpenLoopResult:
    """Send ``rate`` requests per second for ``duration_s`` on a fixed schedule.

    Request i is due at start + i / rate whatever happened to the ones before
    it; when the loop falls behind it sends every overdue request at once, and
    the latency of each answer is counted from when it was due, so a slow
    system cannot slow the arrivals down and hide its own queueing.
    """
    import aiohttp

    result = OpenLoopResult(target_rate=rate, duration_s=duration_s)
    total = max(1, round(rate * duration_s))
    result.scheduled = total
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = REQUEST_BODY.encode()
    outcomes: Counter[str] = Counter()
    lags: list[float] = []
    waits = 0

    async def on_queued(*_: object) -> None:
        nonlocal waits
        waits += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_queued_start.append(on_queued)
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, force_close=False)
    loop = asyncio.get_running_loop()
    last_done = 0.0

    async def one(session: aiohttp.ClientSession, due: float) -> None:
        nonlocal last_done
        try:
            async with session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
                now = loop.time()
                if response.status == 200:
                    result.ok_latencies_s.append(now - due)
                else:
                    outcomes[_outcome(response.status, payload)] += 1
        except TimeoutError:
            now = loop.time()
            outcomes["client timeout"] += 1
        except aiohttp.ClientError as error:
            now = loop.time()
            outcomes[f"client error {type(error).__name__}"] += 1
        last_done = max(last_done, now)

    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        trace_configs=[trace],
        skip_auto_headers=("User-Agent",),
    ) as session:
        tasks: set[asyncio.Task[None]] = set()
        begin = loop.time() + 0.1
        for index in range(total):
            due = begin + index / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(loop.time() - due)
            task = asyncio.create_task(one(session, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent_span = loop.time() - begin
        result.sent = total
        if tasks:
            await asyncio.wait(set(tasks))
    result.achieved_rate = total / max(sent_span, 1.0 / rate) if total > 1 else 0.0
    result.ok = len(result.ok_latencies_s)
    result.outcomes = dict(outcomes)
    result.span_s = max(last_done - begin, duration_s)
    result.send_lag_p99_ms = (percentile(lags, 99) or 0.0) * 1000.0
    result.send_lag_max_ms = max(lags, default=0.0) * 1000.0
    result.connection_waits = waits
    return result


def open_loop_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="gateway.py _openloop")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--key")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    raise_open_file_limit()

    async def main() -> OpenLoopResult:
        return await open_loop(
            args.url, args.rate, args.duration, args.timeout, args.key, args.connections
        )

    try:
        import uvloop

        result = uvloop.run(main())
    except ImportError:
        result = asyncio.run(main())
    data = result.summary()
    data["ok_latencies_s"] = result.ok_latencies_s
    args.out.write_text(json.dumps(data))


# -- the systems under test --------------------------------------------------


@dataclass(frozen=True)
class CpuPlan:
    """Which cores the load generator, the proxy under test and the upstream run on."""

    load: tuple[int, ...]
    proxy: tuple[int, ...]
    upstream: tuple[int, ...]
    pinned: bool

    @staticmethod
    def for_machine() -> CpuPlan:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2 or shutil.which("taskset") is None:
            return CpuPlan(tuple(cores), tuple(cores), tuple(cores), pinned=False)
        if len(cores) == 2:
            # The proxy under test gets a core of its own; the load generator
            # and the upstream share the other, which is why the upstream is
            # made as cheap as possible.
            return CpuPlan((cores[0],), (cores[1],), (cores[0],), pinned=True)
        return CpuPlan((cores[0],), (cores[1],), (cores[2],), pinned=True)

    def describe(self, cpus: Sequence[int] | None) -> str:
        if not self.pinned or cpus is None:
            return "any"
        return "cpu " + ",".join(str(c) for c in cpus)


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    cpus: CpuPlan
    procs: list[Managed] = field(default_factory=list)
    client_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_urlsafe(24))
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    engine_admin: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    open_files: int = 1024

    # -- process bookkeeping --

    def launch(self, name: str, argv: Sequence[str], **kwargs: Any) -> Managed:
        env = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        env.update(kwargs.pop("env", None) or {})
        managed = start(name, argv, env=env, **kwargs)
        self.procs.append(managed)
        return managed

    def stop(self, managed: Managed | None) -> None:
        if managed is None:
            return
        managed.stop()
        if managed in self.procs:
            self.procs.remove(managed)

    def stop_all(self) -> None:
        for managed in reversed(self.procs):
            with contextlib.suppress(Exception):
                managed.stop(grace=3.0)
        self.procs.clear()

    @contextlib.contextmanager
    def running(self, name: str, argv: Sequence[str], **kwargs: Any) -> Iterator[Managed]:
        managed = self.launch(name, argv, **kwargs)
        try:
            yield managed
        finally:
            self.stop(managed)

    # -- servers --

    def fast_upstream(self, stall: bool = False) -> contextlib.AbstractContextManager[Managed]:
        argv = [sys.executable, str(Path(__file__).resolve()), "_upstream"]
        if stall:
            argv.append("--stall")
        return self.running(
            "stalled upstream" if stall else "fast upstream", argv, cpus=self.cpus.upstream
        )

    def engine(
        self, *extra: str, cpus: Sequence[int] | None = None
    ) -> contextlib.AbstractContextManager[Managed]:
        argv = [sys.executable, "-m", "console", "engine", "serve", "--host", HOST, "--port", "0"]
        return self.running(
            "quell engine",
            [*argv, *extra],
            cpus=self.cpus.upstream if cpus is None else cpus,
            env={"QUELL_ENGINE_ADMIN_TOKEN": self.engine_admin},
            cwd=REPO_ROOT,
        )

    def gateway_unavailable(self) -> str | None:
        """None when ``quell gateway serve`` exists here, otherwise why not."""
        done = subprocess.run(
            [sys.executable, "-m", "console", "gateway", "serve", "--help"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            return None
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"'quell gateway serve --help' exited {done.returncode}"

    def gateway(
        self, upstream_url: str, workers: int, capacity: int, timeout_s: float
    ) -> contextlib.AbstractContextManager[Managed]:
        digest = hashlib.sha256(self.client_key.encode()).hexdigest()
        config = self.workdir / f"gateway-{workers}-{capacity}.toml"
        config.write_text(
            "[server]\n"
            f'host = "{HOST}"\n'
            "port = 0\n"
            "[queue]\n"
            f"workers = {workers}\n"
            f"capacity = {capacity}\n"
            f"timeout_s = {timeout_s}\n"
            "[[keys]]\n"
            'name = "bench"\n'
            f'sha256 = "{digest}"\n'
            'priority = "standard"\n'
            "[[upstreams]]\n"
            'name = "upstream-0"\n'
            f'url = "{upstream_url}"\n'
            "[upstream_defaults]\n"
            "read_timeout_s = 30.0\n"
        )
        argv = [sys.executable, "-m", "console", "gateway", "serve", "--config", str(config)]
        return self.running(
            "quell gateway",
            argv,
            cpus=self.cpus.proxy,
            env={"QUELL_GATEWAY_ADMIN_TOKEN": self.admin_token},
            cwd=REPO_ROOT,
        )

    def nginx(self, upstream_url: str) -> contextlib.AbstractContextManager[Managed]:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.workdir))
        prefix.chmod(0o755)
        port = free_port()
        upstream = upstream_url.removeprefix("http://").rstrip("/")
        # One worker, like the single process the Python proxies get; keepalive
        # to the upstream so nginx does not pay a connect per request either.
        # Connections and open files as many as this process may grant: without
        # admission control every overload request stays open in nginx twice
        # (client and upstream), and running out is part of what it shows.
        (prefix / "nginx.conf").write_text(
            f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {self.open_files};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {self.open_files}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 120s;
        }}
    }}
}}
"""
        )
        argv = [
            nginx,
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-e",
            str(prefix / "error.log"),
        ]
        managed_cm = self.running(
            "nginx", argv, cpus=self.cpus.proxy, ready=lambda: port_open(HOST, port)
        )
        return _with_url(managed_cm, f"http://{HOST}:{port}", prefix / "error.log")

    def litellm(self, upstream_url: str) -> contextlib.AbstractContextManager[Managed]:
        port = free_port()
        config = self.workdir / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: {upstream_url}/v1\n"
            "      api_key: dummy\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  set_verbose: false\n"
            "  json_logs: false\n"
            "  turn_off_message_logging: true\n"
            "  drop_params: true\n"
            "  num_retries: 0\n"
            "  request_timeout: 30\n"
            "  callbacks: []\n"
            "  success_callback: []\n"
            "  failure_callback: []\n"
            "general_settings:\n"
            "  disable_spend_logs: true\n"
            "  disable_error_logs: true\n"
            "  background_health_checks: false\n"
        )
        # uvicorn's access log costs LiteLLM a fifth of its throughput; the
        # other proxies log nothing per request either.
        log_config = self.workdir / "litellm-logging.json"
        log_config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "disable_existing_loggers": False,
                    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
                    "loggers": {
                        "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
                        "uvicorn": {"level": "WARNING", "handlers": ["stderr"]},
                    },
                }
            )
        )
        argv = [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--log_config",
            str(log_config),
            "--config",
            str(config),
            "--host",
            HOST,
            "--port",
            str(port),
            "--num_workers",
            "1",
            "--telemetry",
            "False",
        ]
        env = {
            "LITELLM_MODE": "PRODUCTION",  # no .env loading
            "LITELLM_LOG": "ERROR",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from the internet at start
            "DISABLE_ADMIN_UI": "True",
        }
        url = f"http://{HOST}:{port}"
        managed_cm = self.running(
            "litellm",
            argv,
            cpus=self.cpus.proxy,
            env=env,
            cwd=self.workdir,
            ready=lambda: http_ok(f"{url}/health/liveliness"),
            ready_timeout=180.0,
        )
        return _with_url(managed_cm, url)


@contextlib.contextmanager
def _with_url(
    inner: contextlib.AbstractContextManager[Managed], url: str, log_file: Path | None = None
) -> Iterator[Managed]:
    with inner as managed:
        managed.url = url
        managed.log_file = log_file
        yield managed


LITELLM_SETTINGS_NOTE = (
    "LiteLLM settings: LITELLM_MODE=PRODUCTION, LITELLM_LOG=ERROR, "
    "LITELLM_LOCAL_MODEL_COST_MAP=True, --telemetry False, --num_workers 1, uvicorn access "
    "log off (--log_config); "
    "litellm_settings: telemetry/set_verbose/json_logs off, turn_off_message_logging, "
    "no callbacks, num_retries 0; general_settings: disable_spend_logs, disable_error_logs, "
    "no background health checks; no master key and no database, so no auth or spend tracking."
)


def ensure_litellm() -> str | None:
    """None when LiteLLM's proxy can be started, otherwise why not."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return None
    log(f"installing {LITELLM_REQUIREMENT} into {LITELLM_VENV} (once; a few minutes)")
    try:
        if not (LITELLM_VENV / "bin" / "python").exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(LITELLM_VENV)],
                check=True,
                capture_output=True,
                text=True,
                timeout=300,
            )
            # Keep the venv out of git without touching the project's .gitignore.
            (LITELLM_VENV / ".gitignore").write_text("*\n")
        done = subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM_REQUIREMENT],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"cannot create {LITELLM_VENV}: {error}"
    if done.returncode != 0 or not binary.exists():
        lines = [
            line
            for line in (done.stderr + done.stdout).splitlines()
            if line.strip() and not line.startswith("WARNING: Location")
        ]
        return f"pip install {LITELLM_REQUIREMENT} failed: " + " / ".join(lines[-2:])[:300]
    return None


# -- part 1: proxy throughput ------------------------------------------------


@dataclass
class Row:
    name: str
    cores: str
    result: WrkResult | None = None
    runs: list[float] = field(default_factory=list)
    note: str = ""


def measure_wrk(
    bench: Bench,
    url: str,
    script: Path,
    cpus: Sequence[int],
    *,
    connections: int | None = None,
    runs: int | None = None,
    duration: float | None = None,
    warmup: bool = True,
) -> tuple[WrkResult, list[float]]:
    args = bench.args
    connections = connections or args.connections
    runs = runs or args.runs
    duration = duration or args.duration
    threads = max(1, min(len(cpus), connections))
    if warmup:
        run_wrk(url, script, connections=connections, duration_s=3, threads=threads, cpus=cpus)
    results: list[WrkResult] = []
    for index in range(runs):
        result = run_wrk(
            url, script, connections=connections, duration_s=duration, threads=threads, cpus=cpus
        )
        log(
            f"    run {index + 1}/{runs}: {result.requests_per_s:,.0f} req/s, "
            f"p99 {fmt_num(result.p99_ms, 1)} ms, non-2xx {result.non_2xx}, "
            f"socket errors {result.socket_errors}, timeouts {result.timeouts}"
            + (f", error: {result.error}" if result.error else "")
        )
        results.append(result)
    return median_wrk(results), [r.requests_per_s for r in results]


def check_answer(url: str, key: str | None) -> str | None:
    """None when one request through ``url`` gets a chat completion, otherwise what came back."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        status, body = http_request(url, REQUEST_BODY.encode(), headers, "POST", timeout=30)
    except OSError as error:
        return f"request failed: {error}"
    if status != 200:
        return f"status {status}: {body[:200]!r}"
    try:
        json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not a chat completion: {body[:200]!r}"
    return None


def part_throughput(bench: Bench, gateway_reason: str | None) -> list[Row]:
    args = bench.args
    cpus = bench.cpus
    script = write_wrk_script(
        bench.workdir / "post.lua",
        "POST",
        REQUEST_BODY,
        {"Content-Type": "application/json", "Authorization": f"Bearer {bench.client_key}"},
    )
    rows: list[Row] = []
    log("part 1: proxy throughput")

    # The engine as it is, for the record of why a fixed-response upstream is used.
    log("  quell engine alone (zero-cost settings)")
    with bench.engine(
        "--decode-step-ms",
        "0",
        "--decode-ms-per-seq",
        "0",
        "--prefill-ms-per-token",
        "0",
        "--slots",
        "1024",
        "--max-waiting",
        "8192",
    ) as engine:
        assert engine.url is not None
        engine_row = Row("quell engine alone (zero cost)", cpus.describe(cpus.upstream))
        engine_row.result, engine_row.runs = measure_wrk(
            bench, engine.url + CHAT_PATH, script, cpus.proxy
        )
        engine_row.note = f"wrk on {cpus.describe(cpus.proxy)}"
        rows.append(engine_row)
        if args.upstream == "engine":
            rows.extend(_proxies_behind(bench, script, gateway_reason, engine))
            return rows
    rows.extend(_proxies_behind(bench, script, gateway_reason, None))
    return rows


def _proxies_behind(
    bench: Bench, script: Path, gateway_reason: str | None, engine: Managed | None
) -> list[Row]:
    args = bench.args
    cpus = bench.cpus
    rows: list[Row] = []
    stack = contextlib.ExitStack()
    with stack:
        if engine is None:
            upstream = stack.enter_context(bench.fast_upstream())
            assert upstream.url is not None
            log("  fast upstream alone")
            ref = Row("fast upstream alone (reference)", cpus.describe(cpus.upstream))
            ref.result, ref.runs = measure_wrk(bench, upstream.url + CHAT_PATH, script, cpus.proxy)
            ref.note = f"wrk on {cpus.describe(cpus.proxy)}"
            rows.append(ref)
        else:
            upstream = engine
        assert upstream.url is not None
        upstream_url = upstream.url
        where_load = cpus.describe(cpus.load)

        def proxy_row(name: str, managed: Managed, key: str | None) -> Row:
            row = Row(name, cpus.describe(cpus.proxy))
            assert managed.url is not None
            problem = check_answer(managed.url + CHAT_PATH, key)
            if problem is not None:
                row.note = f"not measured: {problem}"
                return row
            row.result, row.runs = measure_wrk(bench, managed.url + CHAT_PATH, script, cpus.load)
            row.note = f"wrk on {where_load}"
            return row

        name = "quell gateway"
        if gateway_reason is not None:
            rows.append(Row(name, "-", note=f"quell gateway not available: {gateway_reason}"))
        else:
            log("  quell gateway")
            try:
                with bench.gateway(
                    upstream_url, args.gateway_workers, args.gateway_capacity, 5.0
                ) as gateway:
                    row = proxy_row(name, gateway, bench.client_key)
                    row.note += (
                        f"; workers {args.gateway_workers}, capacity {args.gateway_capacity}"
                    )
                    rows.append(row)
            except RuntimeError as error:
                rows.append(Row(name, "-", note=f"could not start: {_first_line(error)}"))

        log("  nginx proxy_pass")
        try:
            with bench.nginx(upstream_url) as nginx:
                rows.append(proxy_row("nginx proxy_pass", nginx, bench.client_key))
        except RuntimeError as error:
            rows.append(Row("nginx proxy_pass", "-", note=f"could not start: {_first_line(error)}"))

        name = "LiteLLM proxy"
        if args.skip_litellm:
            rows.append(Row(name, "-", note="skipped (--skip-litellm)"))
        else:
            reason = ensure_litellm()
            if reason is not None:
                rows.append(Row(name, "-", note=f"not available: {reason}"))
            else:
                log("  LiteLLM proxy (starting takes a while)")
                try:
                    with bench.litellm(upstream_url) as litellm:
                        rows.append(proxy_row(name, litellm, bench.client_key))
                except RuntimeError as error:
                    rows.append(Row(name, "-", note=f"could not start: {_first_line(error)}"))
    return rows


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # A process that died says why on its last line, not the first.
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"[:400]


# -- part 2: rejection path ---------------------------------------------------


@dataclass
class RejectResult:
    cores: str = "-"
    result: WrkResult | None = None
    runs: list[float] = field(default_factory=list)
    sample: str = ""
    note: str = ""


def hold_worker(url: str, key: str) -> socket.socket:
    """Send one request and leave it open, so it holds the gateway's only worker."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    body = REQUEST_BODY.encode()
    sock.sendall(
        (
            f"POST {CHAT_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    return sock


def part_rejection(bench: Bench, gateway_reason: str | None) -> RejectResult:
    out = RejectResult()
    if gateway_reason is not None:
        out.note = f"quell gateway not available: {gateway_reason}"
        return out
    log("part 2: rejection path")
    script = bench.workdir / "post.lua"
    cpus = bench.cpus
    try:
        with (
            bench.fast_upstream(stall=True) as stalled,
            bench.gateway(stalled.url or "", workers=1, capacity=0, timeout_s=60.0) as gateway,
        ):
            assert gateway.url is not None
            plug = hold_worker(gateway.url, bench.client_key)
            try:
                headers = {
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {bench.client_key}",
                }
                status, body = 0, b""
                for _ in range(50):  # the plug must reach its worker first
                    status, body = http_request(
                        gateway.url + CHAT_PATH, REQUEST_BODY.encode(), headers, "POST", 5
                    )
                    if status != 200:
                        break
                    time.sleep(0.05)
                out.sample = _outcome(status, body)
                if "works_queue_full" not in out.sample:
                    out.note = f"expected 503 works_queue_full, got {out.sample}: {body[:200]!r}"
                    return out
                out.result, out.runs = measure_wrk(
                    bench, gateway.url + CHAT_PATH, script, cpus.load
                )
                out.cores = cpus.describe(cpus.proxy)
                r = out.result
                rejected = r.non_2xx
                out.note = (
                    f"wrk on {cpus.describe(cpus.load)}; workers 1, capacity 0, the one "
                    "worker held by a request to a stalled upstream; "
                    f"non-2xx {rejected:,} of {r.requests:,}"
                )
            finally:
                plug.close()
    except RuntimeError as error:
        out.note = f"could not start: {_first_line(error)}"
    return out


# -- part 3: overload ---------------------------------------------------------


@dataclass
class OverloadSetup:
    capacity_model: float = 0.0
    capacity_direct: float | None = None
    capacity_gateway: float | None = None
    engine_p99_ms: float | None = None
    engine_args: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class OverloadRow:
    proxy: str
    level: float
    target_rate: float
    data: dict[str, Any] | None = None
    rss_start: int | None = None
    rss_end: int | None = None
    note: str = ""


def wait_engine_idle(url: str, token: str, timeout: float = 45.0) -> str | None:
    """Wait until the engine has nothing running or waiting; None once it has, else its state."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = http_request(
                url + "/admin/state", headers={"Authorization": f"Bearer {token}"}, timeout=2
            )
            state = json.loads(body)
            if status == 200 and state["running"] == 0 and state["waiting"] == 0:
                return None
            last = (
                f"running {state['running']}, waiting {state['waiting']}, "
                f"kv_usage {state.get('kv_usage')}, completed {state.get('completed')}"
            )
        except (OSError, ValueError, KeyError) as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(0.5)
    return last


def run_open_loop(
    bench: Bench, url: str, rate: float, duration: float, key: str | None
) -> dict[str, Any]:
    args = bench.args
    out = bench.workdir / f"openloop-{time.monotonic_ns()}.json"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_openloop",
        "--url",
        url,
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--timeout",
        str(args.client_timeout),
        "--connections",
        str(args.client_connections),
        "--out",
        str(out),
    ]
    if key:
        argv += ["--key", key]
    managed = bench.launch("open-loop client", argv, cpus=bench.cpus.load, ready=None)
    try:
        managed.process.wait(duration + args.client_timeout + 60)
    except subprocess.TimeoutExpired:
        return {"error": "open-loop client did not finish in time"}
    finally:
        bench.stop(managed)
    if not out.exists():
        return {"error": f"open-loop client failed: {managed.tail(5).strip()}"}
    data: dict[str, Any] = json.loads(out.read_text())
    data.pop("ok_latencies_s", None)
    return data


def part_overload(
    bench: Bench, gateway_reason: str | None
) -> tuple[OverloadSetup, list[OverloadRow]]:
    args = bench.args
    cpus = bench.cpus
    log("part 3: overload")
    from inference.engine.cost_model import CostModel

    cost = CostModel(
        prefill_ms_per_token=0.0, decode_step_ms=args.engine_step_ms, decode_ms_per_seq=0.0
    )
    setup = OverloadSetup()
    setup.capacity_model = cost.predicted_throughput(args.engine_slots, 65536, 8, MAX_TOKENS)
    setup.engine_args = [
        "--slots",
        str(args.engine_slots),
        "--decode-step-ms",
        str(args.engine_step_ms),
        "--decode-ms-per-seq",
        "0",
        "--prefill-ms-per-token",
        "0",
        # Far more than any level sends in its window: without admission
        # control in front, the engine's own queue must not be it either.
        "--max-waiting",
        "1000000",
    ]
    capacity = setup.capacity_model
    duration = args.overload_duration
    levels = [float(x) for x in args.levels.split(",")]
    rows: list[OverloadRow] = []
    script = bench.workdir / "post.lua"
    # On two cores the engine shares the proxy's core: it needs little CPU at
    # C, and the load generator's core must stay free to keep its schedule.
    engine_cpus = cpus.proxy if len(set(cpus.load + cpus.proxy + cpus.upstream)) < 3 else None
    engine_where = cpus.describe(engine_cpus or cpus.upstream)
    setup.notes.append(
        f"engine on {engine_where}, proxy on {cpus.describe(cpus.proxy)}, open-loop client on "
        f"{cpus.describe(cpus.load)}"
    )

    proxies = ["quell gateway", "nginx proxy_pass (no admission control)"]
    chosen = {p.strip() for p in args.overload_proxies.split(",")}
    for proxy in proxies:
        if proxy.split()[0] not in chosen:
            continue
        if proxy == "quell gateway" and gateway_reason is not None:
            for level in levels:
                reason = f"quell gateway not available: {gateway_reason}"
                rows.append(OverloadRow(proxy, level, level * capacity, note=reason))
            continue
        log(f"  {proxy}")
        try:
            with contextlib.ExitStack() as stack:
                engine = stack.enter_context(bench.engine(*setup.engine_args, cpus=engine_cpus))
                assert engine.url is not None
                if setup.capacity_direct is None:
                    # The engine's own service time: as many connections as slots.
                    service, _ = measure_wrk(
                        bench,
                        engine.url + CHAT_PATH,
                        script,
                        cpus.load,
                        connections=args.engine_slots,
                        runs=1,
                        duration=5,
                        warmup=False,
                    )
                    setup.engine_p99_ms = service.p99_ms
                    wait_engine_idle(engine.url, bench.engine_admin)
                    # Its capacity: twice the slots, so a slot never waits for a request.
                    direct, _ = measure_wrk(
                        bench,
                        engine.url + CHAT_PATH,
                        script,
                        cpus.load,
                        connections=2 * args.engine_slots,
                        runs=1,
                        duration=5,
                        warmup=False,
                    )
                    setup.capacity_direct = direct.requests_per_s
                    wait_engine_idle(engine.url, bench.engine_admin)
                if proxy == "quell gateway":
                    front = stack.enter_context(
                        bench.gateway(
                            engine.url,
                            args.overload_workers,
                            args.overload_capacity,
                            args.overload_timeout,
                        )
                    )
                else:
                    front = stack.enter_context(bench.nginx(engine.url))
                # nginx passes the key through and the engine ignores it, so
                # both proxies see byte-identical requests.
                key = bench.client_key
                assert front.url is not None
                problem = check_answer(front.url + CHAT_PATH, key)
                if problem is not None:
                    raise RuntimeError(problem)
                if proxy == "quell gateway":
                    saturated, _ = measure_wrk(
                        bench,
                        front.url + CHAT_PATH,
                        script,
                        cpus.load,
                        connections=args.overload_workers + args.engine_slots,
                        runs=1,
                        duration=5,
                        warmup=False,
                    )
                    setup.capacity_gateway = saturated.requests_per_s
                    wait_engine_idle(engine.url, bench.engine_admin)
                for level in levels:
                    rate = level * capacity
                    row = OverloadRow(proxy, level, rate)
                    row.rss_start = rss_bytes(front.pid)
                    front_seen, engine_seen = len(front.log_lines()), len(engine.log_lines())
                    log(f"    {level:g}x C = {rate:.0f} req/s for {duration:g} s")
                    row.data = run_open_loop(bench, front.url + CHAT_PATH, rate, duration, key)
                    row.rss_end = rss_bytes(front.pid)
                    d = row.data
                    log(
                        f"      goodput {d.get('goodput')}/s, ok p99 {d.get('ok_p99_ms')} ms, "
                        f"outcomes {d.get('outcomes')}, lag p99 {d.get('send_lag_p99_ms')} ms"
                    )
                    rows.append(row)
                    busy = wait_engine_idle(engine.url, bench.engine_admin, 60.0)
                    notes = []
                    if busy is not None:
                        notes.append(f"engine still busy 60 s after the level ({busy})")
                    # Error answers are easier to read next to what the servers logged.
                    for who, server, seen in (
                        ("proxy log", front, front_seen),
                        ("engine log", engine, engine_seen),
                    ):
                        problems = summarize_problems(server.log_lines()[seen:])
                        if problems:
                            notes.append(f"{who}: {problems}")
                    row.note = "; ".join(notes)
        except RuntimeError as error:
            for level in levels:
                if not any(r.proxy == proxy and r.level == level for r in rows):
                    reason = f"could not run: {_first_line(error)}"
                    rows.append(OverloadRow(proxy, level, level * capacity, note=reason))
    return setup, rows


# -- output ---------------------------------------------------------------------


def throughput_table(rows: list[Row]) -> str:
    nginx = next((r for r in rows if r.name.startswith("nginx") and r.result), None)
    table = []
    for row in rows:
        r = row.result
        ratio = ""
        if r is not None and nginx is not None and nginx.result and nginx.result.requests_per_s:
            ratio = f"{r.requests_per_s / nginx.result.requests_per_s:.2f}"
        errors = "" if r is None else f"{r.non_2xx + r.socket_errors + r.timeouts:,}"
        runs = " / ".join(f"{x:,.0f}" for x in row.runs)
        table.append(
            [
                row.name,
                row.cores,
                fmt_num(r.requests_per_s) if r else "-",
                fmt_num(r.p50_ms, 2) if r else "-",
                fmt_num(r.p99_ms, 2) if r else "-",
                errors,
                ratio,
                runs,
                row.note,
            ]
        )
    return markdown_table(
        [
            "system",
            "cores",
            "req/s (median)",
            "p50 ms",
            "p99 ms",
            "errors",
            "vs nginx",
            "runs req/s",
            "notes",
        ],
        table,
    )


def rejection_table(out: RejectResult) -> str:
    r = out.result
    return markdown_table(
        ["system", "cores", "rejections/s (median)", "p50 ms", "p99 ms", "answer", "runs", "notes"],
        [
            [
                "quell gateway, every request rejected",
                out.cores,
                fmt_num(r.requests_per_s) if r else "-",
                fmt_num(r.p50_ms, 2) if r else "-",
                fmt_num(r.p99_ms, 2) if r else "-",
                out.sample or "-",
                " / ".join(f"{x:,.0f}" for x in out.runs),
                out.note,
            ]
        ],
    )


def _outcomes_text(outcomes: dict[str, int]) -> str:
    if not outcomes:
        return "none"
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]))


def overload_table(setup: OverloadSetup, rows: list[OverloadRow]) -> str:
    capacity = setup.capacity_model
    table = []
    for row in sorted(rows, key=lambda r: (r.level, not r.proxy.startswith("quell"))):
        d = row.data or {}
        if row.data is None or d.get("error"):
            table.append(
                [
                    f"{row.level:g}x",
                    row.proxy,
                    fmt_num(row.target_rate),
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    row.note or d.get("error", ""),
                ]
            )
            continue
        goodput = float(d["goodput"])
        rss = f"{fmt_mib(row.rss_start)} → {fmt_mib(row.rss_end)}"
        note = row.note
        if d.get("connection_waits"):
            note = (
                note + "; " if note else ""
            ) + f"client waited for a connection {d['connection_waits']:,}x"
        table.append(
            [
                f"{row.level:g}x",
                row.proxy,
                fmt_num(row.target_rate),
                fmt_num(d["achieved_rate"], 1),
                fmt_num(goodput, 1),
                f"{100 * goodput / capacity:.0f}%" if capacity else "-",
                fmt_num(d.get("ok_p50_ms"), 0),
                fmt_num(d.get("ok_p99_ms"), 0),
                _outcomes_text(d.get("outcomes", {})),
                rss,
                note,
            ]
        )
    return markdown_table(
        [
            "load",
            "proxy",
            "offered req/s",
            "achieved req/s",
            "goodput req/s",
            "of C",
            "ok p50 ms",
            "ok p99 ms",
            "not ok (status code: count)",
            "proxy RSS MiB start → end",
            "notes",
        ],
        table,
    )


def goals(
    rows: list[Row],
    reject: RejectResult | None,
    setup: OverloadSetup | None,
    overload: list[OverloadRow],
    args: argparse.Namespace,
) -> list[str]:
    lines: list[str] = []

    def rps(prefix: str) -> float | None:
        row = next((r for r in rows if r.name.startswith(prefix)), None)
        return row.result.requests_per_s if row and row.result else None

    quell, nginx, litellm = rps("quell gateway"), rps("nginx"), rps("LiteLLM")
    if rows:
        if quell is None:
            lines.append("- quell throughput: not measured")
        else:
            ok = "PASS" if quell >= THROUGHPUT_GOAL else "FAIL"
            lines.append(f"- {ok} quell gateway {quell:,.0f} req/s (goal ≥ {THROUGHPUT_GOAL:,.0f})")
            if litellm:
                factor = quell / litellm
                ok = "PASS" if factor >= LITELLM_FACTOR_GOAL else "FAIL"
                lines.append(
                    f"- {ok} quell / LiteLLM = {factor:.1f}x (goal ≥ {LITELLM_FACTOR_GOAL:g}x)"
                )
            else:
                lines.append("- quell / LiteLLM: LiteLLM not measured")
            if nginx:
                lines.append(f"- quell / nginx = {quell / nginx:.2f}")
    if reject is not None:
        if reject.result is None:
            lines.append("- rejection path: not measured")
        else:
            value = reject.result.requests_per_s
            ok = "PASS" if value >= REJECTION_GOAL else "FAIL"
            lines.append(
                f"- {ok} rejection path {value:,.0f} works_queue_full/s "
                f"(goal ≥ {REJECTION_GOAL:,.0f})"
            )
    if setup is not None:
        bound = None
        if setup.engine_p99_ms is not None:
            bound = args.overload_timeout * 1000.0 + setup.engine_p99_ms
        for row in overload:
            if not row.proxy.startswith("quell") or not row.data or row.data.get("error"):
                continue
            d = row.data
            share = float(d["goodput"]) / setup.capacity_model
            ok = "PASS" if share >= GOODPUT_GOAL else "FAIL"
            parts = [f"- {ok} {row.level:g}x C: goodput {100 * share:.0f}% of C (goal ≥ 95%)"]
            p99 = d.get("ok_p99_ms")
            if bound is not None and p99 is not None:
                ok = "PASS" if p99 <= bound else "FAIL"
                parts.append(f"{ok} ok p99 {p99:,.0f} ms (goal ≤ {bound:,.0f} ms)")
            if row.rss_start and row.rss_end:
                growth = (row.rss_end - row.rss_start) / (1 << 20)
                ok = "PASS" if growth <= 20 else "FAIL"
                parts.append(f"{ok} RSS {growth:+.1f} MiB (goal flat: ≤ +20 MiB)")
            lines.append("; ".join(parts))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per row; the median counts")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument(
        "--overload-duration", type=float, default=20.0, help="seconds per overload level"
    )
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--parts",
        default="throughput,reject,overload",
        help="comma-separated subset of throughput, reject, overload",
    )
    parser.add_argument(
        "--upstream",
        choices=("fast", "engine"),
        default="fast",
        help="upstream for parts 1-2: the fixed-response server, or the zero-cost engine",
    )
    group = parser.add_argument_group("gateway for part 1")
    group.add_argument("--gateway-workers", type=int, default=128, help="gateway workers")
    group.add_argument("--gateway-capacity", type=int, default=1024, help="gateway queue capacity")
    group = parser.add_argument_group("overload (part 3)")
    group.add_argument("--levels", default="1,2,5", help="offered load as multiples of C")
    group.add_argument("--engine-slots", type=int, default=24, help="engine --slots")
    group.add_argument("--engine-step-ms", type=float, default=10.0, help="engine --decode-step-ms")
    group.add_argument(
        "--overload-workers",
        type=int,
        default=32,
        help="gateway workers; a few more than the engine's slots keep every slot busy",
    )
    group.add_argument("--overload-capacity", type=int, default=256, help="gateway queue capacity")
    group.add_argument(
        "--overload-timeout", type=float, default=2.0, help="gateway queue timeout, seconds"
    )
    group.add_argument(
        "--overload-proxies", default="quell,nginx", help="comma-separated subset of quell, nginx"
    )
    group.add_argument(
        "--client-timeout", type=float, default=30.0, help="open-loop per-request timeout, s"
    )
    group.add_argument(
        "--client-connections",
        type=int,
        default=16000,
        help="open-loop connection limit; above what 5x C keeps in flight without admission "
        "control, so the client never throttles its own schedule",
    )
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"throughput", "reject", "overload"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    if (reason := wrk_available()) is not None and parts & {"throughput", "reject"}:
        parser.error(reason)

    open_files = raise_open_file_limit()
    cpus = CpuPlan.for_machine()
    facts = machine_facts()
    speed_before = python_speed_ns(cpus.proxy)
    results: dict[str, Any] = {
        "machine": facts,
        "cpu_plan": dict(cpus.__dict__),
        "args": {**vars(args), "json": str(args.json) if args.json else None},
    }

    with tempfile.TemporaryDirectory(prefix="quell-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        bench = Bench(args, workdir, cpus, open_files=open_files)
        write_wrk_script(
            workdir / "post.lua",
            "POST",
            REQUEST_BODY,
            {"Content-Type": "application/json", "Authorization": f"Bearer {bench.client_key}"},
        )

        def interrupted(signum: int, _frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupted)
        rows: list[Row] = []
        reject: RejectResult | None = None
        setup: OverloadSetup | None = None
        overload: list[OverloadRow] = []
        stopped_early = False
        contention: dict[str, float | None] = {}
        try:
            gateway_reason = bench.gateway_unavailable()
            if gateway_reason:
                log(f"quell gateway not available: {gateway_reason}")
            if "throughput" in parts:
                before = cpu_snapshot()
                rows = part_throughput(bench, gateway_reason)
                contention["1. proxy throughput"] = others_cores(before, cpu_snapshot())
            if "reject" in parts:
                before = cpu_snapshot()
                reject = part_rejection(bench, gateway_reason)
                contention["2. rejection path"] = others_cores(before, cpu_snapshot())
            if "overload" in parts:
                before = cpu_snapshot()
                setup, overload = part_overload(bench, gateway_reason)
                contention["3. overload"] = others_cores(before, cpu_snapshot())
        except KeyboardInterrupt:
            log("interrupted; stopping every process; the parts that finished follow")
            stopped_early = True
        finally:
            bench.stop_all()

    print("## Machine\n")
    print(
        f"- CPU: {facts['cpu_model']}, {facts['logical_cores']} logical cores; "
        f"memory {facts.get('memory_gib', '?')} GiB; kernel {facts['kernel']}; "
        f"Python {facts['python']}; load average at start {facts['load_average']}"
    )
    pin = "pinned with taskset" if cpus.pinned else "not pinned"
    print(
        f"- cores ({pin}): load generators on {cpus.describe(cpus.load)}, proxy under test on "
        f"{cpus.describe(cpus.proxy)}, upstream on {cpus.describe(cpus.upstream)}"
    )
    speed_after = python_speed_ns(cpus.proxy)
    results["python_loop_ns"] = {"before": speed_before, "after": speed_after}
    print(
        f"- CPU speed check on {cpus.describe(cpus.proxy)}: a plain Python loop took "
        f"{fmt_num(speed_before, 1)} ns/iteration before the run and {fmt_num(speed_after, 1)} "
        "after (lower is faster; Python figures scale with it when the host is busy)"
    )
    print(f"- request: POST {CHAT_PATH} {REQUEST_BODY}")
    if contention:
        # This machine may be shared; a figure taken while something else ran is low.
        used = ", ".join(f"{part} {fmt_num(cores, 2)}" for part, cores in contention.items())
        print(
            f"- cores used by other processes during each part (0 on a quiet machine): {used}; "
            f"load average at the end {load_average()}"
        )
        results["contention_cores"] = contention
    if rows:
        print(
            f"\n## 1. Proxy throughput (wrk -t{len(cpus.load)} -c{args.connections}, "
            f"median of {args.runs} x {args.duration:g} s)\n"
        )
        upstream = (
            "zero-cost quell engine"
            if args.upstream == "engine"
            else ("fixed-response server (uvloop + httptools) inside the bench")
        )
        print(f"Upstream for all proxies: {upstream}; one process each for the proxies.\n")
        print(throughput_table(rows))
        if any(r.name == "LiteLLM proxy" and r.result for r in rows):
            print(f"\n{LITELLM_SETTINGS_NOTE}")
        results["throughput"] = [
            {
                "name": r.name,
                "cores": r.cores,
                "note": r.note,
                "runs": r.runs,
                "median": r.result.as_dict() if r.result else None,
            }
            for r in rows
        ]
    if reject is not None:
        print(f"\n## 2. Rejection path (wrk -c{args.connections}, median of {args.runs})\n")
        print(rejection_table(reject))
        results["reject"] = {
            "cores": reject.cores,
            "sample": reject.sample,
            "note": reject.note,
            "runs": reject.runs,
            "median": reject.result.as_dict() if reject.result else None,
        }
    if setup is not None:
        c = setup.capacity_model
        print(f"\n## 3. Overload (open-loop, {args.overload_duration:g} s per level)\n")
        print(
            f"- engine: {' '.join(setup.engine_args)}; requests of {MAX_TOKENS} tokens "
            f"→ C = slots / (max_tokens × step) = {args.engine_slots} / "
            f"({MAX_TOKENS} × {args.engine_step_ms:g} ms) = {c:.0f} req/s (cost model)"
        )
        print(
            f"- measured with wrk at saturation: engine direct {fmt_num(setup.capacity_direct)} "
            f"req/s (-c{2 * args.engine_slots}), through the gateway "
            f"{fmt_num(setup.capacity_gateway)} req/s; engine's own p99 at {args.engine_slots} "
            f"connections (no queueing) {fmt_num(setup.engine_p99_ms)} ms"
        )
        print(
            f"- quell gateway: workers {args.overload_workers}, capacity "
            f"{args.overload_capacity}, queue timeout {args.overload_timeout:g} s; nginx: "
            "proxy_pass with upstream keepalive, no limits"
        )
        print(
            f"- client: aiohttp, one process, up to {args.client_connections:,} connections, "
            f"{args.client_timeout:g} s timeout per request, evenly spaced arrivals, latency "
            "from the scheduled send time; goodput = 200 answers / (first send → last answer, "
            "rejection or time-out)"
        )
        print(
            f"- open files per process: {open_files:,} (the hard limit here); without admission "
            "control nginx holds two per request in flight (client and upstream)"
        )
        for note in setup.notes:
            print(f"- {note}")
        print()
        print(overload_table(setup, overload))
        results["overload"] = {
            "setup": setup.__dict__,
            "rows": [
                {
                    "proxy": r.proxy,
                    "level": r.level,
                    "target_rate": r.target_rate,
                    "rss_start": r.rss_start,
                    "rss_end": r.rss_end,
                    "note": r.note,
                    **(r.data or {}),
                }
                for r in overload
            ],
        }
    lines = goals(rows, reject, setup, overload, args)
    if lines:
        print("\n## Goals\n")
        print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 130 if stopped_early else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_upstream":
        serve_fast_upstream(stall="--stall" in sys.argv[2:])
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "_openloop":
        open_loop_main(sys.argv[2:])
        sys.exit(0)
    sys.exit(main())
