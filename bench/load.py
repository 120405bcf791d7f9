"""Does `quell load` send the rate it claims?

The traffic generator runs on one core against a zero-cost engine pinned to
the other, at constant and Poisson arrivals of 500, 1,000 and 3,000 req/s,
and reports the rate it achieved within the schedule's window, how late its
sends were, and whether it flagged itself as behind.

    python bench/load.py [--duration 20] [--rates 500,1000,3000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """
name = "rate-{rate}"
duration_s = {duration}
[traffic]
unit = "rps"
arrival = "{arrival}"
profile = [[0, {rate}]]
prompt_tokens = 16
max_tokens = 4
"""


def pinned(cpu: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command] if shutil.which("taskset") else command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rates", default="500,1000,3000")
    args = parser.parse_args()
    engine = subprocess.Popen(
        pinned("0", [sys.executable, "-m", "console", "engine", "serve", "--port", "0",
                     "--decode-step-ms", "0", "--decode-ms-per-seq", "0",
                     "--prefill-ms-per-token", "0", "--slots", "1024", "--max-waiting", "16384"]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    rows = []
    try:
        assert engine.stdout is not None
        match = re.search(r"listening on (\S+)", engine.stdout.readline())
        if not match:
            print("engine did not start")
            return 1
        url = match.group(1)
        with tempfile.TemporaryDirectory() as tmp:
            for rate in (float(r) for r in args.rates.split(",")):
                for arrival in ("constant", "poisson"):
                    scenario = Path(tmp) / f"rate-{rate:g}-{arrival}.toml"
                    scenario.write_text(
                        SCENARIO.format(rate=rate, duration=args.duration, arrival=arrival)
                    )
                    out = Path(tmp) / "out.json"
                    command = [
                        *(sys.executable, "-m", "console", "load", "--scenario", str(scenario)),
                        *("--url", url, "--quiet", "--out", str(out)),
                    ]
                    subprocess.run(pinned("1", command), capture_output=True, check=True, cwd=ROOT)
                    data = json.loads(out.read_text())
                    achieved = data["achieved_rate"]
                    rows.append(
                        (
                            rate,
                            arrival,
                            data["requested_rate"],
                            achieved,
                            (achieved - rate) / rate * 100,
                            data["generator"]["max_lag_ms"],
                            data["generator"]["late_sends"],
                            data["generator"]["kept_up"],
                            data["ok"],
                            data["sent"],
                        )
                    )
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(10)
    print(f"machine: {os.cpu_count()} cores; generator on core 1, engine on core 0; "
          f"{args.duration:g} s per run")  # fmt: skip
    print()
    print("| asked req/s | arrivals | scheduled req/s | achieved req/s | error | max lag ms "
          "| late sends | kept up | ok / sent |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for rate, arrival, scheduled, achieved, error, lag, late, kept, ok, sent in rows:
        print(f"| {rate:,.0f} | {arrival} | {scheduled:,.1f} | {achieved:,.1f} | {error:+.2f}% "
              f"| {lag:.1f} | {late} | {'yes' if kept else 'NO'} | {ok}/{sent} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
