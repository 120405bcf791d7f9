"""Benchmark the console: time to the first frame, CPU, and bytes written to the terminal.

`quell console` runs on a pseudo-terminal of 80x24, what a small SSH
window gives; this script reads and counts everything it writes.

1. First frame: from the command's start to the first complete frame with
   data, the one holding the verdict banner (" HEALTHY " or " IMBALANCE "),
   which is drawn only once the first tick has been read back from the
   store. The console collects the lab in-process. Median of --starts.
   Goal: under 1.0 s.
2. Idle: `--replay` of the store recorded in 3, paused: nothing changes,
   so this is what the console costs doing nothing. Goal: under 3% of a core.
3. Following four targets at 1 Hz: a lab of a gateway and three engine
   replicas (four HTTP targets, plus the host, the GPU source and the
   gateway's access log), steady traffic from `quell load`, the console
   collecting in-process and refreshing once a second. Its CPU includes its
   collector. Goal: under 8% of a core. Bytes per second written to the
   terminal over the same run.
4. Attached: the same lab and traffic with `quell collect` writing the store
   and the console only reading it: the console's own share.

CPU is utime + stime of the console's process (every thread) from
/proc/<pid>/stat over --duration seconds, after a warm-up.

    python bench/console.py [--duration 60] [--starts 5]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pty
import select
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import machine_facts, markdown_table, median  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_S = 5.0
MARKERS = (b" HEALTHY ", b" IMBALANCE ")
SIZE = (80, 24)


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def quell(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextlib.contextmanager
def lab(state_dir: Path, replicas: int) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    env = {**os.environ, "QUELL_STATE_DIR": str(state_dir)}
    started = quell("lab", "up", "--detach", "--replicas", str(replicas), env=env)
    if started.returncode != 0:
        raise SystemExit(f"the lab did not start:\n{started.stdout}{started.stderr}")
    try:
        yield json.loads(quell("lab", "status", "--json", env=env).stdout), env
    finally:
        quell("lab", "down", env=env)


@contextlib.contextmanager
def traffic(env: dict[str, str], seconds: float) -> Iterator[None]:
    load = subprocess.Popen(
        [sys.executable, "-m", "console", "load", "--scenario", "steady", "--quiet",
         "--duration", f"{seconds:g}"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        load.terminate()
        load.wait(10)


@dataclass
class Console:
    """`quell console` on a pty of its own; everything it writes is counted."""

    process: subprocess.Popen[bytes]
    master: int
    started: float
    written: int = 0
    first_frame_s: float | None = None
    _seen: bytes = b""

    @classmethod
    def start(cls, args: list[str], env: dict[str, str]) -> Console:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "console", "console", *args],
            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, start_new_session=True,
            env={**env, "TERM": "xterm-256color"},
        )  # fmt: skip
        os.close(slave)
        return cls(process, master, started)

    def pump(self, seconds: float) -> None:
        """Read what it writes for ``seconds``."""
        deadline = time.perf_counter() + seconds
        while (left := deadline - time.perf_counter()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(0.25, left))
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            now = time.perf_counter()
            self.written += len(chunk)
            if self.first_frame_s is None:
                self._seen = self._seen[-64:] + chunk
                if any(marker in self._seen for marker in MARKERS):
                    self.first_frame_s = now - self.started

    def wait_first_frame(self, within_s: float = 30.0) -> float:
        deadline = time.perf_counter() + within_s
        while self.first_frame_s is None and time.perf_counter() < deadline:
            self.pump(0.1)
        if self.first_frame_s is None:
            raise SystemExit("the console drew no frame with data")
        return self.first_frame_s

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def measure(self, seconds: float) -> dict[str, float]:
        """CPU (% of one core) and bytes per second over ``seconds``, after a warm-up."""
        self.pump(WARMUP_S)
        cpu0, bytes0, wall0 = cpu_seconds(self.process.pid), self.written, time.perf_counter()
        self.pump(seconds)
        cpu1, wall1 = cpu_seconds(self.process.pid), time.perf_counter()
        return {
            "cpu_percent": 100.0 * (cpu1 - cpu0) / (wall1 - wall0),
            "bytes_per_s": (self.written - bytes0) / (wall1 - wall0),
        }

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.pump(0.5)
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        os.close(self.master)


def first_frames(env: dict[str, str], starts: int) -> list[float]:
    times = []
    for _ in range(starts):
        console = Console.start([], env)
        try:
            times.append(console.wait_first_frame())
        finally:
            console.stop()
    return times


def daemon_for(env: dict[str, str]) -> subprocess.Popen[str]:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "console", "collect"], env=env, cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert daemon.stdout is not None
    line = daemon.stdout.readline()
    if "quell collect" not in line:
        raise SystemExit(f"the daemon did not start: {line!r}")
    return daemon


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per CPU figure")
    parser.add_argument("--starts", type=int, default=5, help="starts timed to the first frame")
    args = parser.parse_args()
    facts = machine_facts()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="quell-bench-console-") as scratch:
        directory = Path(scratch)
        with lab(directory / "state", replicas=3) as (state, env):
            targets = 1 + len(state["engines"])
            log(f"first frame, {args.starts} starts against a lab of {targets} targets")
            frames = first_frames(env, args.starts)
            log(f"following {targets} targets with traffic for {args.duration:g} s")
            with traffic(env, args.duration + 2 * WARMUP_S + 10):
                console = Console.start([], env)
                try:
                    console.wait_first_frame()
                    following = console.measure(args.duration)
                finally:
                    console.stop()
                log("attached to a daemon's store")
                daemon = daemon_for(env)
                try:
                    store = Path(state["lab_dir"]) / "quell.db"
                    console = Console.start(["--store", str(store)], env)
                    try:
                        console.wait_first_frame()
                        attached = console.measure(args.duration)
                    finally:
                        console.stop()
                finally:
                    daemon.send_signal(signal.SIGTERM)
                    daemon.wait(10)
            log("idle: the recording replayed, paused")
            console = Console.start(["--replay", str(store)], env)
            try:
                console.wait_first_frame()
                console.press(b" ")  # pause
                idle = console.measure(args.duration)
            finally:
                console.stop()
    frame = median(frames) or 0.0
    rows.append([
        "command start to first complete frame", f"{frame:.2f} s", "< 1.0 s",
        f"median of {len(frames)}: {', '.join(f'{t:.2f}' for t in frames)}; in-process collector",
    ])  # fmt: skip
    rows.append([
        "CPU idle (replay, paused)", f"{idle['cpu_percent']:.2f} % of a core", "< 3 %",
        f"{idle['bytes_per_s']:.0f} bytes/s written",
    ])  # fmt: skip
    rows.append([
        f"CPU following {targets} targets at 1 Hz, collecting in-process",
        f"{following['cpu_percent']:.2f} % of a core", "< 8 %",
        "gateway + 3 engines over HTTP, host, GPU (absent), 1 log; steady traffic",
    ])  # fmt: skip
    rows.append([
        "bytes written to the terminal at 80x24 while following",
        f"{following['bytes_per_s']:,.0f} bytes/s", "", "same run",
    ])  # fmt: skip
    rows.append([
        f"CPU attached to the daemon's store, {targets} targets at 1 Hz",
        f"{attached['cpu_percent']:.2f} % of a core", "",
        f"the console alone; {attached['bytes_per_s']:,.0f} bytes/s written",
    ])  # fmt: skip
    print("```")
    print("$ " + shlex.join(["python", "bench/console.py", *sys.argv[1:]]))
    for key, value in facts.items():
        print(f"{key}: {value}")
    print("```")
    print()
    print(markdown_table(["measure", "result", "goal", "notes"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
