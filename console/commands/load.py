"""`quell load`: open-loop traffic from a scenario, with its timed faults."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from console.argtypes import float_range, int_range
from console.errors import UsageError


def register(subparsers: Any) -> None:
    load = subparsers.add_parser(
        "load",
        help="drive open-loop traffic and faults from a scenario",
        description=(
            "Send requests on the scenario's schedule whatever the server does (open loop: "
            "no coordinated omission; latency counts from the scheduled send time), inject "
            "its faults at their times, and report offered load, outcomes by reason and "
            "latency. Against the running lab by default, or any OpenAI-compatible URL."
        ),
    )
    load.add_argument("--scenario", help="a built-in scenario name or a scenario .toml file")
    load.add_argument("--list", action="store_true", help="list the built-in scenarios")
    load.add_argument("--url", help="an OpenAI-compatible base URL instead of the lab's gateway")
    load.add_argument(
        "--key", action="append", default=[], metavar="NAME=SECRET",
        help="a client key for --url (repeatable); NAME matches the scenario's key mix",
    )  # fmt: skip
    load.add_argument(
        "--capacity", type=float_range(0.001),
        help="requests/s that 1.0 means in a capacity-relative scenario (default: the lab's)",
    )  # fmt: skip
    load.add_argument(
        "--time-scale", type=float_range(0.01, 100.0), default=1.0,
        help="stretch (>1) or compress (<1) the scenario in time",
    )  # fmt: skip
    load.add_argument("--duration", type=float_range(0.1), help="stop after this many seconds")
    load.add_argument("--seed", type=int, default=0, help="seed of arrivals and request sizes")
    load.add_argument(
        "--connections", type=int_range(1, 65536), default=4096,
        help="most connections the generator opens",
    )  # fmt: skip
    load.add_argument("--out", type=Path, help="write the results as JSON to this file")
    load.add_argument("--quiet", action="store_true", help="no live progress line")
    load.set_defaults(handler=run_load)


def _scenario(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from inference.lab.scenario import ScenarioError, load_scenario, scaled

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as error:
        raise UsageError(str(error)) from None
    if args.time_scale != 1.0:
        scenario = scaled(scenario, args.time_scale)
    if args.duration:
        scenario = replace(scenario, duration_s=args.duration)
    return scenario


def _target(args: argparse.Namespace, scenario: Any) -> tuple[Any, float | None, list[Any], Any]:
    """Where to send, the capacity that 1.0 means, and the engines and gateway faults go to."""
    from inference.lab.capacity import lab_capacity_rps
    from inference.lab.faults import EngineHandle, GatewayHandle
    from inference.lab.state import LabNotRunning, read_state
    from inference.lab.traffic import Target

    if args.url:
        keys: dict[str, str] = {}
        for item in args.key:
            name, sep, secret = item.partition("=")
            if not sep or not name or not secret:
                raise UsageError(f"--key takes NAME=SECRET, got {item!r}")
            keys[name] = secret
        if not keys:
            keys = {"default": "none"}
        return Target(args.url.rstrip("/"), keys), args.capacity, [], None
    try:
        state = read_state()
    except LabNotRunning as error:
        raise UsageError(f"{error}; or give --url") from None
    traffic = scenario.traffic
    capacity = args.capacity or lab_capacity_rps(
        state, traffic.prompt_tokens.mean(), traffic.max_tokens.mean()
    )
    engines = [
        EngineHandle(e["index"], e["url"], e["admin_token"])
        for e in state["engines"]
        if e.get("exit_status") is None
    ]
    keys = {k["name"]: k["key"] for k in state["keys"]}
    gateway = GatewayHandle(state["gateway"]["url"], state["gateway"]["admin_token"])
    return Target(state["gateway"]["url"], keys), capacity, engines, gateway


def _progress_line(results: Any, elapsed: float) -> str:
    recent = results.timeline[max(0, int(elapsed) - 1)] if results.timeline else None
    window = results.timeline[max(0, int(elapsed) - 5) : max(1, int(elapsed))]
    latencies = sorted(x for second in window for x in second.latencies)

    def pct(q: float) -> str:
        if not latencies:
            return "-"
        return f"{latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000:.0f}"

    failed: dict[str, int] = {}
    for second in window:
        for reason, count in second.failed.items():
            failed[reason] = failed.get(reason, 0) + count
    reasons = " ".join(f"{k}={v}" for k, v in sorted(failed.items())) or "none"
    offered = recent.offered if recent else 0
    return (
        f"t={elapsed:5.0f}s offered {offered:5d}/s ok {results.ok:7d} "
        f"rejected(5s) {reasons}  p50 {pct(0.5)} ms p99 {pct(0.99)} ms"
    )


def _summary(results: Any, scenario: Any, capacity: float | None) -> None:
    from rich.console import Console
    from rich.table import Table

    data = results.as_dict()
    console = Console()
    table = Table(title=f"quell load: {scenario.name} ({scenario.cause})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    if capacity:
        table.add_row("capacity (1.0)", f"{capacity:.1f} req/s")
    table.add_row("requested rate", f"{data['requested_rate']:.1f} req/s")
    table.add_row("achieved rate", f"{data['achieved_rate']:.1f} req/s")
    table.add_row("sent / attempts", f"{data['sent']} / {data['attempts']}")
    table.add_row("ok", str(data["ok"]))
    for reason, count in sorted(data["outcomes"].items()):
        if reason != "ok":
            table.add_row(f"failed: {reason}", str(count))
    for name in ("p50", "p90", "p99"):
        value = data["latency_ms"][name]
        table.add_row(f"latency {name}", "-" if value is None else f"{value:.1f} ms")
    table.add_row("generator max lag", f"{data['generator']['max_lag_ms']:.1f} ms")
    console.print(table)
    for fault in data["faults"]:
        console.print(f"fault at {fault['at_s']:.1f}s: {fault['what']} -> {fault['result']}")
    if not data["generator"]["kept_up"]:
        console.print(
            "[bold red]the generator could not keep up with the schedule[/bold red]: "
            f"max lag {data['generator']['max_lag_ms']:.0f} ms, {data['generator']['late_sends']} "
            "late sends; the offered load was lower than asked"
        )


def run_load(args: argparse.Namespace) -> int:
    if args.list:
        from inference.lab.scenario import builtin_names, load_scenario

        for name in builtin_names():
            scenario = load_scenario(name)
            first = scenario.description.splitlines()[0] if scenario.description else ""
            print(f"{name:<22} {scenario.cause:<20} onset {scenario.onset_s:>4.0f}s  {first}")
        return 0
    if not args.scenario:
        raise UsageError("give --scenario NAME (see --list) or --list")
    scenario = _scenario(args)
    target, capacity, engines, gateway = _target(args, scenario)
    if scenario.traffic.unit == "capacity" and not capacity:
        raise UsageError("this scenario's rates are fractions of capacity: give --capacity RPS")
    if scenario.faults and not engines:
        print("note: no lab engines to inject this scenario's faults into", file=sys.stderr)
    try:
        results = _run(scenario, target, capacity, engines, gateway, args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    _summary(results, scenario, capacity if scenario.traffic.unit == "capacity" else None)
    if args.out:
        payload = {
            "scenario": {
                "name": scenario.name,
                "cause": scenario.cause,
                "onset_s": scenario.onset_s,
                "duration_s": scenario.duration_s,
            },
            "capacity_rps": capacity,
            **results.as_dict(),
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results: {args.out}")
    return 0


def _run(scenario: Any, target: Any, capacity: float | None, engines: list[Any], gateway: Any,
         args: argparse.Namespace) -> Any:  # fmt: skip
    import asyncio
    import time

    from inference.lab.faults import FaultInjector
    from inference.lab.traffic import Generator

    generator = Generator(scenario, target, capacity, args.seed, args.connections)
    generator.prepare()
    live = sys.stdout.isatty() and not args.quiet

    def on_tick(results: Any, elapsed: float) -> None:
        if live:
            sys.stdout.write("\r" + _progress_line(results, elapsed)[:200] + "\x1b[K")
            sys.stdout.flush()

    async def run() -> Any:
        injector = FaultInjector(engines, gateway)
        faults = asyncio.create_task(injector.run(scenario.faults, time.monotonic()))
        try:
            results = await generator.run(on_tick)
        finally:
            faults.cancel()
            await asyncio.gather(faults, return_exceptions=True)
            await injector.cleanup()
        results.faults = injector.applied
        return results

    try:
        import uvloop

        results = uvloop.run(run())
    except ImportError:
        results = asyncio.run(run())
    if live:
        sys.stdout.write("\n")
    return results
