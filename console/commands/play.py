"""`quell play`: list, plan, run, audit and roll back remediation playbooks."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from console.argtypes import float_range, int_range
from console.errors import UsageError

GATEWAY_TOKEN_ENV = "QUELL_GATEWAY_ADMIN_TOKEN"  # noqa: S105 - a variable name

EPILOG = """\
exit status:
  0  applied and verified (or a dry run, a listing)
  2  bad input: unknown playbook or parameter, malformed file, no --yes without a terminal,
     read-only
  3  verification failed; the run was rolled back
  4  a precondition was not met (or the plan was not confirmed); nothing changed
  5  another run holds the target's lock, or the cooldown or hourly cap is in force
  6  an action failed; what was applied was rolled back
"""


def register(subparsers: Any) -> None:
    play = subparsers.add_parser(
        "play",
        help="run a remediation playbook: plan, confirm, apply, verify, roll back",
        description=(
            "Run a playbook against the running lab (or --gateway). Every run, dry or not, is "
            "recorded with who, why, the plan, each step and before/after values in the "
            "store's audit chain."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    play.add_argument("name", nargs="?", help="the playbook to run")
    what = play.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the playbooks")
    what.add_argument("--history", action="store_true", help="show recorded runs")
    what.add_argument("--rollback", type=int, metavar="RUN_ID", help="undo a past run")
    what.add_argument("--verify-audit", action="store_true", help="check the audit chain for edits")
    play.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter (repeatable)",
    )
    play.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    play.add_argument("--yes", action="store_true", help="apply without asking")
    play.add_argument("--json", action="store_true", help="the result as JSON, for scripts")
    play.add_argument(
        "--force",
        action="store_true",
        help="skip the preconditions (recorded in the run's trigger)",
    )
    play.add_argument("--read-only", action="store_true", help="refuse every change")
    play.add_argument("--trigger", default="", help="why this run was started (recorded)")
    play.add_argument(
        "--dir",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a directory of your own playbooks (repeatable; later names win)",
    )
    play.add_argument("--store", type=Path, help="the store holding the journal")
    play.add_argument(
        "--gateway",
        metavar="URL",
        help=f"a gateway's base URL instead of the lab's (admin token in ${GATEWAY_TOKEN_ENV})",
    )
    play.add_argument(
        "--window",
        type=float_range(0.0, 300.0),
        default=6.0,
        help="seconds to watch the queue before deciding (default 6)",
    )
    play.add_argument("--limit", type=int_range(1, 10000), default=20, help="runs in --history")
    play.set_defaults(handler=run_play)


def _params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--param takes NAME=VALUE, got {item!r}")
        params[name.strip()] = value.strip()
    return params


def _catalog(args: argparse.Namespace) -> dict[str, Any]:
    from playbooks.loader import load_catalog
    from playbooks.model import PlaybookError

    try:
        return load_catalog(args.dir)
    except PlaybookError as error:
        raise UsageError(str(error)) from None


class _Setup:
    """The context, journal and signals a run needs, from the lab or the flags."""

    def __init__(self, args: argparse.Namespace) -> None:
        from playbooks.actions import Context, Endpoint

        self.ctx = Context()
        self.topology: Any = None
        self.store: Path | None = args.store
        if args.gateway:
            token = os.environ.get(GATEWAY_TOKEN_ENV, "")
            if not token:
                raise UsageError(f"--gateway needs the admin token in ${GATEWAY_TOKEN_ENV}")
            from collectors.watch import Topology

            url = args.gateway.rstrip("/")
            self.ctx = Context(target="gateway", gateway=Endpoint(url, token))
            self.topology = Topology(
                name="gateway", queue_url=f"{url}/metrics", preset="quell-gateway"
            )
        else:
            self._from_lab()
        if self.store is None:
            from inference.lab.state import lab_dir

            self.store = lab_dir() / "quell.db"

    def _from_lab(self) -> None:
        from collectors.watch import lab_topology
        from inference.lab.state import LabNotRunning, read_state
        from playbooks.actions import lab_context

        try:
            state = read_state()
        except LabNotRunning as error:
            raise UsageError(f"{error}; or give --gateway URL") from None
        self.ctx = lab_context(state)
        self.topology = lab_topology(state)


def run_play(args: argparse.Namespace) -> int:
    from playbooks.model import EXIT_BAD_INPUT

    if args.list:
        return _list(args)
    if args.history or args.verify_audit:
        return _history(args)
    if args.rollback is None and not args.name:
        raise UsageError("name a playbook, or use --list, --history or --rollback RUN_ID")
    catalog = {} if args.rollback is not None else _catalog(args)
    if args.name and args.name not in catalog:
        known = ", ".join(sorted(catalog))
        raise UsageError(f"no playbook {args.name!r}; known: {known}")
    params = _params(args.param)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not args.dry_run and not args.yes and not interactive and not args.read_only:
        print(
            "quell: not a terminal: give --yes to apply without a confirmation, or --dry-run",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    setup = _Setup(args)
    try:
        result = asyncio.run(_run(args, setup, catalog, params, interactive))
    except KeyboardInterrupt:
        return 130
    return result


async def _run(
    args: argparse.Namespace,
    setup: _Setup,
    catalog: dict[str, Any],
    params: dict[str, str],
    interactive: bool,
) -> int:
    from collectors.store import StoreError
    from playbooks.journal import Journal
    from playbooks.observe import LiveSignals
    from playbooks.runner import Plan, Runner

    try:
        assert setup.store is not None
        journal = Journal(setup.store)
    except StoreError as error:
        raise UsageError(str(error)) from None
    signals = LiveSignals(setup.topology) if setup.topology is not None else None
    runner = Runner(setup.ctx, journal, signals, read_only=args.read_only)

    async def confirm(plan: Plan) -> bool:
        if args.yes:
            return True
        for line in plan.lines():
            print(line)
        if plan.dangerous:
            answer = await asyncio.to_thread(
                input, f"{plan.playbook} is marked dangerous; type its name to apply: "
            )
            return answer.strip() == plan.playbook
        answer = await asyncio.to_thread(input, "apply this plan? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    def show(event: dict[str, Any]) -> None:
        if not args.json:
            from playbooks.runner import describe_event

            print(describe_event(event), flush=True)

    try:
        if args.rollback is not None:
            result = await runner.rollback_run(args.rollback, confirm=None if args.yes else confirm)
        else:
            playbook = catalog[args.name]
            if signals is not None:
                await signals.start()
                await signals.warm(max(2, int(args.window)), timeout_s=args.window + 10)
            trigger = args.trigger or ("manual, preconditions skipped" if args.force else "manual")
            result = await runner.run(
                playbook,
                params,
                trigger=trigger,
                dry_run=args.dry_run,
                confirm=confirm if interactive and not args.yes else None,
                force=args.force,
                on_event=show,
            )
    finally:
        if signals is not None:
            await signals.stop()
        await setup.ctx.close()
        journal.close()
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        if result.plan is not None and (args.dry_run or result.status != "applied"):
            for line in result.plan.lines():
                print(line)
        where = f" (run {result.run_id})" if result.run_id is not None else ""
        stream = sys.stdout if result.exit_code == 0 else sys.stderr
        print(f"{result.status}: {result.message}{where}", file=stream)
    return result.exit_code


def _list(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    if args.json:
        rows = [
            {
                "name": p.name,
                "description": p.description,
                "answers": list(p.answers),
                "params": [
                    {
                        "name": q.name,
                        "type": q.type,
                        "default": q.default,
                        "min": q.min,
                        "max": q.max,
                        "description": q.description,
                    }
                    for q in p.params
                ],
                "dangerous": p.dangerous,
                "auto": p.auto is not None,
                "path": str(p.path),
            }
            for p in catalog.values()
        ]
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title="playbooks", show_lines=False)
    for column in ("name", "answers", "params", "description"):
        table.add_column(column, overflow="fold")
    for p in sorted(catalog.values(), key=lambda p: p.name):
        name = p.name + (" (dangerous)" if p.dangerous else "")
        table.add_row(
            name,
            ", ".join(p.answers),
            ", ".join(q.name for q in p.params),
            p.description.split(". ")[0].rstrip(".") + ".",
        )
    _console().print(table)
    return 0


def _console() -> Any:
    """A terminal's own width; 160 columns into a pipe or a file, so rows stay whole."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _history(args: argparse.Namespace) -> int:
    from collectors.store import StoreError
    from inference.lab.state import lab_dir
    from playbooks.journal import Journal

    path = args.store or lab_dir() / "quell.db"
    try:
        journal = Journal(path, read_only=True)
    except StoreError as error:
        raise UsageError(str(error)) from None
    try:
        if args.verify_audit:
            problems = journal.verify_chain()
            if args.json:
                print(json.dumps({"ok": not problems, "problems": problems}))
            else:
                print("\n".join(problems) or f"audit chain of {path}: intact")
            return 1 if problems else 0
        runs = journal.runs(limit=args.limit)
    finally:
        journal.close()
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    from rich.table import Table

    table = Table(title=f"playbook runs in {path}")
    for column in ("id", "when", "playbook", "target", "who", "trigger", "status", "changes"):
        table.add_column(column, overflow="fold")
    for run in runs:
        changed = [c for c in run.get("changes", []) if not c.get("unchanged")]
        summary = "; ".join(f"{c['knob']} {c['before']}->{c['after']}" for c in changed[:3])
        if len(changed) > 3:
            summary += f"; +{len(changed) - 3}"
        table.add_row(
            str(run["id"]),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["ts"])),
            run["playbook"],
            run["target"],
            str(run.get("who", "")),
            run["trigger"],
            run["status"],
            summary,
        )
    _console().print(table)
    return 0
