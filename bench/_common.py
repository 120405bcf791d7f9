"""Helpers shared by the benchmarks under bench/.

Everything here is generic: start a server process and learn its address,
stop it with everything it spawned, find a free loopback port, run wrk and
read its report, print a markdown table, and describe the machine. A bench
script imports this module by putting its own folder on ``sys.path`` (bench/
is not a package, so scripts stay runnable as ``python bench/NAME.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

LISTENING = " listening on "
REPO_ROOT = Path(__file__).resolve().parent.parent


# -- processes -------------------------------------------------------------


def cpu_count() -> int:
    return os.cpu_count() or 1


def pinned(argv: Sequence[str], cpus: Iterable[int] | None) -> list[str]:
    """Prefix ``argv`` with taskset so the process and its children stay on ``cpus``.

    Pinning through taskset rather than ``sched_setaffinity`` after the start
    keeps the process from running a single instruction on another core, and
    the threads and workers it spawns inherit the mask.
    """
    if cpus is None or shutil.which("taskset") is None:
        return list(argv)
    mask = ",".join(str(c) for c in sorted(set(cpus)))
    return ["taskset", "-c", mask, *argv]


def raise_open_file_limit(wanted: int = 65536) -> int:
    """Raise this process's open-file limit (children inherit it); return the new soft limit.

    Open-loop overload keeps thousands of requests in flight at once, each a
    socket in the client, the proxy and the server. Root may raise the hard
    limit too; anyone else gets the hard limit as the soft one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Managed:
    """A process started in its own process group, with its output captured."""

    name: str
    argv: list[str]
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    url: str | None = None
    cpus: tuple[int, ...] | None = None
    # For servers that write their log to a file rather than to stdout (nginx).
    log_file: Path | None = None

    def log_lines(self) -> list[str]:
        """Everything the process printed, then its log file if it has one."""
        lines = [line.rstrip("\n") for line in self.output]
        if self.log_file is not None:
            with contextlib.suppress(OSError):
                lines.extend(self.log_file.read_text(errors="replace").splitlines())
        return lines

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 20) -> str:
        return "".join(self.output[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after ``grace``.

        Signalling the group rather than the pid also reaches the workers a
        server forked (nginx's, a multi-worker proxy's), and wrappers such as
        taskset that exec into the real program.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        # The leader may be gone while a child it forked lives on.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace)


def _pump(stream: IO[str], lines: queue.Queue[str | None], sink: list[str]) -> None:
    for line in stream:
        sink.append(line)
        lines.put(line)
    lines.put(None)


def start(
    name: str,
    argv: Sequence[str],
    *,
    cpus: Iterable[int] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready: str | Callable[[], bool] | None = LISTENING,
    ready_timeout: float = 30.0,
) -> Managed:
    """Start ``argv`` and wait until it is ready; raise RuntimeError if it is not.

    ``ready`` is either a marker to look for in the output (the default is
    quell's ``<name> listening on http://HOST:PORT`` line, whose URL is kept
    in ``Managed.url``), a probe called every 50 ms until it returns True
    (for servers that print nothing useful), or None to not wait at all.
    The process is stopped before the error is raised, so a caller needs no
    cleanup for a start that failed.
    """
    cpu_tuple = tuple(sorted(set(cpus))) if cpus is not None else None
    full_argv = pinned(argv, cpu_tuple)
    process = subprocess.Popen(
        full_argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    managed = Managed(name, full_argv, process, cpus=cpu_tuple)
    lines: queue.Queue[str | None] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(
        target=_pump, args=(process.stdout, lines, managed.output), daemon=True
    ).start()
    if ready is None:
        return managed
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{name} not ready in {ready_timeout:g} s:\n{managed.tail()}")
            if isinstance(ready, str):
                try:
                    line = lines.get(timeout=remaining)
                except queue.Empty:
                    continue
                if line is None:
                    raise RuntimeError(f"{name} exited early:\n{managed.tail()}")
                if ready in line:
                    if ready == LISTENING:
                        managed.url = line.split(LISTENING, 1)[1].strip()
                    return managed
            else:
                if process.poll() is not None:
                    time.sleep(0.1)  # let the pump collect the last words
                    raise RuntimeError(f"{name} exited early:\n{managed.tail()}")
                if ready():
                    return managed
                time.sleep(0.05)
    except BaseException:
        managed.stop()
        raise


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for servers that cannot bind port 0 and report it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def http_request(
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    method: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One blocking HTTP request; returns (status, body) for error statuses too."""
    request = urllib.request.Request(  # noqa: S310 (the bench only talks to loopback)
        url, data=body, headers=dict(headers or {}), method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """A readiness probe: True once ``url`` answers GET with a 2xx."""
    try:
        status, _ = http_request(url, timeout=timeout)
    except OSError:
        return False
    return 200 <= status < 300


def rss_bytes(pid: int, children: bool = True) -> int | None:
    """Resident memory of ``pid`` (and its descendants), or None if it is gone.

    Descendants count because a server may do its work in forked workers
    (nginx) or behind a wrapper such as taskset's exec.
    """
    try:
        import psutil
    except ImportError:
        return None
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if children else [])]
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total
    except psutil.NoSuchProcess:
        return None


_NGINX_PROBLEM = re.compile(r"\[(error|alert|crit|emerg)\] \d+#\d+: (?:\*\d+ )?(.*)")
_PYTHON_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception))(?::\s*(.*))?$")


def summarize_problems(lines: Iterable[str], top: int = 2) -> str:
    """The most frequent errors in a server's log as "message (xN); ...", or "" for none.

    Understands nginx's error log (``[error]``, ``[alert]``, ``[crit]``,
    ``[emerg]`` lines, without the per-request client details) and Python
    tracebacks (their closing ``SomeError: message`` line), which together
    cover every server the benchmarks start.
    """
    counts: Counter[str] = Counter()
    for line in lines:
        if match := _NGINX_PROBLEM.search(line):
            message = match.group(2).split(", client:", 1)[0]
            counts[f"nginx {match.group(1)}: {message[:160]}"] += 1
        elif match := _PYTHON_EXCEPTION.match(line.strip()):
            detail = f": {match.group(2)[:120]}" if match.group(2) else ""
            counts[f"{match.group(1)}{detail}"] += 1
    return "; ".join(f"{message} (x{count:,})" for message, count in counts.most_common(top))


# -- wrk -------------------------------------------------------------------


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def write_wrk_script(
    path: Path, method: str, body: str | None = None, headers: Mapping[str, str] | None = None
) -> Path:
    """Write a wrk Lua script that sends ``method`` with ``body`` and ``headers``."""
    lines = [f"wrk.method = {_lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {_lua_string(body)}")
    for key, value in (headers or {}).items():
        lines.append(f"wrk.headers[{_lua_string(key)}] = {_lua_string(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class WrkResult:
    requests_per_s: float = 0.0
    requests: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    non_2xx: int = 0
    socket_errors: int = 0
    timeouts: int = 0
    error: str | None = None
    raw: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("raw")
        return data


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(text: str) -> WrkResult:
    """Read the numbers out of wrk's report (it must have been run with --latency)."""
    result = WrkResult(raw=text)
    if match := re.search(r"Requests/sec:\s+([\d.]+)", text):
        result.requests_per_s = float(match.group(1))
    if match := re.search(r"(\d+) requests in", text):
        result.requests = int(match.group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        if match := re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", text, re.MULTILINE):
            setattr(result, attr, _duration_ms(match.group(1)))
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        result.non_2xx = int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        connect, read, write, timeout = (int(g) for g in match.groups())
        result.socket_errors = connect + read + write
        result.timeouts = timeout
    if "Requests/sec" not in text:
        result.error = text.strip().splitlines()[-1] if text.strip() else "wrk printed nothing"
    return result


def run_wrk(
    url: str,
    script: Path,
    *,
    connections: int = 64,
    duration_s: float = 10.0,
    threads: int = 1,
    cpus: Iterable[int] | None = None,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Run wrk once, closed-loop, and parse its report."""
    argv = pinned(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        cpus,
    )
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
        )
    except subprocess.TimeoutExpired:
        return WrkResult(error="wrk did not finish in time")
    result = parse_wrk(done.stdout + done.stderr)
    if done.returncode != 0 and result.error is None:
        result.error = f"wrk exited {done.returncode}"
    return result


def median_wrk(results: Sequence[WrkResult]) -> WrkResult:
    """The run with the median throughput, so its latencies belong to the same run."""
    good = [r for r in results if r.error is None]
    if not good:
        return results[-1] if results else WrkResult(error="no run")
    ordered = sorted(good, key=lambda r: r.requests_per_s)
    return ordered[(len(ordered) - 1) // 2]


def wrk_available() -> str | None:
    """None when wrk can be run, otherwise why not."""
    return None if shutil.which("wrk") else "wrk is not installed (apt-get install wrk)"


# -- reporting -------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; cells are str()-ed, None shows as an empty cell."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(row) + " |" for row in cells)
    return "\n".join(out)


def fmt_num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def fmt_mib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.1f}"


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * pct / 100))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> tuple[float, float, float] | None:
    with contextlib.suppress(OSError):
        return os.getloadavg()
    return None


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds spent so far by the whole machine and by this process with its children."""

    wall_s: float
    machine_busy_s: float
    own_busy_s: float


def cpu_snapshot() -> CpuSnapshot:
    """Take one now; two of them give ``others_cores`` over the time between."""
    busy = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        # user, nice, system only: the kernel charges loopback packet work to
        # softirq, which would otherwise count as someone else's load.
        ticks = sum(int(x) for x in fields[1:4])
        busy = ticks / os.sysconf("SC_CLK_TCK")
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    return CpuSnapshot(time.monotonic(), busy, own)


def others_cores(start: CpuSnapshot, end: CpuSnapshot) -> float | None:
    """Cores used on average by processes that are not this one or its (reaped) children.

    On a shared machine this says whether a figure was taken on a quiet one.
    Children count only once they have been waited for, so take ``end``
    after every process started in between has been stopped.
    """
    wall = end.wall_s - start.wall_s
    if wall <= 0 or end.machine_busy_s == 0:
        return None
    other = (end.machine_busy_s - start.machine_busy_s) - (end.own_busy_s - start.own_busy_s)
    return max(0.0, other / wall)


_LOOP = """
import time
best = float("inf")
for _ in range(3):
    t = time.perf_counter()
    x = 0
    for i in range(1_000_000):
        x += i
    best = min(best, time.perf_counter() - t)
print(best * 1000)
"""


def python_speed_ns(cpus: Iterable[int] | None = None) -> float | None:
    """Nanoseconds per iteration of a plain Python loop (best of three), on ``cpus``.

    A calibration, not a benchmark: on a virtual machine whose host is busy
    the same code runs measurably slower without any steal time showing, and
    every Python figure moves with this one.
    """
    try:
        done = subprocess.run(
            pinned([sys.executable, "-c", _LOOP], cpus),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return round(float(done.stdout.strip()), 1)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def machine_facts() -> dict[str, object]:
    """What a reader needs to compare figures across machines."""
    facts: dict[str, object] = {
        "cpu_model": cpu_model(),
        "logical_cores": cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }
    with contextlib.suppress(OSError, ValueError):
        meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0]
        facts["memory_gib"] = round(int(meminfo.split()[1]) / (1 << 20), 1)
    return facts


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)
