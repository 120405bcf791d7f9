"""The console application: the frame, the refresh loop, and every command's action.

Each refresh reads one ``Snapshot`` as of the clock's moment and hands it
to the visible screen inside one batch update; widgets compare what they
are given with what they show and repaint only on a difference. Refreshes
follow the in-process collector's ticks, or a timer (``refresh_s``) when
attached to a daemon or replaying. Store reads run in an exclusive worker:
a newer refresh (a seek, a keypress) replaces one still reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events, work
from textual.actions import parse as parse_action
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Static

from collectors.model import Event
from collectors.store import Store, StoreError
from console.tui import hangup
from console.tui.clock import LiveClock, ReplayClock
from console.tui.feeds import ATTACH, COLLECT, REPLAY, FeedPlan, InProcessCollector, StartError
from console.tui.follow import EventFollower
from console.tui.keys import (
    BY_ACTION,
    COMMANDS,
    LIVE,
    VIEW_IDS,
    VIEWS,
    Command,
    Context,
    available,
    display_key,
    keys_of,
)
from console.tui.logcapture import CapturedLogs
from console.tui.settings import THEMES, Settings
from console.tui.snapshot import AdviceView, Snapshot, Wants, read_advice, read_snapshot
from console.tui.span import store_span
from console.tui.views import Update, View, view_class
from console.tui.widgets.banner import VerdictStrip
from console.tui.widgets.chrome import ReplayBar, StatusLine, TabBar
from console.tui.widgets.help import HelpScreen

if TYPE_CHECKING:
    from console.tui.views.incidents import IncidentsView
    from console.tui.views.logs import LogsView
    from console.tui.views.queues import QueuesView

MIN_WIDTH, MIN_HEIGHT = 80, 24
WIDE_WIDTH = 120
ADVICE_EVERY_S = 5.0
EVENTS_KEPT = 5000
REPLAY_LEAD_S = 30.0  # an incident replays from this long before it opened
# Tab must switch screens even where a widget would take it for focus.
PRIORITY_COMMANDS = frozenset({"view.next", "view.previous"})
# Screens that show the verdict in full need no one-line strip above them.
OWN_VERDICT = frozenset({"overview", "diagnosis"})


def command_bindings(commands: Iterable[Command]) -> list[BindingType]:
    return [
        Binding(c.keys, c.action, c.title, show=False, id=c.id, priority=c.id in PRIORITY_COMMANDS)
        for c in commands
    ]


def _action_key(action: str) -> tuple[str, tuple[object, ...]]:
    _, name, params = parse_action(action)
    return name, tuple(params)


ACTIONS: dict[tuple[str, tuple[object, ...]], Command] = {
    _action_key(action): command for action, command in BY_ACTION.items()
}


class QuellConsole(App[int]):
    TITLE = "quell"
    BINDINGS: ClassVar[list[BindingType]] = command_bindings(COMMANDS)
    CSS = """
    Screen { layout: vertical; }
    #frame { height: 1fr; }
    #body { height: 1fr; }
    #replay-bar { display: none; }
    Screen.-replay #replay-bar { display: block; }
    Screen.-own-verdict #strip { display: none; }
    #too-small { display: none; }
    Screen.-too-small #frame { display: none; }
    Screen.-too-small #too-small {
        display: block; height: 1fr; content-align: center middle; text-style: bold;
    }
    """

    def __init__(
        self,
        plan: FeedPlan,
        settings: Settings | None = None,
        *,
        read_only: bool = False,
        logs: CapturedLogs | None = None,
        replay_from: float | None = None,
        speed: float = 1.0,
        playing: bool = True,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.settings = settings or Settings()
        self.read_only = read_only
        self.captured = logs
        self.store: Store | None = None
        self.collector: InProcessCollector | None = None
        self.clock: LiveClock | ReplayClock = LiveClock()
        self.follower = EventFollower()
        self.snapshot: Snapshot | None = None
        self.advice: dict[str, AdviceView] = {}
        self.view_id = VIEWS[0].id
        self.event_log: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._playbook_runner: Any = None
        self._replay_from = replay_from
        self._speed = speed
        self._playing = playing
        self._advised_at = float("-inf")
        self._advised_for: float | None = None
        self._refreshed_at = float("-inf")
        self._last_timer = time.monotonic()
        self._leaving = False
        self._signals: hangup.SignalGuard | None = None
        self._watchdog: hangup.TerminalWatchdog | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.theme = THEMES[self.settings.theme]
        self.set_keymap(self.settings.keys)
        self.shown_keys = {c.id: display_key(keys_of(c, self.settings.keys)) for c in COMMANDS}

    # -- layout ------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Vertical(id="frame"):
            yield TabBar(id="tabs")
            yield VerdictStrip(id="strip")
            with ContentSwitcher(id="body", initial=self.view_id):
                yield view_class(self.view_id)()
            yield ReplayBar(id="replay-bar")
            yield StatusLine(id="status")
        yield Static(id="too-small")

    async def on_mount(self) -> None:
        self._fit(self.size.width, self.size.height)
        self.screen.set_class(True, "-own-verdict")
        self._show_tabs()
        if not self.is_headless:
            self._guard_terminal()
        try:
            await self._open()
        except (StartError, StoreError, sqlite3.Error, OSError) as problem:
            # The collector's own words are in the captured log; say them too.
            said = [e.text for e in (self.captured.drain() if self.captured else ())
                    if e.severity in ("error", "critical")]  # fmt: skip
            await self.leave(1, "; ".join([f"quell console: {problem}", *said[-2:]]))
            return
        self.set_interval(self.settings.refresh_s, self._on_timer)
        self.refresh_data()

    async def _open(self) -> None:
        plan = self.plan
        if plan.kind == COLLECT:
            self.collector = InProcessCollector(plan, self._collector_ticked)
            await self.collector.start()
        self.store = await Store.open(plan.store_path, read_only=True)
        if plan.kind == REPLAY:
            self.clock = await self._replay_clock(self._replay_from, self._playing)
            self.clock.speed = self._speed
            self._enter_mode()

    async def _replay_clock(self, start_at: float | None, playing: bool) -> ReplayClock:
        span = await asyncio.to_thread(store_span, self.plan.store_path)
        if span is None:
            raise StoreError(f"{self.plan.store_path} holds no samples to replay")
        first, last = span
        if start_at is None:
            incidents = await self.store.incidents() if self.store else []
            start_at = incidents[0]["opened"] - REPLAY_LEAD_S if incidents else first
        clock = ReplayClock(first, last, first, playing=playing)
        clock.seek_to(start_at)
        return clock

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width, event.size.height)

    def _fit(self, width: int, height: int) -> None:
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        self.screen.set_class(small, "-too-small")
        self.screen.set_class(width >= WIDE_WIDTH, "-wide")
        if small:
            need = f"terminal too small, need {MIN_WIDTH} x {MIN_HEIGHT}"
            self.query_one("#too-small", Static).update(f"{need} (this one is {width} x {height})")
        elif self.snapshot is not None:
            self._apply(self.snapshot, [], False)

    # -- hang-up safety ------------------------------------------------------------

    def _guard_terminal(self) -> None:
        loop = asyncio.get_running_loop()
        self._event_loop = loop
        self._signals = hangup.SignalGuard(loop, self._on_signal)
        self._signals.install()
        fds = hangup.terminal_fds()
        if fds:
            self._watchdog = hangup.TerminalWatchdog(fds, self._terminal_gone)
            self._watchdog.start()

    def _on_signal(self, sig: signal.Signals) -> None:
        self._spawn(self.leave(0, hung_up=sig == signal.SIGHUP))

    def _terminal_gone(self) -> None:
        # Called on the watchdog's thread: nothing here may wait on the
        # event loop, which may be what is stuck.
        hangup.arm_hard_exit()
        loop = self._event_loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: it is leaving
                loop.call_soon_threadsafe(lambda: self._spawn(self.leave(0, hung_up=True)))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def leave(self, code: int = 0, message: str | None = None, hung_up: bool = False) -> None:
        """Stop the collector (it writes what it buffered), close the store, exit.

        ``hung_up``: the terminal is gone, so there is no screen to restore,
        and Textual's restoring it can block for good: its writer thread dies
        on the first failed write and the next write waits on its full queue.
        Once the data is safe the process ends at once instead.
        """
        if self._leaving:
            return
        self._leaving = True
        if self._watchdog is not None:
            self._watchdog.stop()
        await self._release()
        if self._signals is not None:
            self._signals.remove()
        if hung_up:
            hangup.end_now(code)
        self.exit(code, return_code=code, message=message)

    async def _release(self) -> None:
        """Stop the collector and close the store; safe to call twice."""
        self.workers.cancel_group(self, "refresh")
        collector, self.collector = self.collector, None
        if collector is not None:
            await collector.stop()
        store, self.store = self.store, None
        if store is not None:
            await store.close()

    async def on_unmount(self) -> None:
        # An exit that did not come through ``leave`` (a test's pilot, an
        # error) still must not leave the store's connection thread behind.
        await self._release()

    # -- refreshing ------------------------------------------------------------------

    def _collector_ticked(self, now: float) -> None:
        if self.clock.mode != LIVE:
            return
        # The first tick is shown at once, however recently the frame before
        # it was drawn: it makes the first frame with data. Later ticks at
        # most once per refresh_s.
        empty = self.snapshot is None or not self.snapshot.targets
        if empty or time.monotonic() - self._refreshed_at >= 0.9 * self.settings.refresh_s:
            self.refresh_data()

    def _on_timer(self) -> None:
        if not self.is_running:
            # A tick can land while the app tears its widgets down.
            return
        real = time.monotonic()
        elapsed, self._last_timer = real - self._last_timer, real
        clock = self.clock
        if isinstance(clock, ReplayClock):
            if self.plan.kind != REPLAY:
                clock.extend(time.time())
            if clock.advance(elapsed) or (not clock.playing and self._pending_changes()):
                self.refresh_data()
            elif self.snapshot is not None:
                self._show_replay_bar()
            return
        stale = real - self._refreshed_at > 2.5 * self.settings.refresh_s
        if self.plan.kind == ATTACH or stale:
            # In-process, ticks drive refreshes; the timer only covers a stalled collector.
            self.refresh_data()

    def _pending_changes(self) -> bool:
        return self.snapshot is None or self.snapshot.now != self.clock.now()

    def wants(self) -> Wants:
        view = self.current_view()
        return Wants(
            charts=self.view_id == "overview",
            detail=view.detail_target(),
            chart_s=self.settings.chart_minutes * 60.0,
        )

    @work(exclusive=True, group="refresh")
    async def refresh_data(self) -> None:
        store = self.store
        if store is None or self._leaving:
            return
        now = self.clock.now()
        try:
            gpu_status = self.collector.gpu_status() if self.collector else None
            snapshot = await read_snapshot(store, now, self.wants(), gpu_status)
            found, reset = await self.follower.read(store, now)
            if self.captured is not None:
                found += self.captured.drain()
            if self.view_id == "diagnosis":
                await self._advise(store, snapshot)
        except (sqlite3.Error, StoreError, ValueError) as problem:
            self.notify(f"cannot read the store: {problem}", severity="error", timeout=5)
            return
        self._refreshed_at = time.monotonic()
        self._apply(snapshot, found, reset)

    async def _advise(self, store: Store, snapshot: Snapshot) -> None:
        moved = self._advised_for is None or abs(snapshot.now - self._advised_for) > ADVICE_EVERY_S
        if time.monotonic() - self._advised_at < ADVICE_EVERY_S and not moved:
            return
        advice = {}
        for queue in snapshot.queues:
            advice[queue.name] = await read_advice(store, snapshot.now, queue.name, queue.replicas)
        self.advice = advice
        self._advised_at = time.monotonic()
        self._advised_for = snapshot.now

    def _apply(self, snapshot: Snapshot, found: list[Event], reset: bool) -> None:
        if not self.is_running:
            return  # a read that finished after the app began to close
        self.snapshot = snapshot
        with self.batch_update():
            self.query_one(VerdictStrip).set_verdicts(snapshot.queues, snapshot.now)
            self._log_events(found, reset)
            self.current_view().show(self._update(snapshot))
            self._show_status()
            self._show_replay_bar()

    def _log_events(self, found: list[Event], reset: bool) -> None:
        # Kept here, not only in the Logs screen: that screen may not exist
        # yet, and has the history when it is first shown.
        if reset:
            self.event_log.clear()
        self.event_log.extend(found)
        logs = self._mounted("logs")
        if logs is not None:
            from console.tui.views.logs import LogsView

            assert isinstance(logs, LogsView)
            logs.add_events(found, reset)

    def _mounted(self, view_id: str) -> View | None:
        found = self.query(f"#{view_id}").results(View)
        return next(found, None)

    async def _ensure_view(self, view_id: str) -> View:
        view = self._mounted(view_id)
        if view is not None:
            return view
        view = view_class(view_id)()
        await self.query_one(ContentSwitcher).mount(view)
        if view_id == "logs":
            from console.tui.views.logs import LogsView

            assert isinstance(view, LogsView)
            view.add_events(list(self.event_log), reset=True)
        if view_id == "playbooks":
            from console.tui.views.playbooks import PlaybooksView

            assert isinstance(view, PlaybooksView)
            runs = await self._playbook_runs()
            view.load(runs.catalog, runs.problem)
            self.run_worker(self._load_history(), group="playbooks")
        return view

    def _update(self, snapshot: Snapshot) -> Update:
        return Update(snapshot, self.clock.mode, self.read_only, self.shown_keys, self.advice)

    def _show_status(self) -> None:
        snapshot = self.snapshot
        describe = self.plan.describe
        if self.clock.mode != LIVE and self.plan.kind != REPLAY:
            describe = f"replaying the store ({self.shown_keys['replay.live']}: back to live)"
        self.query_one(StatusLine).set_status(
            self.clock.mode, self.clock.now(), describe, self.read_only,
            None if snapshot is None else snapshot.newest,
        )  # fmt: skip

    def _show_replay_bar(self) -> None:
        if isinstance(self.clock, ReplayClock):
            self.query_one(ReplayBar).set_clock(self.clock)

    def _show_tabs(self) -> None:
        self.query_one(TabBar).set_active(self.view_id, self.settings.keys)

    # -- views -------------------------------------------------------------------------

    def current_view(self) -> View:
        return self.query_one(f"#{self.view_id}", View)

    def context(self) -> Context:
        return Context(self.view_id, self.clock.mode, self.read_only, self.plan.kind != REPLAY)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        command = ACTIONS.get((action, tuple(parameters)))
        if command is None:
            return True
        return available(command, self.context())

    async def action_show_view(self, view_id: str) -> None:
        if view_id not in VIEW_IDS:
            return
        charts_before = self.wants()
        await self._ensure_view(view_id)
        self.view_id = view_id
        self.query_one(ContentSwitcher).current = view_id
        self.screen.set_class(view_id in OWN_VERDICT, "-own-verdict")
        self._show_tabs()
        view = self.current_view()
        view.focus_main()
        if self.snapshot is not None:
            view.show(self._update(self.snapshot))
        if self.wants() != charts_before or view_id == "diagnosis":
            self.refresh_data()
        self.refresh_bindings()

    async def action_cycle_view(self, step: int) -> None:
        index = VIEW_IDS.index(self.view_id)
        await self.action_show_view(VIEW_IDS[(index + step) % len(VIEW_IDS)])

    def action_help(self) -> None:
        context = self.context()
        commands = [c for c in COMMANDS if available(c, context)]
        note = f"{self.clock.mode} · {self.plan.describe}"
        if self.read_only:
            note += " · read-only: actions hidden"
        self.push_screen(HelpScreen(commands, self.settings.keys, note))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        context = self.context()
        for command in COMMANDS:
            if command.palette and available(command, context):
                key = self.shown_keys[command.id]
                # Not "[key]": help text is markup, and "[b]" would turn bold.
                yield SystemCommand(
                    command.title, f"{command.help} · key {key}", self._runner(command.action)
                )

    def _runner(self, action: str) -> Any:
        async def run() -> None:
            await self.run_action(action)

        return run

    def action_toggle_theme(self) -> None:
        dark = self.theme != THEMES["light"]
        self.theme = THEMES["light"] if dark else THEMES["dark"]
        self.settings = replace(self.settings, theme="light" if dark else "dark")

    async def action_quit(self) -> None:
        await self.leave(0)

    def _queues(self) -> QueuesView:
        from console.tui.views.queues import QueuesView

        return self.query_one(QueuesView)

    def _logs(self) -> LogsView:
        from console.tui.views.logs import LogsView

        return self.query_one(LogsView)

    def _incidents(self) -> IncidentsView:
        from console.tui.views.incidents import IncidentsView

        return self.query_one(IncidentsView)

    # -- queues -----------------------------------------------------------------------

    def action_open_target(self) -> None:
        opened = self._queues().open_selected()
        if opened is not None:
            self.refresh_data()

    def action_close_target(self) -> None:
        self._queues().close_detail()

    def action_sort_targets(self) -> None:
        column = self._queues().cycle_sort()
        self.notify(f"sorted by {column}", timeout=1.5)

    def action_reverse_targets(self) -> None:
        descending = self._queues().flip_order()
        self.notify("descending" if descending else "ascending", timeout=1.5)

    # -- logs -------------------------------------------------------------------------

    def action_filter_logs(self) -> None:
        self._logs().open_filter()

    def action_pause_logs(self) -> None:
        self._logs().toggle_pause()

    def action_clear_log_filter(self) -> None:
        self._logs().clear_filter()

    # -- replay -----------------------------------------------------------------------

    async def action_replay_incident(self) -> None:
        incident = self._incidents().selected()
        if incident is None or self.store is None:
            return
        start = incident.opened - REPLAY_LEAD_S
        if isinstance(self.clock, ReplayClock):
            self.clock.seek_to(start)
            self.clock.playing = True
        else:
            try:
                self.clock = await self._replay_clock(start, playing=True)
            except (StoreError, sqlite3.Error, OSError) as problem:
                self.notify(str(problem), severity="error")
                return
        self._enter_mode()
        self.follower = EventFollower()
        await self.action_show_view("overview")
        self.refresh_data()

    def _enter_mode(self) -> None:
        self.screen.set_class(self.clock.mode != LIVE, "-replay")
        self.refresh_bindings()

    def _replay(self) -> ReplayClock | None:
        return self.clock if isinstance(self.clock, ReplayClock) else None

    def _moved(self) -> None:
        self._show_replay_bar()
        self.refresh_data()

    def action_replay_toggle(self) -> None:
        if clock := self._replay():
            clock.toggle()
            self._last_timer = time.monotonic()
            self._moved()

    def action_replay_step(self, ticks: int) -> None:
        if clock := self._replay():
            clock.step(ticks)
            self._moved()

    def action_replay_seek(self, seconds: float) -> None:
        if clock := self._replay():
            clock.seek(seconds)
            self._moved()

    def action_replay_speed(self, factor: float) -> None:
        if clock := self._replay():
            clock.scale(factor)
            self._show_replay_bar()

    def action_replay_edge(self, edge: str) -> None:
        if clock := self._replay():
            clock.seek_to(clock.start if edge == "start" else clock.end)
            self._moved()

    def action_back_to_live(self) -> None:
        if self.plan.kind == REPLAY or self.clock.mode == LIVE:
            return
        self.clock = LiveClock()
        self.follower = EventFollower()
        self._enter_mode()
        self.refresh_data()

    # -- actions ------------------------------------------------------------------------

    async def _playbook_runs(self) -> Any:
        if self._playbook_runner is None:
            from console.tui.playbook_runs import ConsolePlaybooks

            self._playbook_runner = await asyncio.to_thread(
                ConsolePlaybooks, self.plan, self.read_only
            )
        return self._playbook_runner

    def _playbooks_view(self) -> Any:
        from console.tui.views.playbooks import PlaybooksView

        return self.query_one(PlaybooksView)

    async def _load_history(self) -> None:
        runs = await self._playbook_runs()
        view = self._playbooks_view()
        view.history = await runs.history()
        view.show_detail()

    def _verdict(self) -> Any:
        verdicts = self.snapshot.verdicts if self.snapshot else ()
        return verdicts[0] if verdicts else None

    async def action_plan_playbook(self) -> None:
        await self.action_show_view("playbooks")
        view = self._playbooks_view()
        name = view.selected()
        if name is None:
            return
        self.run_worker(self._plan(name), group="playbooks", exclusive=True)

    async def _plan(self, name: str) -> Any:
        from playbooks.runner import Plan

        runs = await self._playbook_runs()
        view = self._playbooks_view()
        view.plan_problem = ""
        found = await runs.plan(name, self._verdict())
        if isinstance(found, Plan):
            view.plan = found
        else:
            view.plan, view.plan_problem = None, found
        view.show_detail()
        return found

    async def action_run_playbook(self) -> None:
        if self.read_only:
            return
        was_here = self.view_id == "playbooks"
        await self.action_show_view("playbooks")
        view = self._playbooks_view()
        runs = await self._playbook_runs()
        if runs.busy:
            self.notify("a playbook is running; wait for it to finish", timeout=3)
            return
        name = view.selected() if was_here else None
        if name is None:
            verdict = self._verdict()
            if verdict is None or not verdict.playbooks:
                self.notify("no verdict open: select a playbook and press r", timeout=3)
                return
            name = verdict.playbooks[0]
            view.select(name)
        self.run_worker(self._confirm_and_run(name), group="playbooks", exclusive=True)

    async def _confirm_and_run(self, name: str) -> None:
        from console.tui.views.playbooks import ConfirmPlan, plan_text
        from playbooks.runner import Plan

        verdict = self._verdict()
        found = await self._plan(name)
        if not isinstance(found, Plan):
            return
        title = f"Run {name}? These values change now:"
        if not await self.push_screen_wait(ConfirmPlan(title, plan_text(found), found.dangerous)):
            self._playbooks_view().add_output(f"{name}: not confirmed, nothing changed")
            return
        view = self._playbooks_view()
        view.started(name)
        runs = await self._playbook_runs()

        def on_event(event: dict[str, Any]) -> None:
            from console.tui.views.playbooks import event_line

            view.add_output(event_line(event))

        outcome = await runs.run(name, verdict, on_event)
        if outcome.result is None:
            view.add_output(outcome.problem)
            self.notify(outcome.problem, severity="error", timeout=6)
        else:
            result = outcome.result
            view.add_output(f"{result.status}: {result.message} (run {result.run_id})")
            self.notify(f"{name}: {result.status}", timeout=4,
                        severity="information" if result.exit_code == 0 else "error")  # fmt: skip
        await self._load_history()

    async def action_undo_playbook(self) -> None:
        if self.read_only:
            return
        self.run_worker(self._confirm_and_undo(), group="playbooks", exclusive=True)

    async def _confirm_and_undo(self) -> None:
        from rich.text import Text

        from console.tui.views.playbooks import ConfirmPlan

        runs = await self._playbook_runs()
        view = self._playbooks_view()
        last = await runs.last_applied()
        if last is None:
            self.notify("no applied run to undo", timeout=3)
            return
        changed = [c for c in last.get("changes", []) if not c.get("unchanged")]
        body = Text()
        for change in reversed(changed):
            body.append(f"{change['knob']}: {change['after']} -> {change['before']}\n")
        title = f"Undo run {last['id']} ({last['playbook']})? These values go back:"
        if not await self.push_screen_wait(ConfirmPlan(title, body)):
            return
        view.started(f"undo of run {last['id']}")
        outcome = await runs.rollback(int(last["id"]))
        if outcome.result is None:
            view.add_output(outcome.problem)
        else:
            for change in outcome.result.changes:
                view.add_output(f"  {change.knob}: {change.before} -> {change.after}")
            view.add_output(f"{outcome.result.status}: {outcome.result.message}")
        await self._load_history()
