"""Score diagnosis against every lab scenario, end to end.

For each built-in scenario: a fresh lab (gateway + 2 engines), `quell load`
in its own process, and the collector loop sampling the gateway, the engines
and the host at 1 Hz into the diagnoser. Per scenario it prints the cause
found, the detection delay from the scenario's onset to the first correct
verdict, the lead time from that verdict to the first works_queue_full
rejection, flaps (verdicts that opened and closed again, or changed cause
more than once) and false alarms (verdicts before the onset, or any verdict
in a benign scenario).

    python bench/diagnosis.py [--scenarios a,b] [--steady-duration 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectors.diagnosis import Diagnoser  # noqa: E402
from collectors.watch import lab_topology, watch  # noqa: E402
from inference.lab.scenario import builtin_names, load_scenario  # noqa: E402

ORDER = (
    "steady", "producer_surge", "ramp", "consumer_slowdown", "stalled_consumers",
    "dependency_slow", "resource_saturation", "hot_replica", "retry_storm", "undersized_queue",
)  # fmt: skip


def quell(state_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUELL_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "console", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip


@dataclass
class Score:
    scenario: str
    expected: str
    onset_s: float
    found: str = "-"
    detection_delay_s: float | None = None
    lead_time_s: float | None = None
    first_rejection_s: float | None = None
    flaps: int = 0
    false_alarms: int = 0
    timeline: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        if self.expected == "none":
            return self.false_alarms == 0
        return self.found == self.expected


async def diagnose_while_loading(state_dir: Path, name: str, duration: float | None) -> Score:
    scenario = load_scenario(name)
    if duration is not None:
        from dataclasses import replace

        scenario = replace(scenario, duration_s=duration)
    state = json.loads(quell(state_dir, "lab", "status", "--json").stdout)
    results_path = state_dir / f"{name}.json"
    args = [sys.executable, "-m", "console", "load", "--scenario", name, "--quiet",
            "--out", str(results_path)]  # fmt: skip
    if duration is not None:
        args += ["--duration", str(duration)]
    env = {**os.environ, "QUELL_STATE_DIR": str(state_dir)}
    diagnoser = Diagnoser("gateway")
    # A quiet lead-in so the diagnoser learns the healthy baseline first, as
    # a daemon that has been running would have.
    load = await asyncio.create_subprocess_exec(
        *args, env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL
    )
    started = time.time()
    changes = []
    async for obs in watch(lab_topology(state), duration_s=scenario.duration_s + 2):
        changes.extend(diagnoser.observe(obs))
    await load.wait()
    results = json.loads(results_path.read_text())
    # Times count from the moment the load's schedule began, not from when its
    # process was started: interpreter start-up is no detection delay.
    origin = results["started_at"] or started
    score = Score(name, scenario.cause, scenario.onset_s)
    detected_at = None
    for change in changes:
        at = change.ts - origin
        verdict = change.verdict
        score.timeline.append(
            f"{at:6.1f}s {change.kind:<13} {verdict.cause:<20} conf {verdict.confidence:.2f}"
        )
        if change.kind == "closed":
            continue
        if change.kind == "opened" and scenario.expected_at(at + 1) in (None, "none"):
            score.false_alarms += 1
        if verdict.cause == scenario.cause and detected_at is None:
            detected_at = at
            score.found = scenario.cause
            score.detection_delay_s = max(0.0, at - scenario.onset_s)
        elif score.found == "-":
            score.found = verdict.cause
    opened = sum(1 for c in changes if c.kind == "opened")
    changed = sum(1 for c in changes if c.kind == "cause_changed")
    score.flaps = max(0, opened - 1) + max(0, changed - 1)
    for second in results["timeline"]:
        if second["failed"].get("works_queue_full"):
            score.first_rejection_s = float(second["t"])
            break
    if detected_at is not None and score.first_rejection_s is not None:
        score.lead_time_s = score.first_rejection_s - detected_at
    return score


def settle(state_dir: Path) -> None:
    """Every fault cleared and the queue empty before the next scenario."""
    import httpx

    state = json.loads(quell(state_dir, "lab", "status", "--json").stdout)
    for engine in state["engines"]:
        headers = {"Authorization": f"Bearer {engine['admin_token']}"}
        httpx.delete(f"{engine['url']}/admin/faults", headers=headers)
        httpx.post(f"{engine['url']}/admin/faults", json={"slots": 16}, headers=headers)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = httpx.get(f"{state['gateway']['url']}/metrics").text
        if all(
            float(line.split()[-1]) == 0
            for line in text.splitlines()
            if line.startswith(("quell_gateway_queue_depth ", "quell_gateway_in_flight "))
        ):
            return
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", help="comma-separated names (default: all)")
    parser.add_argument("--steady-duration", type=float, default=600.0,
                        help="seconds of the benign scenario (false alarms and flaps)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the scores here")
    parser.add_argument("--verbose", action="store_true", help="print every verdict change")
    args = parser.parse_args()
    names = (
        args.scenarios.split(",") if args.scenarios else [n for n in ORDER if n in builtin_names()]
    )
    scores: list[Score] = []
    with tempfile.TemporaryDirectory(prefix="quell-bench-") as tmp:
        state_dir = Path(tmp)
        up = quell(state_dir, "lab", "up", "--detach")
        if up.returncode != 0:
            print(up.stdout, up.stderr)
            return 1
        try:
            for name in names:
                settle(state_dir)
                duration = args.steady_duration if name == "steady" else None
                score = asyncio.run(diagnose_while_loading(state_dir, name, duration))
                scores.append(score)
                print(f"{name}: {score.found} delay={score.detection_delay_s} "
                      f"lead={score.lead_time_s} flaps={score.flaps} "
                      f"false={score.false_alarms}", flush=True)  # fmt: skip
                if args.verbose:
                    for line in score.timeline:
                        print("   ", line)
        finally:
            quell(state_dir, "lab", "down")
    print()
    print(f"machine: {os.cpu_count()} cores; sampling 1 Hz; lab defaults (2 replicas)")
    print()
    print("| scenario | expected | found | detection delay | lead before first "
          "works_queue_full | flaps | false alarms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for s in scores:

        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f} s"

        mark = "yes" if s.correct else "NO"
        print(f"| {s.scenario} | {s.expected} | {s.found} ({mark}) | {fmt(s.detection_delay_s)} "
              f"| {fmt(s.lead_time_s)} | {s.flaps} | {s.false_alarms} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([s.__dict__ for s in scores], indent=2, default=str))
    return 0 if all(s.correct for s in scores) else 1


if __name__ == "__main__":
    sys.exit(main())
