"""`quell console`: the Textual console for the on-call engineer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from console.argtypes import float_range
from console.errors import UsageError


def register(subparsers: Any) -> None:
    console = subparsers.add_parser(
        "console",
        help="the live console: queues, verdicts, host, GPU, logs, incidents, replay",
        description=(
            "Watch the queues, the verdict and its evidence, the host, the GPUs and the logs, "
            "and replay recorded incidents. The console reads the daemon's store when a "
            "daemon is writing it; otherwise it runs the same collector loop itself (the "
            "running lab by default, or --config) into that store. --replay opens a store "
            "read-only. Keys: ? lists every command, ctrl+p searches them; settings and key "
            "bindings live in $XDG_CONFIG_HOME/quell/console.toml. Needs at least 80 x 24."
        ),
    )
    source = console.add_mutually_exclusive_group()
    source.add_argument(
        "--store", type=Path, metavar="PATH", help="attach to the store a running daemon writes"
    )
    source.add_argument(
        "--replay", type=Path, metavar="PATH", help="replay a recorded store, read-only"
    )
    source.add_argument(
        "--config", type=Path, metavar="FILE",
        help="collect in-process from this daemon config instead of the lab",
    )  # fmt: skip
    source.add_argument(
        "--source",
        metavar="prometheus=URL",
        help="read the queue through a Prometheus server (with --queue and --replicas)",
    )
    console.add_argument(
        "--queue",
        default='{job="gateway"}',
        metavar="SELECTOR",
        help='with --source: the series of the server holding the queue (default {job="gateway"})',
    )
    console.add_argument(
        "--replicas",
        default='{job="engines"}',
        metavar="SELECTOR",
        help='with --source: the servers behind it, one per instance (default {job="engines"})',
    )
    console.add_argument(
        "--read-only", action="store_true",
        help="hide and refuse every action that would change the watched system",
    )  # fmt: skip
    console.add_argument(
        "--settings", type=Path, metavar="FILE",
        help="console settings (theme, refresh_s, chart_minutes, [keys])",
    )  # fmt: skip
    console.add_argument("--theme", choices=("dark", "light"), help="override the settings' theme")
    console.add_argument(
        "--speed", type=float_range(1 / 64, 4096.0), default=1.0,
        help="replay speed (1 = real time)",
    )  # fmt: skip
    console.set_defaults(handler=run_console)


def run_console(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    from collectors.store import Store, StoreError
    from console.tui.feeds import REPLAY, plan_feed
    from console.tui.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.settings)
    except SettingsError as problem:
        raise UsageError(str(problem)) from None
    if args.theme:
        settings = dataclasses.replace(settings, theme=args.theme)
    if args.source:
        args.config = prometheus_config(args.source, args.queue, args.replicas)
    plan = plan_feed(store=args.store, replay=args.replay, config=args.config)
    if plan.kind != "collect":

        async def check() -> None:
            store = await Store.open(plan.store_path, read_only=True)
            await store.close()

        try:
            asyncio.run(check())
        except StoreError as problem:
            raise UsageError(str(problem)) from None
    if plan.kind == REPLAY:
        from console.tui.span import store_span

        if store_span(plan.store_path) is None:
            raise UsageError(f"{plan.store_path} holds no samples to replay")

    from console.tui.app import QuellConsole
    from console.tui.logcapture import captured_logs

    with captured_logs() as logs:
        app = QuellConsole(plan, settings, read_only=args.read_only, logs=logs, speed=args.speed)
        code = app.run()
    return int(code or app.return_code or 0)


def prometheus_config(source: str, queue: str, replicas: str) -> Path:
    """A collector config that reads the queue and each replica back from Prometheus.

    The console collects it in process like any config, into its own store
    under the state directory, so replay and incidents work the same way.
    """
    import asyncio
    import json

    from collectors.http import make_client
    from collectors.prometheus import PrometheusError, check_selector, instances
    from inference.lab.state import ensure_private_dir, state_dir

    kind, sep, url = source.partition("=")
    if kind != "prometheus" or not sep or not url.startswith(("http://", "https://")):
        raise UsageError(f"--source takes prometheus=http://HOST:9090, got {source!r}")

    async def replica_instances() -> list[str]:
        async with make_client(5.0, 5.0) as client:
            return await instances(url, replicas, client)

    try:
        check_selector(queue)
        found = asyncio.run(replica_instances()) if replicas else []
    except PrometheusError as error:
        raise UsageError(str(error)) from None
    directory = ensure_private_dir(state_dir() / "prometheus")
    base = replicas.strip().rstrip("}")
    lines = [
        "[store]", f"path = {json.dumps(str(directory / 'quell.db'))}",
        "[host]", "enabled = false", "[gpu]", "enabled = false",
        "[[targets]]", 'name = "gateway"', 'kind = "prometheus"', f"url = {json.dumps(url)}",
        f"selector = {json.dumps(queue)}",
    ]  # fmt: skip
    for index, instance in enumerate(found):
        selector = f'{base}{"," if base.strip("{") else ""}instance="{instance}"}}'
        lines += ["[[targets]]", f'name = "replica-{index}"', 'kind = "prometheus"',
                  f"url = {json.dumps(url)}", f"selector = {json.dumps(selector)}",
                  'replica_of = "gateway"']  # fmt: skip
    path = directory / "console.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
