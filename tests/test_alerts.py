"""Alert rules, deduplication and resolution, and real deliveries to a webhook and a command."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

from collectors.alerts import (
    DEFAULT_RULES,
    Alerter,
    CommandRoute,
    LogRoute,
    Notification,
    Rule,
    WebhookRoute,
    alert_values,
    deliver,
)
from collectors.diagnosis import Assessment, Observation, Verdict

RULE = Rule("occupancy_critical", "occupancy", ">=", 0.9, 60, "critical", "queue 90% full")


def run(alerter: Alerter, values: list[float | None], start: float = 0.0) -> list[Notification]:
    out = []
    for second, value in enumerate(values):
        out.extend(alerter.evaluate("gateway", start + second, {"occupancy": value}, None))
    return out


def test_fires_only_after_holding_for_its_duration_and_once() -> None:
    alerter = Alerter([RULE])
    notes = run(alerter, [0.95] * 59)
    assert notes == []
    notes = run(alerter, [0.95] * 30, start=59)
    assert [n.status for n in notes] == ["firing"]
    assert notes[0].since == 0 and notes[0].at == 60


def test_a_dip_restarts_the_clock() -> None:
    alerter = Alerter([RULE])
    assert run(alerter, [0.95] * 50 + [0.5] + [0.95] * 50) == []


def test_resolves_once_when_the_condition_clears() -> None:
    alerter = Alerter([RULE])
    notes = run(alerter, [0.95] * 70 + [0.2] * 10)
    assert [n.status for n in notes] == ["firing", "resolved"]
    assert notes[1].text().startswith("[RESOLVED] gateway")


def test_missing_values_never_fire() -> None:
    alerter = Alerter([RULE])
    assert run(alerter, [None] * 200) == []


def test_trend_rule_fires_at_once_on_a_short_time_to_full() -> None:
    alerter = Alerter([r for r in DEFAULT_RULES if r.name == "time_to_full_short"])
    notes = alerter.evaluate("gateway", 0.0, {"time_to_full": 25.0}, None)
    assert [(n.rule, n.status) for n in notes] == [("time_to_full_short", "firing")]
    assert alerter.evaluate("gateway", 1.0, {"time_to_full": 20.0}, None) == []


def test_a_trend_that_comes_and_goes_fires_once_and_resolves_once() -> None:
    alerter = Alerter([r for r in DEFAULT_RULES if r.name == "time_to_full_short"])
    flapping = [25.0, None, None, 30.0, None, 20.0, None, None, None] * 3 + [None] * 20
    notes = [
        n
        for t, ttf in enumerate(flapping)
        for n in alerter.evaluate("gateway", float(t), {"time_to_full": ttf}, None)
    ]
    assert [(n.status, n.at) for n in notes] == [
        ("firing", 0.0),
        ("resolved", 39.0),
    ]  # 15 s after the last short reading


def verdict(cause: str) -> Verdict:
    return Verdict("gateway", cause, 0.9, 100.0, 12.0, {"offered_rate": 80}, ("tighten-limits",))


def test_verdicts_fire_change_and_resolve() -> None:
    alerter = Alerter([])
    assert [n.status for n in alerter.evaluate("gateway", 1, {}, verdict("producer_surge"))] == [
        "firing"
    ]
    assert alerter.evaluate("gateway", 2, {}, verdict("producer_surge")) == []
    changed = alerter.evaluate("gateway", 3, {}, verdict("retry_amplification"))
    assert [(n.rule, n.status) for n in changed] == [
        ("verdict_producer_surge", "resolved"),
        ("verdict_retry_amplification", "firing"),
    ]
    assert [n.status for n in alerter.evaluate("gateway", 4, {}, None)] == ["resolved"]


class _Sink(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["content-length"])
        _Sink.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_gets_a_slack_compatible_body() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        note = Alerter([]).evaluate("gateway", 1, {}, verdict("producer_surge"))[0]
        assert asyncio.run(deliver(note, [WebhookRoute(url)])) == []
    finally:
        server.shutdown()
    body = _Sink.received[-1]
    assert body["text"].startswith("[CRITICAL] gateway: producer_surge")
    assert body["quell"]["rule"] == "verdict_producer_surge"
    assert body["quell"]["details"]["playbooks"] == ["tighten-limits"]


def test_command_route_gets_arguments_unexpanded_and_the_alert_on_stdin(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    script = tmp_path / "record.py"
    script.write_text(
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'stdin': json.load(sys.stdin),"
        f" 'rule': os.environ['QUELL_ALERT_RULE']}}, open({str(record)!r}, 'w'))\n"
    )
    hostile = "$(touch /tmp/quell-pwned); `id`"
    route = CommandRoute([sys.executable, str(script), hostile, "--page"])
    note = Alerter([]).evaluate("gateway", 1, {}, verdict("stalled_consumers"))[0]
    assert asyncio.run(deliver(note, [route])) == []
    seen = json.loads(record.read_text())
    assert seen["argv"] == [hostile, "--page"]
    assert seen["rule"] == "verdict_stalled_consumers"
    assert seen["stdin"]["status"] == "firing"
    assert not Path("/tmp/quell-pwned").exists()


def test_a_failing_route_is_reported_and_the_others_still_deliver(tmp_path: Path) -> None:
    note = Alerter([]).evaluate("gateway", 1, {}, verdict("producer_surge"))[0]
    failing = CommandRoute([sys.executable, "-c", "raise SystemExit(3)"])
    problems = asyncio.run(
        deliver(note, [failing, LogRoute(), WebhookRoute("http://127.0.0.1:1/")])
    )
    assert len(problems) == 2
    assert any("status 3" in p for p in problems)


def test_time_to_full_pages_only_for_a_queue_a_quarter_full_or_stalled() -> None:
    def values(occupancy: float, scores: dict[str, float]) -> dict[str, float | None]:
        assessment = Assessment(
            ts=0.0, offered=40.0, completed=30.0, depth=occupancy * 128, capacity=128.0,
            occupancy=occupancy, depth_slope=2.0, time_to_full=12.0, drain_time=None,
            imbalanced=True, scores=scores, evidence={},
        )  # fmt: skip
        return alert_values(assessment, Observation(0.0, {}))

    assert values(0.1, {})["time_to_full"] is None
    assert values(0.3, {})["time_to_full"] == 12.0
    assert values(0.0, {"stalled_consumers": 0.95})["time_to_full"] == 12.0
