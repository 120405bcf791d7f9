"""`quell probe URL`: read a source once and say what it reports, in quell's words."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from console.argtypes import float_range
from console.errors import UsageError

if TYPE_CHECKING:
    from collectors.model import Sample

DEFAULT_INTERVAL_S = 1.0


def register(subparsers: Any) -> None:
    probe = subparsers.add_parser(
        "probe",
        help="read a queue source once and print its signals in quell's words",
        description=(
            "Scrape URL, recognise what it is (or use --preset) and print the signals it "
            "reports under quell's names: depth, capacity, running, workers, offered / "
            "completed / rejected totals and rates, queue wait and service time. Counters "
            "need two readings to become rates, so URL is read twice, --interval seconds "
            "apart; with --interval 0 it is read once and only totals are shown. Interval "
            "means and p95s appear only when something completed between the two readings. "
            "URL forms: http(s)://host:port/metrics (Prometheus text, nginx stub_status or "
            "a RabbitMQ management-API queue; no path means /metrics), "
            "rabbitmq+http://user:pass@host:15672/vhost/queue, "
            "redis://host:port/db?queue=NAME&kind=celery|rq."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    probe.add_argument("url", metavar="URL", help="the source to read")
    probe.add_argument(
        "--preset",
        help="read URL with this preset instead of recognising it; a wrong name lists them",
    )
    probe.add_argument(
        "--json",
        action="store_true",
        help='print {"preset": NAME, "signals": {...}} (plus "breakdown" by label) as JSON',
    )
    probe.add_argument(
        "--timeout", type=float_range(0.1, 120.0), default=5.0,
        help="seconds to wait for the source to connect and to answer",
    )  # fmt: skip
    probe.add_argument(
        "--interval", type=float_range(0.0, 60.0), default=DEFAULT_INTERVAL_S,
        help="seconds between the two readings that turn counters into rates; 0 reads once",
    )  # fmt: skip
    probe.set_defaults(handler=run_probe)


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() and abs(value) < 2**53 else round(value, 6)


def _shown(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.4g}"


def run_probe(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import time

    from collectors.http import make_client
    from collectors.presets import OTHER_PRESETS, PROMETHEUS_PRESETS
    from collectors.signals import QUEUE_ORDER, SIGNALS
    from collectors.sources import SourceError, open_source
    from collectors.summary import summarize

    async def read_twice() -> tuple[str, list[Sample]]:
        async with make_client(args.timeout, args.timeout) as client:
            try:
                source = open_source(args.url, client, preset=args.preset, timeout_s=args.timeout)
            except SourceError as problem:
                raise UsageError(str(problem)) from None
            try:
                result = await source.collect(time.time())
                if result.ok and args.interval > 0:
                    await asyncio.sleep(args.interval)
                    result = await source.collect(time.time())
            finally:
                await source.close()
            if not result.ok:
                raise UsageError(result.status.removeprefix("error: "))
            return str(source.preset), result.samples

    preset, samples = asyncio.run(read_twice())
    values, parts = summarize(samples)
    order = {name: index for index, name in enumerate((*QUEUE_ORDER, *SIGNALS))}
    names = sorted(values, key=lambda n: (order.get(n, len(order)), n))
    if args.json:
        document: dict[str, Any] = {
            "preset": preset,
            "signals": {name: _number(values[name]) for name in names},
        }
        if parts:
            document["breakdown"] = {
                name: [{"labels": p.labels, "value": _number(p.value)} for p in parts[name]]
                for name in names
                if name in parts
            }
        print(json.dumps(document))
        return 0
    about = (
        PROMETHEUS_PRESETS[preset].about
        if preset in PROMETHEUS_PRESETS
        else OTHER_PRESETS.get(preset, "")
    )
    print(f"preset {preset}: {about}")
    if not names:
        print("(the source reported none of quell's signals)")
        return 0
    rows: list[tuple[str, str, str]] = []
    for name in names:
        signal = SIGNALS.get(name)
        rows.append((name, _shown(values[name]), signal.unit if signal is not None else ""))
        # Zero parts are noise on a terminal (every reason a source knows);
        # --json keeps them.
        for part in parts.get(name, []):
            if part.value:
                label_text = ",".join(f"{k}={v}" for k, v in sorted(part.labels.items()))
                rows.append(("  {" + label_text + "}", _shown(part.value), ""))
    width = max(len(r[0]) for r in rows)
    number_width = max(len(r[1]) for r in rows)
    for label, value, unit in rows:
        print(f"  {label:<{width}}  {value:>{number_width}}  {unit}".rstrip())
    return 0
