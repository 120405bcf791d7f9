"""The Playbooks screen against a real gateway: plan, confirm (or not), run, undo."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from console.tui.app import QuellConsole
from console.tui.feeds import plan_feed
from console.tui.settings import Settings
from console.tui.views.playbooks import ConfirmPlan, PlaybooksView
from playbooks.journal import Journal
from tests.console_screens import screen_text, settle
from tests.gateway_helpers import ADMIN_TOKEN, gateway, gateway_config, state
from tests.servers import RunningServer, engine


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    with (
        engine() as upstream,
        gateway(gateway_config(tmp_path, {"engine-0": upstream.url})) as server,
    ):
        config = tmp_path / "quell.toml"
        config.write_text(
            "\n".join([
                "[store]", 'path = "quell.db"', "[daemon]", "interval_s = 0.5",
                "[gpu]", "enabled = false", "[host]", "enabled = false",
                "[[targets]]", 'name = "gateway"', f'url = "{server.url}/metrics"',
                'preset = "quell-gateway"',
                "[[targets]]", 'name = "engine-0"', f'url = "{upstream.url}/metrics"',
                'replica_of = "gateway"',
                "[playbooks]", f'gateway_url = "{server.url}"',
            ]) + "\n"
        )  # fmt: skip
        yield server, config


async def wait_until(pilot: Pilot[int], app: QuellConsole, check: Callable[[], bool]) -> None:
    # Not settle(): a run waiting in its confirmation dialog is a busy worker.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        await pilot.pause()
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out; screen:\n{screen_text(app)}")


async def test_a_playbook_runs_only_through_its_confirmation_and_undoes(
    system: tuple[RunningServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, config = system
    monkeypatch.setenv("QUELL_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    workers = state(server)["queue"]["workers"]
    change = f"workers: {workers} -> {workers * 2}"
    app = QuellConsole(plan_feed(config=config), Settings(refresh_s=0.5))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("7")
        view = app.query_one(PlaybooksView)
        await wait_until(pilot, app, lambda: "scale-workers" in view._rows)
        view.select("scale-workers")
        await pilot.press("enter")  # plan: changes nothing
        await wait_until(pilot, app, lambda: change in screen_text(app))
        assert state(server)["queue"]["workers"] == workers

        await pilot.press("r")
        await wait_until(pilot, app, lambda: isinstance(app.screen, ConfirmPlan))
        assert change in screen_text(app)
        await pilot.press("n")  # declined: nothing happens
        await wait_until(pilot, app, lambda: "not confirmed" in screen_text(app))
        assert state(server)["queue"]["workers"] == workers

        await pilot.press("r")
        await wait_until(pilot, app, lambda: isinstance(app.screen, ConfirmPlan))
        await pilot.press("y")
        await wait_until(pilot, app, lambda: "applied: applied and verified" in screen_text(app))
        assert state(server)["queue"]["workers"] == workers * 2
        assert "verified service_rate" in screen_text(app)  # the steps stream in

        await pilot.press("u")
        await wait_until(pilot, app, lambda: isinstance(app.screen, ConfirmPlan))
        assert f"workers: {workers * 2} -> {workers}" in screen_text(app)
        await pilot.press("y")
        await wait_until(pilot, app, lambda: "rolled back" in screen_text(app))
        assert state(server)["queue"]["workers"] == workers
        await pilot.press("q")
        await pilot.pause()
    journal = Journal(config.parent / "quell.db", read_only=True)
    runs = journal.runs()
    assert [(r["playbook"], r["status"], r["trigger"]) for r in runs[:2]] == [
        ("rollback", "applied", "console: undo run 1"),
        ("scale-workers", "rolled_back", "console"),
    ]
    assert journal.verify_chain() == []
    journal.close()


async def test_read_only_plans_but_never_runs(
    system: tuple[RunningServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, config = system
    monkeypatch.setenv("QUELL_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    workers = state(server)["queue"]["workers"]
    app = QuellConsole(plan_feed(config=config), Settings(refresh_s=0.5), read_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, app)
        await pilot.press("7")
        view = app.query_one(PlaybooksView)
        await wait_until(pilot, app, lambda: "scale-workers" in view._rows)
        view.select("scale-workers")
        await pilot.press("enter")
        await wait_until(pilot, app, lambda: f"workers: {workers} ->" in screen_text(app))
        assert "read-only: playbooks can be planned here, not run" in screen_text(app)
        await pilot.press("r")
        await pilot.press("u")
        await settle(pilot, app)
        assert not isinstance(app.screen, ConfirmPlan)
        await pilot.press("q")
        await pilot.pause()
    assert state(server)["queue"]["workers"] == workers
