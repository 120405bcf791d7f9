"""`quell lab`: run the bundled gateway and engines, scale them, break them, stop them."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from console.argtypes import float_range, int_range
from console.errors import UsageError

READY_WAIT_S = 60.0
DOWN_WAIT_S = 15.0


def register(subparsers: Any) -> None:
    lab = subparsers.add_parser(
        "lab",
        help="the bundled lab: gateway + engine replicas on loopback",
        description=(
            "Run the bundled gateway and N engine replicas as child processes on free "
            "127.0.0.1 ports. The lab's state file (URLs, client keys, admin tokens, log "
            "paths, pids) lives under $QUELL_STATE_DIR, else $XDG_STATE_HOME/quell, else "
            "~/.local/state/quell, with mode 0600; every other quell command finds the lab there."
        ),
    )
    actions = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    up = actions.add_parser("up", help="start the lab and wait until every part is healthy")
    up.add_argument("--replicas", type=int_range(1, 32), help="engine replicas (default 2)")
    up.add_argument("--config", type=Path, help="lab config file (TOML): engine, gateway, keys")
    up.add_argument(
        "--detach", action="store_true", help="return once healthy; the lab runs in the background"
    )
    up.set_defaults(handler=lab_up)

    status = actions.add_parser("status", help="show the running lab")
    status.add_argument("--json", action="store_true", help="the state as JSON, for scripts")
    status.set_defaults(handler=lab_status)

    scale = actions.add_parser("scale", help="add or remove engine replicas")
    scale.add_argument("replicas", type=int_range(1, 32), help="the number of replicas wanted")
    scale.set_defaults(handler=lab_scale)

    fault = actions.add_parser(
        "fault",
        help="inject or clear a fault on one replica or all",
        description="Change a running replica through its admin API, for drills.",
    )
    fault.add_argument("replica", help="a replica index (as in engine-N) or 'all'")
    kind = fault.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--slowdown", type=float_range(1.0, 1000.0), help="every step takes F times as long"
    )
    kind.add_argument("--stall", action="store_true", help="running sequences stop progressing")
    kind.add_argument("--error-rate", type=float_range(0.0, 1.0), help="fail this fraction")
    kind.add_argument(
        "--dependency-ms", type=float_range(0.0, 600_000.0),
        help="each request waits this long on a slow downstream call, holding its slot",
    )  # fmt: skip
    kind.add_argument("--slots", type=int_range(1, 4096), help="change the batch width")
    kind.add_argument("--crash", action="store_true", help="the replica's process exits at once")
    kind.add_argument("--clear", action="store_true", help="clear every fault")
    fault.set_defaults(handler=lab_fault)

    down = actions.add_parser("down", help="stop the lab and every process it started")
    down.set_defaults(handler=lab_down)


# -- up ----------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Any:
    from inference.lab.config import LabConfigError, load_lab_config

    try:
        config = load_lab_config(args.config)
    except LabConfigError as error:
        raise UsageError(str(error)) from None
    if args.replicas:
        from dataclasses import replace

        config = replace(config, replicas=args.replicas)
    return config


def _refuse_second_lab() -> None:
    from inference.lab.state import LabNotRunning, read_state

    try:
        state = read_state()
    except LabNotRunning:
        return
    raise UsageError(
        f"a lab is already running (supervisor pid {state['supervisor_pid']}, gateway "
        f"{state['gateway']['url']}); stop it with `quell lab down`"
    )


def lab_up(args: argparse.Namespace) -> int:
    config = _config(args)
    _refuse_second_lab()
    if args.detach:
        return _up_detached(args)
    return _up_foreground(config)


def _up_foreground(config: Any) -> int:
    import asyncio

    from inference.lab.state import lab_dir
    from inference.lab.supervisor import LabError, Supervisor
    from inference.logs import configure_logging

    configure_logging()

    async def run() -> int:
        supervisor = Supervisor(config, lab_dir())
        loop = asyncio.get_running_loop()
        # SIGHUP too: a lab started in an SSH session must not outlive it.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, supervisor.request_stop)
        try:
            await supervisor.start()
        except LabError as error:
            print(f"quell: the lab did not start: {error}", file=sys.stderr)
            return 1
        _print_summary(supervisor.describe())
        print("Ctrl-C stops the lab.", flush=True)
        await supervisor.wait_stopped()
        await supervisor.stop()
        print("lab stopped", flush=True)
        return 0

    return asyncio.run(run())


def _up_detached(args: argparse.Namespace) -> int:
    from inference.lab.state import ensure_private_dir, lab_dir, pid_alive, read_state

    directory = ensure_private_dir(lab_dir())
    log_path = directory / "supervisor.log"
    argv = [sys.executable, "-m", "console", "lab", "up"]
    if args.replicas:
        argv += ["--replicas", str(args.replicas)]
    if args.config:
        argv += ["--config", str(args.config.resolve())]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + READY_WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            print(f"quell: the lab did not start; {log_path} ends with:\n{tail}", file=sys.stderr)
            return 1
        try:
            state = read_state()
        except Exception:  # not written yet, or half-written: keep waiting
            state = None
        if state and state.get("supervisor_pid") == process.pid and state["status"] == "ready":
            _print_summary(state)
            print(f"The lab runs in the background (log: {log_path}); `quell lab down` stops it.")
            return 0
        time.sleep(0.1)
    if pid_alive(process.pid):
        os.kill(process.pid, signal.SIGTERM)
    print(
        f"quell: the lab was not ready within {READY_WAIT_S:g} s; see {log_path}", file=sys.stderr
    )
    return 1


def _print_summary(state: dict[str, Any]) -> None:
    gateway = state["gateway"]
    print(
        f"gateway   {gateway['url']}   (pid {gateway['pid']}, access log {gateway['access_log']})"
    )
    for engine in state["engines"]:
        print(f"{engine['name']:<9} {engine['url']}   (pid {engine['pid']})")
    keys = ", ".join(f"{k['name']} ({k['priority']})" for k in state["keys"])
    print(f"keys      {keys}: secrets in `quell lab status --json`")
    print(f"state     {state['lab_dir']}/lab.json", flush=True)


# -- status, scale, fault ----------------------------------------------------


def _state() -> dict[str, Any]:
    from inference.lab.state import LabNotRunning, read_state

    try:
        return read_state()
    except LabNotRunning as error:
        raise UsageError(str(error)) from None


def _live_health(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def lab_status(args: argparse.Namespace) -> int:
    state = _state()
    state["gateway"]["healthy"] = _live_health(state["gateway"]["url"])
    for engine in state["engines"]:
        engine["healthy"] = engine.get("exit_status") is None and _live_health(engine["url"])
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lab (supervisor pid {state['supervisor_pid']})")
    for column in ("part", "url", "pid", "health"):
        table.add_column(column)

    def health(part: dict[str, Any]) -> str:
        if part.get("exit_status") is not None:
            return f"[red]exited ({part['exit_status']})[/red]"
        return "[green]healthy[/green]" if part["healthy"] else "[red]not answering[/red]"

    gateway = state["gateway"]
    table.add_row("gateway", gateway["url"], str(gateway["pid"]), health(gateway))
    for engine in state["engines"]:
        table.add_row(engine["name"], engine["url"], str(engine["pid"]), health(engine))
    Console().print(table)
    return 0


def _control(state: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    from inference.lab.supervisor import control

    try:
        answer = asyncio.run(control(Path(state["control_socket"]), request))
    except (OSError, TimeoutError, ValueError) as error:
        raise UsageError(f"the lab supervisor did not answer: {error}") from None
    if not answer.get("ok"):
        raise UsageError(answer.get("error", "the lab supervisor refused"))
    return answer


def lab_scale(args: argparse.Namespace) -> int:
    answer = _control(_state(), {"op": "scale", "replicas": args.replicas})
    print(f"replicas: {answer['before']} -> {answer['after']}")
    return 0


def lab_fault(args: argparse.Namespace) -> int:
    import httpx

    state = _state()
    engines = state["engines"]
    if args.replica == "all":
        targets = [e for e in engines if e.get("exit_status") is None]
    else:
        try:
            wanted = int(args.replica)
        except ValueError:
            raise UsageError(f"replica must be an index or 'all', not {args.replica!r}") from None
        targets = [e for e in engines if e["index"] == wanted]
        if not targets:
            known = ", ".join(str(e["index"]) for e in engines)
            raise UsageError(f"no replica {wanted}; replicas: {known}")
    if args.clear:
        method, path, body = "DELETE", "/admin/faults", None
    elif args.crash:
        method, path, body = "POST", "/admin/crash", None
    else:
        body = {
            key: value
            for key, value in (
                ("slowdown", args.slowdown),
                ("stalled", True if args.stall else None),
                ("error_rate", args.error_rate),
                ("dependency_ms", args.dependency_ms),
                ("slots", args.slots),
            )
            if value is not None
        }
        method, path = "POST", "/admin/faults"
    failed = 0
    for engine in targets:
        headers = {"Authorization": f"Bearer {engine['admin_token']}"}
        try:
            response = httpx.request(
                method, f"{engine['url']}{path}", json=body, headers=headers, timeout=5
            )
        except httpx.HTTPError as error:
            print(f"{engine['name']}: unreachable ({type(error).__name__})", file=sys.stderr)
            failed += 1
            continue
        if response.status_code >= 300:
            print(f"{engine['name']}: {response.status_code} {response.text}", file=sys.stderr)
            failed += 1
        elif args.crash:
            print(f"{engine['name']}: crashed")
        else:
            change = response.json()
            print(f"{engine['name']}: {_diff(change['before'], change['after'])}")
    return 1 if failed else 0


def _diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    changes = [f"{k} {before[k]} -> {after[k]}" for k in after if before.get(k) != after[k]]
    return ", ".join(changes) or "unchanged"


# -- down --------------------------------------------------------------------


def _is_ours(pid: int) -> bool:
    """Guard against pid reuse: only processes running quell are signalled."""
    try:
        return b"console" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def lab_down(args: argparse.Namespace) -> int:
    from inference.lab.state import LabNotRunning, pid_alive, read_state, state_path

    try:
        state = read_state(require_alive=False)
    except LabNotRunning:
        print("no lab is running")
        return 0
    supervisor = state.get("supervisor_pid")
    if isinstance(supervisor, int) and pid_alive(supervisor) and _is_ours(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_WAIT_S
        while pid_alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(supervisor):
            print(f"supervisor {supervisor} did not stop in {DOWN_WAIT_S:g} s; killing it")
            os.kill(supervisor, signal.SIGKILL)
    # Whatever the supervisor left behind (it was killed, or a child hung) goes too.
    pids = [state["gateway"].get("pid")] + [e.get("pid") for e in state["engines"]]
    for pid in pids:
        if pid and pid_alive(pid) and _is_ours(pid):
            os.kill(pid, signal.SIGKILL)
    state_path().unlink(missing_ok=True)
    print("lab stopped")
    return 0
