"""`quell demo` on screen: the scripted incident behind the console.

The lab, the collector loop, the traffic and the playbook runs live in a
thread with an event loop of their own (``console.demo``); the console, in
the main thread, attaches to the store that loop writes, as it would to a
daemon's. Before each playbook the demo asks on screen with the plan's
current -> new values (``--auto`` runs without asking). Quitting cancels the
script and its ``finally`` stops the lab.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from console.demo import Demo, DemoEvent

READY_WAIT_S = 90.0
INBOX_POLL_S = 0.1
NOTIFY_KINDS = {"phase": "information", "verdict": "warning", "recovered": "information",
                "problem": "error", "summary": "information"}  # fmt: skip


class _Script(threading.Thread):
    """Runs the demo's loop; ``ready`` once the store is being written."""

    def __init__(self, demo: Demo) -> None:
        super().__init__(name="quell-demo", daemon=True)
        self.demo = demo
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.ok: bool | None = None
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.ready.set()
            self.loop.close()

    async def _main(self) -> None:
        self.task = asyncio.current_task()
        demo = self.demo
        try:
            await demo.start()
            from collectors.store import writer_pid

            deadline = time.monotonic() + 30
            # The daemon takes the store's writer lock on its first tick; the
            # console attaches once it holds it (no event to wait on across).
            while writer_pid(demo.store_path) is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            self.ready.set()
            self.ok = await demo.run()
        except asyncio.CancelledError:
            pass
        except Exception as error:  # reported on screen and on exit
            self.failed = error
            demo.emit("problem", f"the demo stopped: {error}")
        finally:
            self.ready.set()
            await demo.stop()

    def cancel(self) -> None:
        if self.task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.task.cancel)


def run_console_demo(args: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        from console.commands.demo import run_headless

        print("quell: no terminal here; running --headless", file=sys.stderr)
        return run_headless(args)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return _run(args.keep.resolve(), args)
    with tempfile.TemporaryDirectory(prefix="quell-demo-") as tmp:
        return _run(Path(tmp), args)


def _run(directory: Path, args: argparse.Namespace) -> int:
    from console.tui.feeds import plan_feed
    from console.tui.logcapture import captured_logs
    from console.tui.settings import load_settings
    from console.tui.views.playbooks import ConfirmPlan, plan_text

    # The script's thread never calls into the console: Textual's
    # call_from_thread raises before the app runs (the first phase event can
    # come that early) and blocks the caller until the UI answers, which
    # would stall the collector loop behind a busy screen. It leaves work in
    # this inbox instead, and the console drains it on a timer.
    inbox: queue.SimpleQueue[Callable[[Any], None]] = queue.SimpleQueue()

    def on_event(event: DemoEvent) -> None:
        severity = NOTIFY_KINDS.get(event.kind)
        if severity is not None:
            inbox.put(lambda app: app.notify(event.text, severity=severity, timeout=8))

    async def confirm(name: str, plan: Any) -> bool:
        if args.auto:
            return True
        answer: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def answered(ok: bool | None) -> None:
            if not answer.done():
                answer.set_result(bool(ok))

        def ask(app: Any) -> None:
            title = f"Run {name}? These values change now (y/n):"
            app.push_screen(ConfirmPlan(title, plan_text(plan), plan.dangerous), callback=answered)

        inbox.put(ask)
        return await asyncio.wrap_future(answer)

    demo = Demo(directory, args.duration, confirm=confirm, on_event=on_event)
    script = _Script(demo)
    print(f"quell demo: starting the lab and the collector in {directory} ...", flush=True)
    script.start()
    script.ready.wait(READY_WAIT_S)
    if script.failed is not None or not demo.store_path.exists():
        script.cancel()
        script.join(30)
        print(f"quell demo: could not start: {script.failed}", file=sys.stderr)
        return 1
    with captured_logs() as logs:
        app = _demo_console(inbox)(plan_feed(store=demo.store_path), load_settings(None), logs=logs)
        try:
            app.run()
        finally:
            script.cancel()
            script.join(60)
    for event in demo.events:
        if event.kind in ("verdict", "playbook", "recovered", "summary", "problem"):
            print(event.line())
    # Read again: the script may have failed while the console was up.
    failed: BaseException | None = script.failed
    if failed is not None:
        print(f"quell demo: stopped by an error: {failed}", file=sys.stderr)
        return 1
    if script.ok:
        print("demo: every verdict found and fixed")
        return 0
    print("demo: stopped before the end" if script.ok is None else "demo: something was missed")
    return 0 if script.ok is None else 1


def _demo_console(inbox: queue.SimpleQueue[Callable[[Any], None]]) -> type[Any]:
    from console.tui.app import QuellConsole

    class DemoConsole(QuellConsole):
        def on_ready(self) -> None:
            self._drain_inbox()
            self.set_interval(INBOX_POLL_S, self._drain_inbox)

        def _drain_inbox(self) -> None:
            while True:
                try:
                    work = inbox.get_nowait()
                except queue.Empty:
                    return
                work(self)

    return DemoConsole
