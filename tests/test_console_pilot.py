"""The console driven by its keys, headless, on the recorded surge (and a live source or two)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, RichLog

from collectors.model import Sample
from collectors.store import Store, writer_pid
from console.errors import UsageError
from console.tui.app import QuellConsole
from console.tui.clock import ReplayClock
from console.tui.feeds import ATTACH, COLLECT, plan_feed
from console.tui.settings import Settings
from console.tui.views.logs import LogsView
from console.tui.views.queues import QueuesView
from console.tui.widgets.help import HelpScreen
from tests.console_screens import replay_app, screen_colours, screen_text, settle, utc
from tests.console_store import T0, recorded_store

HEALTHY_AT, SURGE_AT, AFTER_AT = T0 + 50, T0 + 100, T0 + 150


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recorded_store(tmp_path_factory.mktemp("pilot") / "surge.db")


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    utc(monkeypatch)
    monkeypatch.delenv("NO_COLOR", raising=False)


def log_lines(app: QuellConsole) -> list[str]:
    return [strip.text for strip in app.query_one(LogsView).query_one(RichLog).lines]


def replay_clock(app: QuellConsole) -> ReplayClock:
    assert isinstance(app.clock, ReplayClock)
    return app.clock


# -- navigation --------------------------------------------------------------------


async def test_number_keys_and_tab_move_between_the_screens(recorded: Path) -> None:
    app = replay_app(recorded, SURGE_AT)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        assert app.view_id == "overview" and "IMBALANCE" in screen_text(app)
        for key, view, shows in (
            ("2", "queues", "refused"),
            ("3", "host", "watched processes"),
            ("4", "gpu", "No GPU to show"),
            ("5", "logs", "upstream_timeout"),
            ("6", "diagnosis", "capacity advice"),
            ("7", "playbooks", "tighten-limits"),
            ("8", "incidents", "incident 1 · gateway · producer_surge"),
        ):
            await pilot.press(key)
            await settle(pilot, app)
            assert app.view_id == view
            assert shows in screen_text(app), view
        await pilot.press("tab")
        assert app.view_id == "overview"
        await pilot.press("shift+tab")
        assert app.view_id == "incidents"


async def test_below_80x24_the_console_says_what_it_needs(recorded: Path) -> None:
    app = replay_app(recorded, SURGE_AT)
    async with app.run_test(size=(70, 20)) as pilot:
        await settle(pilot, app)
        text = screen_text(app)
        assert "terminal too small, need 80 x 24 (this one is 70 x 20)" in text
        assert "IMBALANCE" not in text


# -- logs -----------------------------------------------------------------------------


async def test_the_filter_shows_only_matching_lines_and_escape_clears_it(recorded: Path) -> None:
    app = replay_app(recorded, SURGE_AT)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        await pilot.press("5")
        everything = log_lines(app)
        assert len(everything) > 10 and any("queue_full" in line for line in everything)
        await pilot.press("slash", *"timeout", "enter")
        await settle(pilot, app)
        filtered = log_lines(app)
        assert filtered and all("timeout" in line for line in filtered)
        assert "filter 'timeout'" in screen_text(app)
        await pilot.press("escape")
        await settle(pilot, app)
        assert log_lines(app) == everything


async def test_pause_holds_new_lines_until_resumed(recorded: Path) -> None:
    app = replay_app(recorded, T0 + 95)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        await pilot.press("5", "p")
        before = log_lines(app)
        await pilot.press("right_square_bracket")  # ten seconds on: new queue_full lines
        await settle(pilot, app)
        assert log_lines(app) == before
        assert "PAUSED" in screen_text(app) and "new lines held" in screen_text(app)
        await pilot.press("p")
        await settle(pilot, app)
        after = log_lines(app)
        assert len(after) > len(before)
        assert any("CRIT engine-1 oom" in line for line in after)


async def test_severities_are_coloured_and_named(recorded: Path) -> None:
    app = replay_app(recorded, T0 + 110)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        await pilot.press("5")
        await settle(pilot, app)
        lines = app.query_one(LogsView).query_one(RichLog).lines
        styles = {}
        for strip in lines:
            for segment in strip:
                if segment.text in ("WARN", "ERR ", "CRIT") and segment.style is not None:
                    styles[segment.text] = segment.style
        assert set(styles) == {"WARN", "ERR ", "CRIT"}
        assert styles["CRIT"].bgcolor is not None  # the only one on a background
        assert len({str(s.color) for s in styles.values()}) == 3


# -- replay ----------------------------------------------------------------------------


async def test_replay_plays_pauses_steps_seeks_and_changes_speed(recorded: Path) -> None:
    app = replay_app(recorded, HEALTHY_AT)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        clock = replay_clock(app)
        assert "HEALTHY" in screen_text(app) and not clock.playing
        await pilot.press("full_stop", "full_stop")
        assert clock.now() == HEALTHY_AT + 2
        await pilot.press("comma")
        assert clock.now() == HEALTHY_AT + 1
        await pilot.press("right_curly_bracket")  # +60 s: 11 s into the surge
        await settle(pilot, app)
        assert clock.now() == HEALTHY_AT + 61
        assert "IMBALANCE" in screen_text(app) and "producer_surge" in screen_text(app)
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert clock.now() == HEALTHY_AT + 41
        await pilot.press("plus", "plus", "plus")
        assert clock.speed == 8.0
        await pilot.press("minus")
        assert clock.speed == 4.0
        await pilot.press("space")
        assert clock.playing
        started = clock.now()
        await asyncio.sleep(1.5)
        await pilot.pause()
        await pilot.press("space")
        assert not clock.playing
        moved = clock.now() - started
        assert 3.0 <= moved <= 12.0  # about 1.5 s x 4, timers permitting
        assert f"{clock.speed:g}x" in screen_text(app)
        await pilot.press("end")
        await settle(pilot, app)
        assert clock.now() == T0 + 179 and "HEALTHY" in screen_text(app)
        await pilot.press("home")
        assert clock.now() == T0


async def test_enter_on_an_incident_replays_it_from_before_it_opened(recorded: Path) -> None:
    app = replay_app(recorded, AFTER_AT)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await pilot.press("8")
        await settle(pilot, app)
        text = screen_text(app)
        assert "opened producer_surge" in text and "closed" in text
        await pilot.press("enter")
        await settle(pilot, app)
        clock = replay_clock(app)
        opened = T0 + 62  # the surge began at 60 s; the verdict opened two ticks later
        assert clock.playing and opened - 30 <= clock.now() < opened - 27
        assert app.view_id == "overview" and "HEALTHY" in screen_text(app)


# -- queues -------------------------------------------------------------------------------


async def test_queues_sort_by_column_and_open_a_target(recorded: Path) -> None:
    app = replay_app(recorded, SURGE_AT)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await pilot.press("2")
        await settle(pilot, app)
        table = app.query_one(QueuesView).query_one(DataTable)

        def order() -> list[str]:
            return [str(table.get_row_at(i)[0]).removeprefix("↳ ") for i in range(table.row_count)]

        assert order() == ["gateway", "engine-0", "engine-1"]  # each queue, then its replicas
        await pilot.press("s")  # by target name
        assert order() == ["engine-0", "engine-1", "gateway"]
        await pilot.press("o")
        assert order() == ["gateway", "engine-1", "engine-0"]
        await pilot.press("s", "o")  # by depth, ascending
        assert order()[-1] == "gateway"
        table.move_cursor(row=order().index("gateway"))
        await pilot.press("enter")
        await settle(pilot, app)
        text = screen_text(app)
        assert "gateway  queue · replicas engine-0, engine-1" in text
        assert "offered λ" in text  # its own signature chart
        await pilot.press("escape")
        await settle(pilot, app)
        assert "replicas engine-0" not in screen_text(app)


# -- commands, help, keys, read-only ----------------------------------------------------


async def test_help_and_palette_come_from_the_command_table(recorded: Path) -> None:
    app = replay_app(recorded, SURGE_AT)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Show Logs" in titles and "Play/pause replay" in titles
        # Playbooks act on live systems: a replayed recording offers none to run.
        assert "Run a playbook" not in titles
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        assert "view.logs" in text and "replay.play" in text
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("r")
        assert app.view_id == "overview"


async def test_read_only_hides_every_action(recorded: Path) -> None:
    app = replay_app(recorded, SURGE_AT, read_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        assert "r runs the first" not in screen_text(app)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Run a playbook" not in titles and "Show Logs" in titles
        await pilot.press("r")
        assert app.view_id == "overview"
        await pilot.press("question_mark")
        await pilot.pause()
        text = screen_text(app)
        assert "playbook.run" not in text and "read-only: actions hidden" in text
        await pilot.press("escape", "7")
        await settle(pilot, app)
        assert "read-only: playbooks can be planned here, not run" in screen_text(app)


async def test_keys_are_rebound_by_id_from_the_settings(recorded: Path) -> None:
    settings = Settings(keys={"view.logs": "l", "logs.filter": "f"})
    app = replay_app(recorded, SURGE_AT, settings=settings)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        await pilot.press("5")
        assert app.view_id == "overview"
        await pilot.press("l")
        assert app.view_id == "logs"
        assert " l Logs" in screen_text(app)
        await pilot.press("f", *"oom", "enter")
        await settle(pilot, app)
        assert app.query_one(LogsView).needle == "oom"


async def test_no_color_and_the_light_theme(
    recorded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = replay_app(recorded, SURGE_AT)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        assert all(r == g == b for r, g, b in screen_colours(app)), "colour under NO_COLOR"
    monkeypatch.delenv("NO_COLOR")
    app = replay_app(recorded, SURGE_AT, settings=Settings(theme="light"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        assert app.theme == "textual-light"
        assert any(not r == g == b for r, g, b in screen_colours(app))
        await pilot.press("t")
        assert app.theme == "textual-dark"


# -- sources --------------------------------------------------------------------------------


async def test_a_store_a_daemon_writes_is_attached_to_and_followed(tmp_path: Path) -> None:
    path = tmp_path / "daemon.db"
    writer = await Store.open(path)  # this test plays the daemon: it holds the writer lock
    try:
        with pytest.raises(UsageError, match="no daemon is writing"):
            plan_feed(store=tmp_path / "other.db")
        plan = plan_feed(store=path)
        assert plan.kind == ATTACH and plan.writer == writer_pid(path)
        gw = (("target", "queue-a"),)

        async def tick(depth: float) -> None:
            now = time.time()
            await writer.write_tick([
                Sample("depth", gw, now, depth), Sample("capacity", gw, now, 10.0),
                Sample("imbalance", gw, now, 0.0),
            ])  # fmt: skip

        await tick(2.0)
        app = QuellConsole(plan, Settings(refresh_s=0.2))
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, app)
            assert "attached to the daemon" in screen_text(app)
            assert "depth 2/10" in screen_text(app)
            await tick(7.0)
            for _ in range(50):
                await asyncio.sleep(0.1)
                await pilot.pause()
                if "depth 7/10" in screen_text(app):
                    break
            assert "depth 7/10" in screen_text(app)
    finally:
        await writer.close()


async def test_without_a_daemon_the_console_runs_the_collector_itself(tmp_path: Path) -> None:
    config = tmp_path / "quell.toml"
    config.write_text(
        '[store]\npath = "own.db"\n[daemon]\ninterval_s = 0.2\n[gpu]\nenabled = false\n'
    )
    plan = plan_feed(config=config)
    assert plan.kind == COLLECT and plan.config is not None
    assert not plan.config.daemon.metrics  # the console serves no /metrics of its own
    app = QuellConsole(plan, Settings(refresh_s=0.2))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        assert writer_pid(tmp_path / "own.db") is not None  # the console is the writer
        await pilot.press("3")
        for _ in range(50):
            await asyncio.sleep(0.1)
            await settle(pilot, app)
            if "core 0" in screen_text(app):
                break
        assert "core 0" in screen_text(app) and "collecting" in screen_text(app)
        await pilot.press("q")
        await pilot.pause()
    assert writer_pid(tmp_path / "own.db") is None  # stopped, and the store closed
