"""Benchmark the collector daemon and its store.

1. Daemon cost: `quell collect` at 1 Hz against a lab (gateway + two engine
   replicas over HTTP, the gateway's access log, the host, the GPU if any),
   as a separate process; CPU as % of one core from /proc/<pid>/stat
   (utime + stime deltas, every thread) and RSS, over --duration seconds.
   Goals: at most 1% of a core, at most 80 MB.
2. Where a tick's CPU goes: each component timed on its own in this process
   against the same lab (HTTP fetch, exposition parse, host, store write).
3. Store ingest: ticks of 200 samples, one transaction each. Goal: at least
   100,000 samples/s.
4. Range query: 24 h of 1 Hz data for 20 series (1.73 M rows), rolled up,
   then 20 series over 24 h downsampled to 500 points. Goal: at most 200 ms.
   Also timed reading raw samples only, to show what the roll-ups buy.

    python bench/collectors.py [--duration 300] [--ingest-ticks 5000] [--skip-daemon]
    python bench/collectors.py --compare-with OLD_CHECKOUT [--duration 120] [--rounds 2]

``--compare-with`` runs two daemons against one lab at the same time, this
checkout's and another's (a copy of an older commit), each with its own
store, and reports both: the host's speed swings too much from hour to hour
for figures taken in different runs to be compared. Each round restarts both
daemons, the order of starting them alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import python_speed_ns  # noqa: E402

from collectors.model import Sample  # noqa: E402
from collectors.store import Store  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DAY_S = 86_400
WARMUP_S = 5.0


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def quell(
    *args: str, env: dict[str, str], checkout: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console", *args],
        capture_output=True, text=True, env=env, cwd=checkout, timeout=120,
    )  # fmt: skip


@contextmanager
def lab(state_dir: Path, checkout: Path = ROOT) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    env = {**os.environ, "QUELL_STATE_DIR": str(state_dir)}
    started = quell("lab", "up", "--detach", env=env, checkout=checkout)
    if started.returncode != 0:
        raise SystemExit(f"the lab did not start:\n{started.stdout}{started.stderr}")
    try:
        state = json.loads(quell("lab", "status", "--json", env=env, checkout=checkout).stdout)
        yield state, env
    finally:
        quell("lab", "down", env=env, checkout=checkout)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def daemon_config(state: dict[str, Any], directory: Path) -> Path:
    gateway = state["gateway"]
    pids = [state["supervisor_pid"], gateway["pid"], *(e["pid"] for e in state["engines"])]
    lines = [
        "[store]", f'path = "{directory / "daemon.db"}"',
        "[daemon]", "interval_s = 1.0", "metrics_port = 0",
        "[host]", f"watch = [{', '.join(str(p) for p in pids)}]",
        "[gpu]", "enabled = true",
        "[[targets]]", 'name = "gateway"', f'url = "{gateway["url"]}/metrics"',
        'preset = "quell-gateway"',
    ]  # fmt: skip
    for engine in state["engines"]:
        lines += [
            "[[targets]]", f'name = "{engine["name"]}"', f'url = "{engine["url"]}/metrics"',
            'preset = "vllm"',
        ]  # fmt: skip
    lines += ["[[logs]]", 'name = "gateway-access"', f'path = "{gateway["access_log"]}"']
    lines += ['format = "json"']
    path = directory / "quell.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def measure_daemon(
    state: dict[str, Any], env: dict[str, str], directory: Path, duration: float
) -> dict[str, Any]:
    return measure_daemons(state, env, {"": (ROOT, directory)}, duration)[""]


def measure_daemons(
    state: dict[str, Any],
    env: dict[str, str],
    checkouts: dict[str, tuple[Path, Path]],
    duration: float,
) -> dict[str, dict[str, Any]]:
    """One daemon per checkout (name -> (checkout, scratch folder)), all measured at once."""
    processes: dict[str, tuple[subprocess.Popen[str], str]] = {}
    try:
        for name, (checkout, directory) in checkouts.items():
            directory.mkdir(parents=True, exist_ok=True)
            config = daemon_config(state, directory)
            process = subprocess.Popen(
                [sys.executable, "-m", "console", "collect", "--config", str(config)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                cwd=checkout,
            )  # fmt: skip
            processes[name] = process, ""
            assert process.stdout is not None
            line = process.stdout.readline()
            if " listening on " not in line:
                raise SystemExit(f"the daemon of {checkout} did not start: {line!r}")
            processes[name] = process, line.split(" listening on ", 1)[1].strip()
        time.sleep(WARMUP_S)
        start_wall = time.monotonic()
        start_cpu = {name: cpu_seconds(p.pid) for name, (p, _) in processes.items()}
        peak = {name: rss_bytes(p.pid) for name, (p, _) in processes.items()}
        while time.monotonic() - start_wall < duration:
            time.sleep(min(5.0, duration))
            for name, (p, _) in processes.items():
                peak[name] = max(peak[name], rss_bytes(p.pid))
        cpu = {name: cpu_seconds(p.pid) - start_cpu[name] for name, (p, _) in processes.items()}
        wall = time.monotonic() - start_wall
        results: dict[str, dict[str, Any]] = {}
        for name, (process, url) in processes.items():
            with urllib.request.urlopen(url + "/status", timeout=5) as answer:  # noqa: S310
                status = json.loads(answer.read())
            samples = status["store"]["samples_written"]
            results[name] = {
                "cpu_percent": 100.0 * cpu[name] / wall,
                "rss": rss_bytes(process.pid),
                "peak_rss": peak[name],
                "ticks": status["ticks"],
                "samples_per_tick": samples / max(1, status["ticks"]),
                "down": sorted(n for n, t in status["targets"].items() if not t["up"]),
            }
    finally:
        for process, _ in processes.values():
            process.send_signal(signal.SIGTERM)
        for process, _ in processes.values():
            process.wait(10)
    return results


def compare_daemons(old: Path, duration: float, rounds: int, lab_checkout: Path) -> int:
    """This checkout's daemon and ``old``'s, side by side against one lab."""
    speed_before = python_speed_ns()
    figures: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="quell-bench-") as scratch:
        directory = Path(scratch)
        with lab(directory / "state", lab_checkout) as (state, env):
            for round_ in range(rounds):
                order = [("old", old), ("new", ROOT)]
                if round_ % 2:
                    order.reverse()
                log(f"round {round_ + 1}/{rounds}: both daemons for {duration:g} s")
                checkouts = {n: (c, directory / f"{n}-{round_}") for n, c in order}
                for name, result in measure_daemons(state, env, checkouts, duration).items():
                    figures[name].append(result)
    print("```")
    print("$ " + shlex.join(["python", "bench/collectors.py", *sys.argv[1:]]))
    print("\n".join(machine_facts()))
    print(f"CPU speed check: {speed_before} ns/iteration before, {python_speed_ns()} after")
    print("```")
    print()
    rows = []
    for round_ in range(rounds):
        before, after = figures["old"][round_], figures["new"][round_]
        change = 100.0 * (after["cpu_percent"] / before["cpu_percent"] - 1.0)
        rows.append([
            str(round_ + 1), f"{before['cpu_percent']:.2f} %", f"{after['cpu_percent']:.2f} %",
            f"{change:+.0f} %",
            f"{before['samples_per_tick']:.0f} / {after['samples_per_tick']:.0f}",
            f"{before['rss'] / 2**20:.1f} / {after['rss'] / 2**20:.1f} MiB",
        ])  # fmt: skip
    print(table(["round", f"old ({old})", "new (this checkout)", "change",
                 "samples/tick old / new", "RSS old / new"], rows))  # fmt: skip
    return 0


def per_call_ms(action: Callable[[], object], repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        action()
    return 1000.0 * (time.process_time() - started) / repeat


async def component_costs(state: dict[str, Any], directory: Path) -> list[tuple[str, float]]:
    """CPU per call of each part of a tick, timed alone in this process."""
    from collectors.exposition import parse_exposition
    from collectors.host import HostCollector
    from collectors.http import fetch, make_client

    gateway_url = state["gateway"]["url"] + "/metrics"
    engine_url = state["engines"][0]["url"] + "/metrics"
    costs: list[tuple[str, float]] = []
    async with make_client() as client:
        gateway_page, _ = await fetch(client, gateway_url)
        engine_page, _ = await fetch(client, engine_url)
        started = time.process_time()
        for _ in range(50):
            await fetch(client, engine_url)
        costs.append(
            (
                "HTTP fetch of an engine's /metrics (kept-alive GET)",
                20 * (time.process_time() - started),
            )
        )
    costs.append(
        ("parse the gateway's /metrics", per_call_ms(lambda: parse_exposition(gateway_page), 50))
    )
    costs.append(
        ("parse an engine's /metrics", per_call_ms(lambda: parse_exposition(engine_page), 50))
    )
    pids = [state["supervisor_pid"], state["gateway"]["pid"], *(e["pid"] for e in state["engines"])]
    host = HostCollector(processes=pids)
    clock = [time.time()]

    def host_tick() -> None:
        clock[0] += 1.0
        host._collect(clock[0])

    costs.append(("host collector (psutil, /proc, netlink)", per_call_ms(host_tick, 30)))
    store = await Store.open(directory / "components.db")
    try:
        batch = tick_samples(0.0, targets=11)[:215]
        started = time.process_time()
        for i in range(200):
            await store.write_tick([Sample(s.series, s.labels, 1.7e9 + i, s.value) for s in batch])
        costs.append(("store: write a tick of 215 samples", 5 * (time.process_time() - started)))
    finally:
        await store.close()
    return costs


def tick_samples(ts: float, *, targets: int = 10, names: int = 20) -> list[Sample]:
    return [
        Sample(f"series_{n}", (("target", f"t{t}"),), ts, float(n * t))
        for t in range(targets)
        for n in range(names)
    ]


async def measure_ingest(directory: Path, ticks: int) -> dict[str, float]:
    """Time write_tick alone: building the Samples is the collectors' cost, not the store's."""
    store = await Store.open(directory / "ingest.db")
    template = tick_samples(0.0)
    wall = cpu = 0.0
    try:
        for i in range(ticks):
            ts = 1.7e9 + i
            tick = [Sample(s.series, s.labels, ts, s.value + i) for s in template]
            began_wall, began_cpu = time.perf_counter(), time.process_time()
            await store.write_tick(tick)
            wall += time.perf_counter() - began_wall
            cpu += time.process_time() - began_cpu
    finally:
        await store.close()
    total = ticks * len(template)
    return {"samples": total, "per_s": total / wall, "cpu_us_per_sample": 1e6 * cpu / total}


async def measure_range(directory: Path, repeats: int = 5) -> dict[str, Any]:
    path = directory / "range.db"
    end = 1_700_006_400.0  # a whole day boundary is not needed; a whole minute is
    start = end - DAY_S
    names = [f"series_{n}" for n in range(20)]
    store = await Store.open(path)
    try:
        fill = time.perf_counter()
        chunk_s = 600
        for chunk in range(DAY_S // chunk_s):
            base = start + chunk * chunk_s
            await store.write_tick(
                [
                    Sample(name, (("target", "t0"),), base + s, float(s % 97))
                    for s in range(chunk_s)
                    for name in names
                ]
            )
        fill = time.perf_counter() - fill
        rolled = time.perf_counter()
        while await store.roll_up(end + 60, max_minutes=120):
            pass
        rolled = time.perf_counter() - rolled
        rows = await store.count_samples()
        timings: dict[str, list[float]] = {"auto": [], "raw": []}
        sources: dict[str, str] = {}
        points: dict[str, int] = {}
        for _ in range(repeats):
            for mode in ("auto", "raw"):
                began = time.perf_counter()
                result = await store.range(
                    names, start=start, end=end, points=500, use_rollups=mode == "auto"
                )
                timings[mode].append(time.perf_counter() - began)
                sources[mode] = result.source
                points[mode] = max(len(b) for b in result.series.values())
    finally:
        await store.close()
    return {
        "rows": rows,
        "fill_s": fill,
        "rollup_s": rolled,
        "auto_ms": 1000 * statistics.median(timings["auto"]),
        "raw_ms": 1000 * statistics.median(timings["raw"]),
        "source": sources["auto"],
        "points": points["auto"],
        "raw_points": points["raw"],
        "size_mb": path.stat().st_size / 1e6,
    }


def machine_facts() -> list[str]:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        commit = "?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, commit {commit}",
        f"load average before: {load}",
    ]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="daemon run, seconds")
    parser.add_argument("--ingest-ticks", type=int, default=5000, help="ticks of 200 samples")
    parser.add_argument("--skip-daemon", action="store_true", help="store figures only")
    parser.add_argument(
        "--compare-with", type=Path, metavar="CHECKOUT",
        help="daemon CPU only: this checkout's daemon and CHECKOUT's, side by side",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="with --compare-with")
    parser.add_argument(
        "--lab-from", type=Path, default=ROOT, metavar="CHECKOUT",
        help="with --compare-with: start the lab from this checkout (the watched system "
        "stays the same whichever daemons are compared)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.compare_with is not None:
        return compare_daemons(
            args.compare_with.resolve(), args.duration, args.rounds, args.lab_from.resolve()
        )
    facts = machine_facts()
    # This host's speed swings by half from hour to hour (a busy neighbour
    # shows as no steal time); every CPU figure below moves with this one.
    speed_before = python_speed_ns()
    rows: list[list[str]] = []
    costs: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="quell-bench-") as scratch:
        directory = Path(scratch)
        if not args.skip_daemon:
            with lab(directory / "state") as (state, env):
                log(f"daemon at 1 Hz against the lab for {args.duration:g} s")
                daemon = measure_daemon(state, env, directory, args.duration)
                log("component costs")
                costs = asyncio.run(component_costs(state, directory))
            down = f"; down: {', '.join(daemon['down'])}" if daemon["down"] else ""
            rows.append([
                "daemon CPU, 1 Hz, 3 HTTP targets + host + GPU + 1 log",
                f"{daemon['cpu_percent']:.2f} % of a core",
                "<= 1 %",
                f"{daemon['ticks']} ticks, {daemon['samples_per_tick']:.0f} samples/tick{down}",
            ])  # fmt: skip
            rows.append([
                "daemon RSS", f"{daemon['rss'] / 2**20:.1f} MiB", "<= 80 MB",
                f"peak {daemon['peak_rss'] / 2**20:.1f} MiB",
            ])  # fmt: skip
        log(f"ingest: {args.ingest_ticks} ticks of 200 samples")
        ingest = asyncio.run(measure_ingest(directory, args.ingest_ticks))
        rows.append([
            "store ingest, ticks of 200 samples, 1 transaction each",
            f"{ingest['per_s']:,.0f} samples/s", ">= 100,000",
            f"{ingest['samples']:,} samples, {ingest['cpu_us_per_sample']:.1f} us CPU each",
        ])  # fmt: skip
        log("range: filling 24 h x 20 series at 1 Hz")
        ranged = asyncio.run(measure_range(directory))
        rows.append([
            "range, 20 series x 24 h -> 500 points",
            f"{ranged['auto_ms']:.1f} ms", "<= 200 ms",
            f"read from {ranged['source']}; {ranged['points']} points/series; "
            f"{ranged['rows']:,} raw rows, {ranged['size_mb']:.0f} MB file",
        ])  # fmt: skip
        rows.append([
            "same range from raw samples only", f"{ranged['raw_ms']:.1f} ms", "",
            f"{ranged['raw_points']} points/series; fill {ranged['fill_s']:.1f} s, "
            f"roll-up of 1440 minutes {ranged['rollup_s']:.1f} s",
        ])  # fmt: skip
    print("```")
    print("$ " + shlex.join(["python", "bench/collectors.py", *sys.argv[1:]]))
    speed_after = python_speed_ns()
    facts.append(
        f"CPU speed check: a plain Python loop took {speed_before} ns/iteration before the "
        f"run and {speed_after} after (lower is faster)"
    )
    print("\n".join(facts))
    print("```")
    print()
    print(table(["measure", "result", "goal", "notes"], rows))
    if costs:
        print()
        print("CPU per call of each part of a tick (this process, same lab):")
        print()
        print(table(["part", "ms CPU"], [[name, f"{ms:.2f}"] for name, ms in costs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
