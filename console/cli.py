"""The `quell` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from console.commands import (
    collect,
    console,
    demo,
    diagnose,
    engine,
    gateway,
    lab,
    load,
    play,
    probe,
    report,
)
from console.errors import UsageError
from console.version import VERSION

GROUPS = (demo, engine, gateway, lab, load, collect, probe, diagnose, play, report, console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quell",
        description=(
            "Watch, diagnose and remediate AI gateways and inference services that answer "
            "'works queue_full'."
        ),
    )
    parser.add_argument("--version", action="version", version=f"quell {VERSION}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        result: int = handler(args)
    except UsageError as error:
        print(f"quell: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
