"""`quell diagnose`: one verdict for scripts and for a first look."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from console.argtypes import float_range
from console.errors import UsageError

HEALTHY, IMBALANCE, ERROR = 0, 1, 2


def register(subparsers: Any) -> None:
    diagnose = subparsers.add_parser(
        "diagnose",
        help="say whether a queue is out of balance, and why",
        description=(
            "Sample the watched queue (the running lab by default, or --url) for --window "
            "seconds and say whether offered load exceeds the service rate, the cause, its "
            "evidence and the playbooks that answer it. Exit status: 0 healthy, 1 imbalance "
            "found, 2 error."
        ),
    )
    diagnose.add_argument("--json", action="store_true", help="the verdicts as JSON")
    diagnose.add_argument(
        "--window", type=float_range(3.0, 3600.0), default=15.0,
        help="seconds to sample before answering",
    )  # fmt: skip
    diagnose.add_argument("--url", help="a /metrics URL of the queue instead of the lab's gateway")
    diagnose.add_argument(
        "--replica", action="append", default=[], metavar="NAME=URL",
        help="a replica behind --url (repeatable), for hot-replica and per-replica evidence",
    )  # fmt: skip
    diagnose.add_argument("--preset", help="the preset of --url when detection is not wanted")
    diagnose.add_argument(
        "--source",
        metavar="prometheus=URL",
        help="read the queue through a Prometheus server instead of scraping it",
    )
    diagnose.add_argument(
        "--queue",
        default='{job="gateway"}',
        metavar="SELECTOR",
        help='with --source: the series of the server holding the queue (default {job="gateway"})',
    )
    diagnose.add_argument(
        "--replicas",
        default='{job="engines"}',
        metavar="SELECTOR",
        help='with --source: the servers behind it, one per instance (default {job="engines"})',
    )
    diagnose.set_defaults(handler=run_diagnose)


def _topology(args: argparse.Namespace) -> Any:
    from collectors.watch import PrometheusTopology, Topology, lab_topology
    from inference.lab.state import LabNotRunning, read_state

    if args.source:
        kind, sep, url = args.source.partition("=")
        if kind != "prometheus" or not sep or not url.startswith(("http://", "https://")):
            raise UsageError(f"--source takes prometheus=http://HOST:9090, got {args.source!r}")
        from collectors.prometheus import PrometheusError, check_selector

        try:
            queue = check_selector(args.queue)
            behind = check_selector(args.replicas) if args.replicas else None
        except PrometheusError as error:
            raise UsageError(str(error)) from None
        return PrometheusTopology("gateway", url, queue, behind, args.preset)
    if args.url:
        replicas = {}
        for item in args.replica:
            name, sep, url = item.partition("=")
            if not sep or not name or not url:
                raise UsageError(f"--replica takes NAME=URL, got {item!r}")
            replicas[name] = url
        return Topology(
            name=args.url, queue_url=args.url, replica_urls=replicas, preset=args.preset
        )
    try:
        return lab_topology(read_state())
    except LabNotRunning as error:
        raise UsageError(f"{error}; or give --url") from None


def run_diagnose(args: argparse.Namespace) -> int:
    import asyncio

    from collectors.diagnosis import Diagnoser, capacity_advice
    from collectors.sources import SourceError

    topology = _topology(args)
    diagnoser = Diagnoser(topology.name)

    async def sample() -> int:
        from collectors.watch import PrometheusTopology, watch, watch_prometheus

        ticks = 0
        observations = (
            watch_prometheus(topology, duration_s=args.window)
            if isinstance(topology, PrometheusTopology)
            else watch(topology, duration_s=args.window)
        )
        async for observation in observations:
            if not observation.signals:
                continue
            ticks += 1
            diagnoser.observe(observation)
        return ticks

    try:
        ticks = asyncio.run(sample())
    except (SourceError, ValueError) as error:
        raise UsageError(str(error)) from None
    if ticks == 0:
        where = getattr(topology, "queue_url", None) or getattr(topology, "prometheus_url", "")
        print(f"quell: no signals read from {where}", file=sys.stderr)
        return ERROR
    verdict = diagnoser.verdict
    advice = capacity_advice(list(diagnoser.window), diagnoser.baseline)
    last = diagnoser.last
    report = {
        "status": "imbalance" if verdict else "healthy",
        "verdicts": [verdict.as_dict()] if verdict else [],
        "target": topology.name,
        "window_s": args.window,
        "ticks": ticks,
        "now": None
        if last is None
        else {k: v for k, v in last.evidence.items() if v is not None and k != "strong"},
        "advice": [{"what": a.what, "value": a.value, "assumption": a.assumption} for a in advice],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return IMBALANCE if verdict else HEALTHY


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if report["verdicts"]:
        verdict = report["verdicts"][0]
        ttf = verdict["time_to_full"]
        console.print(
            f"[bold red]IMBALANCE[/bold red] on {verdict['target']}: [bold]{verdict['cause']}"
            f"[/bold] (confidence {verdict['confidence']:.0%})"
            + (f", full in {ttf:.0f} s" if ttf is not None else "")
        )
        console.print(f"recommended playbooks: {', '.join(verdict['playbooks'])}")
        evidence = verdict["evidence"]
    else:
        console.print(f"[bold green]healthy[/bold green]: {report['target']}")
        evidence = report["now"] or {}
    table = Table(title="evidence", show_header=False)
    for key, value in evidence.items():
        table.add_row(key, str(value))
    console.print(table)
    advice = Table(title="capacity advice")
    for column in ("what", "value", "assumes"):
        advice.add_column(column)
    for item in report["advice"]:
        advice.add_row(item["what"], str(item["value"]), item["assumption"])
    console.print(advice)
