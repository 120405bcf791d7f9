"""Playbooks started by the daemon: the Alertmanager webhook (a real `quell collect`
in front of a real gateway and engine) and auto-start on verdicts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from collectors.config import load_config
from collectors.diagnosis import Verdict
from playbooks.journal import Journal
from playbooks.triggers import AutoStarter, Starter
from tests.gateway_helpers import ADMIN_TOKEN, gateway, gateway_config, state
from tests.servers import RunningServer, engine, quell_command, running

SECRET = "webhook-shared-secret-for-tests"


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    with engine() as upstream:
        config = gateway_config(tmp_path, {"engine-0": upstream.url})
        with gateway(config) as server:
            daemon_config = tmp_path / "collect.toml"
            daemon_config.write_text(
                "\n".join([
                    "[store]", f'path = "{tmp_path / "quell.db"}"',
                    "[daemon]", "interval_s = 0.5", "metrics_port = 0",
                    "[host]", "enabled = false", "[gpu]", "enabled = false",
                    "[[targets]]", 'name = "gateway"', f'url = "{server.url}/metrics"',
                    'preset = "quell-gateway"',
                    "[[targets]]", 'name = "engine-0"', f'url = "{upstream.url}/metrics"',
                    'replica_of = "gateway"',
                    "[playbooks]", f'gateway_url = "{server.url}"',
                    "[[playbooks.alerts]]", 'playbook = "scale-workers"',
                    "labels = { alertname = \"QuellWorkersBusy\" }",
                    "params = { factor = 2.0 }",
                ]) + "\n"
            )  # fmt: skip
            yield server, daemon_config


def alert_payload(fingerprint: str, starts_at: str = "2026-11-22T08:00:00Z") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="QuellWorkersBusy"}',
        "status": "firing",
        "receiver": "quell",
        "groupLabels": {"alertname": "QuellWorkersBusy"},
        "commonLabels": {"alertname": "QuellWorkersBusy"},
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "QuellWorkersBusy", "target": "gateway"},
                "annotations": {},
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": fingerprint,
            }
        ],
    }


def runs(db: Path) -> list[dict[str, Any]]:
    journal = Journal(db, read_only=True)
    try:
        return journal.runs()
    finally:
        journal.close()


def test_an_alertmanager_notification_starts_its_playbook_once(
    system: tuple[RunningServer, Path], tmp_path: Path
) -> None:
    server, config = system
    workers = state(server)["queue"]["workers"]
    env = {"QUELL_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "QUELL_WEBHOOK_SECRET": SECRET}
    with running(quell_command("collect", "--config", str(config)), env) as daemon:
        hook = f"{daemon.url}/alertmanager"
        wrong = httpx.post(hook, json=alert_payload("a1"), headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        bad = httpx.post(hook, content=b"{", headers={"Authorization": f"Bearer {SECRET}"})
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
        auth = {"Authorization": f"Bearer {SECRET}"}
        first = httpx.post(hook, json=alert_payload("a1b2c3"), headers=auth)
        assert first.status_code == 202, first.text
        assert first.json()["started"] == [{"fingerprint": "a1b2c3", "playbook": "scale-workers"}]
        # Alertmanager repeats a firing group every repeat_interval: no second run.
        again = httpx.post(hook, json=alert_payload("a1b2c3"), headers=auth)
        assert again.status_code == 202 and again.json()["duplicates"] == ["a1b2c3"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = [r for r in runs(tmp_path / "quell.db") if r["status"] != "running"]
            if done:
                break
            time.sleep(0.2)
        output = "".join(daemon.output)
    assert len(done) == 1, (done, output)
    run = done[0]
    assert run["playbook"] == "scale-workers" and run["status"] == "applied", run
    assert run["trigger"] == "alert: QuellWorkersBusy (a1b2c3)"
    assert state(server)["queue"]["workers"] == workers * 2
    assert SECRET not in output and ADMIN_TOKEN not in output


def test_a_verdict_starts_the_playbooks_whose_auto_section_names_it(
    system: tuple[RunningServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, config_path = system
    monkeypatch.setenv("QUELL_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    config = load_config(config_path)

    class Diagnoser:
        verdict: Verdict | None = None

    class Diagnosis:
        def __init__(self) -> None:
            self.diagnosers = {"gateway": Diagnoser()}

    async def go() -> list[str]:
        starter = Starter(config)
        hook = AutoStarter(Diagnosis(), starter)  # type: ignore[arg-type]
        assert [p.name for p in hook.wanted("producer_surge", 0.9)] == ["tighten-limits"]
        assert hook.wanted("producer_surge", 0.5) == []  # below its min_confidence
        await hook(None, time.time())  # type: ignore[arg-type]
        assert not starter.tasks  # no verdict, nothing starts
        Diagnoser.verdict = Verdict("gateway", "producer_surge", 0.9, time.time(), 12.0, {}, ())
        for _ in range(3):  # the same verdict on later ticks starts nothing more
            await hook(None, time.time())  # type: ignore[arg-type]
        assert len(starter.tasks) == 1
        await starter.wait()
        return [r.status for r in starter.results]

    assert asyncio.run(go()) == ["applied"]
    [run] = runs(tmp_path / "quell.db")
    assert run["trigger"] == "auto: producer_surge (90%)" and run["who"].startswith(
        "quell-collect@"
    )
    limits = state(server)["keys"]
    assert limits["team-a"]["own_limits"]["requests_per_second"] > 0  # standard: limited
    assert limits["pager"]["own_limits"] == {}  # critical: untouched
    assert json.dumps(run["verdict"]) == json.dumps({"cause": "producer_surge", "confidence": 0.9})
