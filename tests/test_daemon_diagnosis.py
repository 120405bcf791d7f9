"""The daemon diagnoses every tick: incidents and alerts in the store, verdicts on /metrics."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.lab_helpers import lab_pids, lab_state, quell, wait_gone
from tests.servers import quell_command, running


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    result = quell(tmp_path, "lab", "up", "--detach")
    assert result.returncode == 0, result.stdout + result.stderr
    state = lab_state(tmp_path)
    state["state_dir"] = str(tmp_path)
    yield state
    quell(tmp_path, "lab", "down")
    assert wait_gone(lab_pids(state)) == []


def rows(db: Path, sql: str) -> list[Any]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        return connection.execute(sql).fetchall()


def flood(state: dict[str, Any], stop: threading.Event) -> None:
    key = state["keys"][1]["key"]
    body = {"model": "quell-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}

    def one() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{state['gateway']['url']}/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip

    while not stop.is_set():
        threading.Thread(target=one, daemon=True).start()
        time.sleep(1 / 25)


def test_a_stall_becomes_an_incident_an_alert_and_an_exported_verdict(
    lab: dict[str, Any],
) -> None:
    env = {"QUELL_STATE_DIR": lab["state_dir"]}
    db = Path(lab["lab_dir"]) / "quell.db"
    stop = threading.Event()
    sender = threading.Thread(target=flood, args=(lab, stop), daemon=True)
    with running(quell_command("collect"), env) as daemon:
        sender.start()
        try:
            time.sleep(8)  # a healthy baseline first
            for engine in lab["engines"]:
                admin = {"Authorization": f"Bearer {engine['admin_token']}"}
                httpx.post(f"{engine['url']}/admin/faults", json={"stalled": True}, headers=admin)
            deadline = time.monotonic() + 20
            verdict_line = ""
            while time.monotonic() < deadline and not verdict_line:
                metrics = httpx.get(f"{daemon.url}/metrics").text
                verdict_line = next(
                    (line for line in metrics.splitlines()
                     if line.startswith("quell_verdict{") and 'cause="stalled_consumers"' in line
                     and not line.endswith(" 0.0")),
                    "",
                )  # fmt: skip
                time.sleep(0.5)
            assert 'target="gateway"' in verdict_line, "no stalled_consumers verdict exported"
        finally:
            stop.set()
            for engine in lab["engines"]:
                admin = {"Authorization": f"Bearer {engine['admin_token']}"}
                httpx.delete(f"{engine['url']}/admin/faults", headers=admin)
        assert daemon.stop() == 0
    incidents = rows(
        db, "SELECT target, cause, opened_ts, evidence_json, timeline_json FROM incidents"
    )
    assert [(r[0], r[1]) for r in incidents] == [("gateway", "stalled_consumers")]
    evidence = json.loads(incidents[0][3])
    assert evidence["service_rate_now"] == 0 and evidence["running"] >= 16
    alerts = rows(db, "SELECT name, status, target FROM alerts")
    assert ("verdict_stalled_consumers", "firing", "gateway") in alerts
    verdict_series = rows(db, "SELECT COUNT(*) FROM series WHERE name = 'verdict'")
    assert verdict_series[0][0] == 8  # one per cause
    assert any("stalled_consumers" in line for line in daemon.output)
