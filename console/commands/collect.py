"""`quell collect`: the headless collector daemon."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.argtypes import PORT
from console.errors import UsageError

if TYPE_CHECKING:
    from collectors.config import Config


def register(subparsers: Any) -> None:
    collect = subparsers.add_parser(
        "collect",
        help="run the headless collector: sources -> store, with its own /metrics",
        description=(
            "Collect every source named in the config once per interval, write the samples "
            "and events to the store (SQLite, WAL) and serve /metrics and /status on "
            "metrics_host:metrics_port. Without --config, watch the running lab (gateway, "
            "every engine, the gateway's access log, this host, GPUs) into <lab dir>/quell.db "
            "and follow its replicas as they change. SIGTERM or Ctrl-C stops after writing "
            "what is buffered; SIGHUP reloads the config. See docs/quell.example.toml."
        ),
    )
    collect.add_argument(
        "--config", type=Path, metavar="FILE", help="the daemon's TOML config (default: the lab)"
    )
    collect.add_argument(
        "--metrics-port",
        type=PORT,
        metavar="PORT",
        help="serve /metrics on this port instead of the config's (0: a free port)",
    )
    collect.add_argument(
        "--check",
        action="store_true",
        help="check the config, list what it would collect, and exit",
    )
    collect.set_defaults(handler=run_collect)


def _loader(args: argparse.Namespace) -> tuple[Any, Path | None]:
    """A function that (re)reads the config, and the file whose changes mean "reload"."""
    from dataclasses import replace

    from collectors.config import ConfigError, lab_config, load_config

    def overridden(config: Config) -> Config:
        if args.metrics_port is None:
            return config
        return replace(config, daemon=replace(config.daemon, metrics_port=args.metrics_port))

    if args.config is not None:
        path: Path = args.config
        return (lambda: overridden(load_config(path))), None

    from inference.lab.state import LabNotRunning, read_state, state_path

    def from_lab() -> Config:
        try:
            return overridden(lab_config(read_state()))
        except LabNotRunning as problem:
            raise ConfigError(f"no --config given and {problem}") from None

    return from_lab, state_path()


def run_collect(args: argparse.Namespace) -> int:
    import asyncio

    from collectors.config import ConfigError

    load, watch = _loader(args)
    try:
        config = load()
    except ConfigError as problem:
        raise UsageError(str(problem)) from None
    if args.check:
        return _check(config)

    from collectors.daemon import Daemon
    from inference.logs import configure_logging

    configure_logging()
    daemon = Daemon(config, reload=load, watch=watch)
    from collectors.diagnosis_loop import DiagnosisLoop

    diagnosis = DiagnosisLoop(daemon)
    daemon.on_tick.append(diagnosis)
    _playbooks(daemon, diagnosis, config)
    try:
        return asyncio.run(daemon.run())
    except ConfigError as problem:
        raise UsageError(str(problem)) from None


def _playbooks(daemon: Any, diagnosis: Any, config: Config) -> None:
    """Auto playbooks on verdicts, and the Alertmanager receiver when its secret is set."""
    import os

    from playbooks.loader import load_catalog
    from playbooks.model import PlaybookError
    from playbooks.triggers import WEBHOOK_PATH, AlertmanagerReceiver, AutoStarter, Starter

    settings = config.playbooks
    try:
        catalog = load_catalog(settings.directories)
    except PlaybookError as error:
        raise UsageError(str(error)) from None
    for mapping in settings.alerts:
        if mapping.playbook not in catalog:
            raise UsageError(
                f"{config.origin}: playbooks.alerts maps to unknown playbook {mapping.playbook!r}"
            )
    starter = Starter(config, catalog)
    daemon.on_tick.append(AutoStarter(diagnosis, starter))
    secret = os.environ.get(settings.webhook_secret_env, "")
    if secret:
        daemon.routes[WEBHOOK_PATH] = AlertmanagerReceiver(daemon, starter, secret)


def _check(config: Config) -> int:
    import asyncio

    from collectors.config import ConfigError
    from collectors.daemon import build_sources
    from collectors.http import make_client

    async def describe() -> list[str]:
        async with make_client() as client:
            sources = build_sources(config, client)
            lines = [f"{s.name}: {s.describe}" for s in sources]
            for source in sources:
                await source.close()
            return lines

    try:
        lines = asyncio.run(describe())
    except ConfigError as problem:
        raise UsageError(str(problem)) from None
    print(
        f"config {config.origin}: store {config.store.path}, every {config.daemon.interval_s:g} s"
    )
    for line in lines:
        print(f"  {line}")
    return 0
