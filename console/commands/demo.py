"""`quell demo`: the lab, traffic, the collector loop and an incident found and fixed."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from console.argtypes import float_range


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="see quell find and fix a works queue_full, in about a minute and a half",
        description=(
            "Start the bundled lab (a gateway and two engines on loopback), the collector loop "
            "on an SQLite store in a temporary directory, and the console; then play a producer "
            "surge and a consumer slowdown, run the recommended playbook for each and show "
            "the recovery. Quitting stops everything it started. --headless prints the "
            "timeline instead and exits 0 when every expected verdict was found and fixed."
        ),
    )
    demo.add_argument("--headless", action="store_true", help="no screen: print the timeline")
    demo.add_argument(
        "--duration", type=float_range(80.0, 3600.0), default=90.0,
        help="seconds the scripted incident lasts (default 90)",
    )  # fmt: skip
    demo.add_argument(
        "--auto", action="store_true",
        help="run the recommended playbooks without asking (always so with --headless)",
    )  # fmt: skip
    demo.add_argument("--keep", type=Path, help="keep the store and logs in this directory")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if not args.headless:
        from console.tui.demo_screen import run_console_demo

        return run_console_demo(args)
    return run_headless(args)


def run_headless(args: argparse.Namespace) -> int:
    import logging

    from console.demo import Demo, DemoEvent

    # The timeline says what these loggers would, once and in order.
    for name in ("quell.diagnosis", "quell.playbooks"):
        logging.getLogger(name).setLevel(logging.ERROR)

    def show(event: DemoEvent) -> None:
        print(event.line(), flush=True)

    async def go(directory: Path) -> bool:
        demo = Demo(directory, args.duration, on_event=show)
        try:
            await demo.start()
            return await demo.run()
        finally:
            await demo.stop()

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        ok = asyncio.run(go(args.keep.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="quell-demo-") as tmp:
            ok = asyncio.run(go(Path(tmp)))
    print("demo: every verdict found and fixed" if ok else "demo: something was missed",
          file=sys.stdout if ok else sys.stderr)  # fmt: skip
    return 0 if ok else 1
