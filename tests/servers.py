"""Start quell's own servers as real processes on 127.0.0.1 and stop them.

Every server prints ``<name> listening on http://HOST:PORT`` once it is
ready; binding port 0 lets the kernel pick a free port, so tests never race
each other for one.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

LISTENING = " listening on "


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 5.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def quell_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "console", *args]


def _pump(stream: object, lines: queue.Queue[str | None], sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)
        lines.put(line)
    lines.put(None)


@contextmanager
def running(
    argv: Sequence[str], env: Mapping[str, str] | None = None, ready_timeout: float = 15.0
) -> Iterator[RunningServer]:
    """Run ``argv`` until it prints its listening line; stop it afterwards."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
    )
    output: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines, output), daemon=True).start()
    deadline = time.monotonic() + ready_timeout
    url = None
    try:
        while url is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{argv} not ready in {ready_timeout}s:\n{''.join(output)}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{argv} exited early:\n{''.join(output)}")
            if LISTENING in line:
                url = line.split(LISTENING, 1)[1].strip()
        server = RunningServer(url, process, output)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


FAST_ENGINE = (
    "--decode-step-ms", "1", "--decode-ms-per-seq", "0", "--prefill-ms-per-token", "0",
)  # fmt: skip


@contextmanager
def engine(
    *args: str,
    admin_token: str | None = "engine-admin-secret",
    env: Mapping[str, str] | None = None,
) -> Iterator[RunningServer]:
    extra = dict(env or {})
    if admin_token is not None:
        extra["QUELL_ENGINE_ADMIN_TOKEN"] = admin_token
    with running(quell_command("engine", "serve", "--port", "0", *args), extra) as server:
        yield server


def metric(server: RunningServer, name: str, **labels: str) -> float:
    """The sum of a server's samples named ``name`` whose labels include ``labels``."""
    text = httpx.get(f"{server.url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
