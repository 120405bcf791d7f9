"""Soak: the lab at 80% load for a long run, with the daemon and a console attached.

    python bench/soak.py [--duration 1800] [--sample-every 60]

Starts a private lab (gateway + 2 engines), `quell collect` writing its store,
`quell console --store` attached in an 80x24 tmux pane (skipped, and said so,
without tmux), and open-loop traffic at 80% of the lab's capacity. Every
--sample-every seconds it records the RSS and open file descriptors of each
process. At the end it prints, per process, the first and last figures and
the largest; the error lines in every log; the load's outcomes; and the
samples the store holds against the ticks the daemon should have written.
Everything it started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from inference.lab.scenario import lab_traffic_text

ROOT = Path(__file__).resolve().parent.parent
# A log line at level ERROR or CRITICAL, or any traceback. An alert is logged at
# WARNING with its own severity in the text; those are counted apart.
ERROR_LINE = re.compile(r"^\S+ (ERROR|CRITICAL) |Traceback")
ALERT_LINE = re.compile(r" quell\.alerts: \[")


def quell(*args: str) -> list[str]:
    return [sys.executable, "-m", "console", *args]


def measure(processes: dict[str, psutil.Process]) -> dict[str, tuple[float, int]]:
    found = {}
    for name, process in processes.items():
        try:
            with process.oneshot():
                found[name] = (process.memory_info().rss / 2**20, process.num_fds())
        except psutil.Error:
            found[name] = (float("nan"), -1)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--sample-every", type=float, default=60.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quell-soak-"))
    env = {**os.environ, "QUELL_STATE_DIR": str(work / "state")}
    subprocess.run(
        quell("lab", "up", "--detach"), check=True, capture_output=True, env=env, cwd=ROOT
    )
    state = json.loads(
        subprocess.run(
            quell("lab", "status", "--json"),
            check=True,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        ).stdout
    )
    lab_dir = Path(state["lab_dir"])
    store = lab_dir / "quell.db"
    daemon_log = (work / "collect.log").open("w")
    daemon = subprocess.Popen(
        quell("collect"), stdout=daemon_log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
    )
    tmux = shutil.which("tmux")
    socket = f"quell-soak-{uuid.uuid4().hex[:8]}"
    console_pid = None
    try:
        time.sleep(3)
        if tmux:
            command = " ".join([*quell("console", "--store", str(store))])
            subprocess.run(
                [
                    tmux,
                    "-L",
                    socket,
                    "new-session",
                    "-d",
                    "-x",
                    "80",
                    "-y",
                    "24",
                    "-s",
                    "soak",
                    f"cd {ROOT} && exec env QUELL_STATE_DIR={env['QUELL_STATE_DIR']} "
                    f"TERM=xterm-256color {command}",
                ],
                check=True,
            )
            time.sleep(3)
            console_pid = int(
                subprocess.run(
                    [tmux, "-L", socket, "display-message", "-p", "-t", "soak", "#{pane_pid}"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
            )
        processes = {
            "supervisor": psutil.Process(state["supervisor_pid"]),
            "gateway": psutil.Process(state["gateway"]["pid"]),
            **{e["name"]: psutil.Process(e["pid"]) for e in state["engines"]},
            "daemon": psutil.Process(daemon.pid),
        }
        if console_pid:
            processes["console"] = psutil.Process(console_pid)
        scenario = work / "soak.toml"
        scenario.write_text(lab_traffic_text("soak", [(0, 0.8)], args.duration))
        started = time.time()
        load = subprocess.Popen(
            quell("load", "--scenario", str(scenario), "--quiet", "--out", str(work / "load.json")),
            env=env,
            cwd=ROOT,
        )
        samples = [(0.0, measure(processes))]
        while load.poll() is None:
            time.sleep(min(args.sample_every, max(1.0, started + args.duration - time.time())))
            samples.append((time.time() - started, measure(processes)))
        ended = time.time()
        load_results = json.loads((work / "load.json").read_text())
    finally:
        if tmux:
            subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True)
        daemon.terminate()
        daemon.wait(20)
        daemon_log.close()
        subprocess.run(quell("lab", "down"), capture_output=True, env=env, cwd=ROOT)
    print(
        f"soak: {args.duration:.0f} s at 80% of capacity; {len(samples)} samples; work dir {work}"
    )
    print("\n| process | RSS start (MiB) | RSS end | RSS max | fds start | fds end | fds max |")
    print("|---|---|---|---|---|---|---|")
    for name in processes:
        rss = [s[1][name][0] for s in samples]
        fds = [s[1][name][1] for s in samples]
        print(
            f"| {name} | {rss[0]:.1f} | {rss[-1]:.1f} | {max(rss):.1f} | {fds[0]} | "
            f"{fds[-1]} | {max(fds)} |"
        )
    print("\nRSS (MiB) at each sample, to tell a plateau from a climb:")
    for name in processes:
        trail = ", ".join(f"{s[1][name][0]:.1f}" for s in samples)
        print(f"  {name}: {trail}")
    errors = []
    for log in [*lab_dir.glob("*.log"), work / "collect.log"]:
        errors += [
            f"{log.name}: {line.strip()}"
            for line in log.read_text(errors="replace").splitlines()
            if ERROR_LINE.search(line)
        ]
    print(f"\nerror lines in the logs: {len(errors)}")
    for line in errors[:20]:
        print(f"  {line}")
    alerts = [
        line.strip()
        for line in (work / "collect.log").read_text(errors="replace").splitlines()
        if ALERT_LINE.search(line)
    ]
    stopped = [
        line.split(": ", 1)[1]
        for line in (work / "collect.log").read_text(errors="replace").splitlines()
        if " quell.collect: stopped after " in line
    ]
    print(f"daemon: {stopped[-1] if stopped else 'no closing line (did it stop cleanly?)'}")
    print(f"alert notifications: {len(alerts)}")
    for line in alerts[:20]:
        print(f"  {line}")
    outcomes = load_results.get("outcomes", {})
    print(f"load outcomes: {outcomes}")
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        gateway_ids = [
            str(series_id)
            for series_id, text in db.execute("SELECT id, labels_json FROM series")
            if dict(json.loads(text)).get("target") == "gateway"
        ]
        ticks = db.execute(
            f"SELECT count(DISTINCT ts) FROM samples WHERE series_id IN ({','.join(gateway_ids)})"  # noqa: S608 - ids
            " AND ts BETWEEN ? AND ?",
            (int(started * 1000), int(ended * 1000)),
        ).fetchone()[0]
    expected = int(ended - started)
    print(f"gateway ticks in the store: {ticks} of ~{expected} expected (1 Hz)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
