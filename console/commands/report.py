"""`quell report`: an incident as Markdown or HTML, for the post-mortem."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from console.errors import UsageError


def register(subparsers: Any) -> None:
    report = subparsers.add_parser(
        "report",
        help="write an incident's report: timeline, evidence, charts, capacity advice",
        description=(
            "Write the timeline (verdict, alerts, playbook runs with before/after values, "
            "recovery), the verdict and its evidence, charts of offered vs service rate, depth "
            "and wait around the incident, and the capacity advice. Markdown gets SVG charts "
            "beside it; HTML has them inline. Without an id, the latest incident."
        ),
    )
    report.add_argument("incident", nargs="?", type=int, help="the incident id (default: latest)")
    report.add_argument("--out", type=Path, required=True, help="FILE.md or FILE.html")
    report.add_argument(
        "--store", type=Path, help="the store to read (default: the lab's, <lab dir>/quell.db)"
    )
    report.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    from collectors.store import StoreError
    from console.report import ReportError, build, write

    if args.out.suffix not in (".md", ".html"):
        raise UsageError(f"--out must end in .md or .html, got {args.out.name}")
    store = args.store
    if store is None:
        from inference.lab.state import lab_dir

        store = lab_dir() / "quell.db"
    try:
        report = asyncio.run(build(store, args.incident))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        written = write(report, args.out)
    except (ReportError, StoreError) as error:
        raise UsageError(str(error)) from None
    except OSError as error:
        raise UsageError(f"cannot write {args.out}: {error.strerror or error}") from None
    for path in written:
        print(path)
    return 0
