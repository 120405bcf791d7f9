"""The console's plain parts: chart, clock, command table, settings, snapshot, event follower."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.model import Event, Sample, labels
from collectors.store import Store
from console.tui import units
from console.tui.chart import EXCESS_MARK, OFFERED_MARK, SERVED_MARK, resample, signature_chart
from console.tui.clock import ReplayClock
from console.tui.follow import EventFollower
from console.tui.keys import COMMANDS, LIVE, REPLAY, VIEWS, Context, available, check_keymap
from console.tui.settings import SettingsError, parse_settings
from console.tui.snapshot import (
    IncidentView,
    gpu_of,
    history_of,
    rejections_of,
    targets_of,
    verdict_of,
)
from console.tui.span import store_span
from console.tui.views import VIEW_MODULES, View, view_class
from tests.console_store import T0, recorded_store

# -- the signature chart ---------------------------------------------------------


def test_the_chart_shades_the_gap_only_while_offered_exceeds_served() -> None:
    # Balanced for the first half, then offered doubles against a flat service.
    offered = [30.0] * 20 + [60.0] * 20
    served = [30.0] * 40
    lines = signature_chart(offered, served, width=48, height=12, span_s=40).plain.splitlines()
    plot = [line.split("┤", 1)[1] for line in lines[:-1]]
    left = [row[:18] for row in plot]
    right = [row[22:] for row in plot]
    assert not any(EXCESS_MARK in row for row in left)
    # Every column of the surge has its gap shaded.
    assert all(any(row[x] == EXCESS_MARK for row in right) for x in range(18))
    # Above the served line sits the offered line; the gap lies between them.
    offered_row = next(i for i, row in enumerate(right) if OFFERED_MARK in row)
    served_row = next(i for i, row in enumerate(right) if SERVED_MARK in row)
    assert offered_row < served_row
    assert all(EXCESS_MARK in right[i] for i in range(offered_row + 1, served_row))
    assert "-40s" in lines[-1] and lines[-1].rstrip().endswith("now")


def test_the_chart_marks_served_above_offered_without_shading() -> None:
    text = signature_chart([10.0] * 30, [40.0] * 30, width=40, height=8, span_s=30).plain
    assert EXCESS_MARK not in text.split("\n")[-2] and EXCESS_MARK not in text.rsplit("\n", 1)[0]


def test_resample_keeps_gaps_and_averages_what_falls_in_a_column() -> None:
    assert resample([1.0, 3.0, None, None], 2) == [2.0, None]
    assert resample([], 3) == [None, None, None]


def test_units_read_as_an_engineer_writes_them() -> None:
    assert units.rate(0.44) == "0.4/s" and units.rate(1234) == "1.2k/s"
    assert units.seconds(0.35) == "350 ms" and units.seconds(200) == "3m20s"
    assert units.seconds(0) == "0 s" and units.seconds(None) == "-"
    assert units.size(12 * 2**20) == "12.0 MiB"


# -- the replay clock ----------------------------------------------------------------


def test_the_replay_clock_plays_at_its_speed_and_stops_at_the_end() -> None:
    clock = ReplayClock(100.0, 160.0, 100.0, playing=True)
    clock.scale(4.0)
    assert clock.advance(2.0) and clock.now() == 108.0
    clock.advance(100.0)
    assert clock.now() == 160.0 and not clock.playing
    clock.toggle()  # play at the end starts over
    assert clock.playing and clock.now() == 100.0


def test_steps_and_seeks_pause_and_stay_inside_the_recording() -> None:
    clock = ReplayClock(100.0, 160.0, 130.0, playing=True)
    clock.step(-3)
    assert clock.now() == 127.0 and not clock.playing
    clock.seek(-1000)
    assert clock.now() == 100.0
    clock.seek_to(1e12)
    assert clock.now() == 160.0
    clock.scale(1e9)
    assert clock.speed == 4096.0


# -- the command table -----------------------------------------------------------------


def test_every_screen_has_a_class_a_key_and_a_command() -> None:
    assert [v.id for v in VIEWS] == list(VIEW_MODULES)
    assert all(issubclass(view_class(v.id), View) for v in VIEWS)
    assert all(view_class(v.id).view_id == v.id for v in VIEWS)
    ids = [c.id for c in COMMANDS]
    assert len(ids) == len(set(ids))
    for view in VIEWS:
        assert f"view.{view.id}" in ids


def test_read_only_hides_every_mutating_command_and_replay_keys_need_a_replay() -> None:
    mutating = [c for c in COMMANDS if c.mutating]
    assert mutating, "the table names no action to hide"
    for command in mutating:
        where = command.views[0] if command.views else "overview"
        assert available(command, Context(where, LIVE, read_only=False)), command.id
        assert not available(command, Context(where, LIVE, read_only=True)), command.id
    live = Context("overview", LIVE, read_only=False)
    play = next(c for c in COMMANDS if c.id == "replay.play")
    assert not available(play, live)
    assert available(play, Context("logs", REPLAY, read_only=True))
    back = next(c for c in COMMANDS if c.id == "replay.live")
    assert not available(back, Context("overview", REPLAY, False, can_go_live=False))


def test_settings_refuse_unknown_keys_bad_values_and_unknown_commands() -> None:
    settings = parse_settings({"theme": "light", "keys": {"view.logs": "l"}}, "s.toml")
    assert settings.theme == "light" and settings.keys == {"view.logs": "l"}
    with pytest.raises(SettingsError, match="colour: unknown key"):
        parse_settings({"colour": "red"}, "s.toml")
    with pytest.raises(SettingsError, match=r"refresh_s: must be from 0\.2"):
        parse_settings({"refresh_s": 0}, "s.toml")
    with pytest.raises(SettingsError, match=r"keys\.view\.nope: no such command"):
        parse_settings({"keys": {"view.nope": "x"}}, "s.toml")
    assert check_keymap({"logs.filter": ""}) != []


# -- summarising samples -----------------------------------------------------------------


def _gateway(ts: float, **values: float) -> list[Sample]:
    gw = (("target", "gateway"),)
    out = [Sample(name, gw, ts, v) for name, v in values.items()]
    out.append(Sample("upstream_in_flight", labels(*gw, upstream="engine-0"), ts, 1.0))
    return out


def test_targets_are_queues_and_the_replicas_their_upstreams_name() -> None:
    samples = _gateway(10.0, depth=4, capacity=8, imbalance=0.0)
    samples += [
        Sample("depth", (("target", "engine-0"),), 10.0, 0.0),
        Sample("capacity", (("target", "engine-0"),), 10.0, 64.0),
        Sample("depth", (("target", "redis"),), 10.0, 3.0),
        Sample("imbalance", (("target", "redis"),), 10.0, 0.0),
    ]
    views = {t.name: t for t in targets_of(samples, (), 10.0)}
    assert views["gateway"].role == "queue" and views["gateway"].occupancy == 0.5
    assert views["engine-0"].role == "replica" and views["engine-0"].queue == "gateway"
    assert views["gateway"].replicas == ("engine-0",)
    assert views["redis"].role == "queue" and views["redis"].replicas == ()


def test_rejections_are_split_by_reason_and_zero_reasons_left_out() -> None:
    gw = (("target", "gateway"),)
    samples = [
        Sample("rejected_rate", labels(*gw, reason="queue_full", priority="a"), 1.0, 2.0),
        Sample("rejected_rate", labels(*gw, reason="queue_full", priority="b"), 1.0, 3.0),
        Sample("rejected_rate", labels(*gw, reason="rate_limited", priority="a"), 1.0, 0.0),
    ]
    assert rejections_of(samples) == {"queue_full": 5.0}


def test_a_verdict_takes_its_cause_from_the_tick_and_its_story_from_the_incident() -> None:
    gw = (("target", "gateway"),)
    samples = [
        Sample("verdict", labels(*gw, cause="producer_surge"), 50.0, 0.9),
        Sample("verdict", labels(*gw, cause="hot_replica"), 50.0, 0.0),
        Sample("imbalance", gw, 50.0, 1.0),
        Sample("time_to_full_seconds", gw, 49.0, 3.0),  # stale: not this tick's
    ]
    incident = IncidentView(7, "gateway", "producer_surge", 40.0, None, 0.9, {"depth": 90}, ())
    verdict = verdict_of("gateway", samples, [incident], 50.0)
    assert verdict is not None
    assert (verdict.cause, verdict.confidence, verdict.since) == ("producer_surge", 0.9, 40.0)
    assert verdict.evidence == {"depth": 90} and verdict.incident_id == 7
    assert verdict.playbooks[0] == "tighten-limits" and verdict.time_to_full is None
    healthy = [Sample("verdict", labels(*gw, cause="producer_surge"), 60.0, 0.0)]
    assert verdict_of("gateway", healthy, [incident], 60.0) is None


def test_history_sums_label_sets_and_derives_arrivals_where_none_are_counted() -> None:
    from collectors.store import Bucket

    def buckets(*values: float) -> list[Bucket]:
        return [Bucket(100.0 + i, v, v, v, v, 1) for i, v in enumerate(values)]

    series = {
        ("completed_rate", (("priority", "a"), ("target", "e"))): buckets(1.0, 1.0, 1.0),
        ("completed_rate", (("priority", "b"), ("target", "e"))): buckets(2.0, 2.0, 2.0),
        ("depth", (("target", "e"),)): buckets(0.0, 4.0, 4.0),
    }
    history = history_of(series, 100.0, 1.0, 4)
    assert history.served == (3.0, 3.0, 3.0, None)
    # No arrivals counter: completed + refused + queue growth.
    assert history.offered == (3.0, 7.0, 3.0, None)


def test_gpu_devices_group_by_gpu_and_mig_with_active_throttles() -> None:
    samples = [
        Sample("gpu_utilization_percent", (("gpu", "0"),), 1.0, 97.0),
        Sample("gpu_throttle", (("gpu", "0"), ("reason", "sw_power_cap")), 1.0, 1.0),
        Sample("gpu_throttle", (("gpu", "0"), ("reason", "hw_slowdown")), 1.0, 0.0),
        Sample("gpu_utilization_percent", (("gpu", "0"), ("mig", "1")), 1.0, 40.0),
    ]
    view = gpu_of(samples)
    assert [d.name for d in view.devices] == ["0", "0/mig 1"]
    assert view.devices[0].throttles == ("sw_power_cap",)


# -- reading the recorded store -----------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recorded_store(tmp_path_factory.mktemp("console") / "surge.db")


def test_the_span_of_a_store_is_its_first_and_last_sample(recorded: Path) -> None:
    assert store_span(recorded) == (T0, T0 + 179)


async def test_the_follower_returns_each_event_once_even_when_lines_arrive_late(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "e.db")
    follower = EventFollower()
    try:
        await store.write_tick([], [Event(T0, "queue_full", "log", "one", "warning")])
        found, reset = await follower.read(store, T0 + 1)
        assert [e.text for e in found] == ["one"] and reset
        # A line stamped before the last read, written after it.
        await store.write_tick([], [Event(T0 + 0.5, "queue_full", "log", "late", "warning")])
        found, reset = await follower.read(store, T0 + 2)
        assert [e.text for e in found] == ["late"] and not reset
        found, _ = await follower.read(store, T0 + 3)
        assert found == []
        _, reset = await follower.read(store, T0 - 100)  # a seek back starts over
        assert reset
    finally:
        await store.close()


def test_the_gpu_screen_shows_each_device_and_says_why_there_is_none() -> None:
    from rich.console import Console

    from console.tui.views.gpu import gpu_render

    def text(view: object) -> str:
        console = Console(width=100, record=True, file=None, color_system=None)
        with console.capture() as captured:
            console.print(gpu_render(view, 100))  # type: ignore[arg-type]
        return captured.get()

    samples = [
        Sample("gpu_utilization_percent", (("gpu", "0"),), 1.0, 97.0),
        Sample("gpu_memory_used_bytes", (("gpu", "0"),), 1.0, 60 * 2**30),
        Sample("gpu_memory_total_bytes", (("gpu", "0"),), 1.0, 80 * 2**30),
        Sample("gpu_power_watts", (("gpu", "0"),), 1.0, 690.0),
        Sample("gpu_power_limit_watts", (("gpu", "0"),), 1.0, 700.0),
        Sample("gpu_throttle", (("gpu", "0"), ("reason", "sw_power_cap")), 1.0, 1.0),
        Sample("gpu_process_memory_bytes", (("gpu", "0"), ("pid", "4242")), 1.0, 2**30),
    ]
    shown = text(gpu_of(samples))
    assert "GPU 0" in shown and "97%" in shown and "60.0 GiB of 80.0 GiB" in shown
    assert "690 W of 700 W" in shown and "sw_power_cap" in shown and "4242 (1.0 GiB)" in shown
    absent = text(gpu_of([], "no NVIDIA driver (NVML Shared Library Not Found)"))
    assert "No GPU to show" in absent and "no NVIDIA driver" in absent


def test_json_log_lines_read_as_key_value_pairs_without_their_time_and_nulls() -> None:
    from console.tui.views.logs import readable

    line = (
        '{"time": "2026-01-01T00:00:00Z", "status": 503, "outcome": "works_queue_full",'
        ' "error": null}'
    )
    assert readable(line) == "status=503 outcome=works_queue_full"
    assert readable("upstream timed out   (110)") == "upstream timed out (110)"
    assert readable("{not json") == "{not json"


def test_a_replayed_incident_shows_the_cause_and_steps_of_its_moment() -> None:
    from console.tui.snapshot import incidents_of

    row = {
        "id": 3, "target": "gateway", "cause": "consumer_slowdown", "opened": 10.0,
        "closed": 90.0, "confidence": 0.8, "evidence": {},
        "timeline": [
            {"ts": 10.0, "what": "opened", "cause": "producer_surge"},
            {"ts": 40.0, "what": "cause_changed", "cause": "consumer_slowdown"},
            {"ts": 90.0, "what": "closed", "cause": "consumer_slowdown"},
        ],
    }  # fmt: skip
    assert incidents_of([row], 5.0) == ()
    (early,) = incidents_of([row], 20.0)
    assert early.cause == "producer_surge" and early.closed is None and len(early.timeline) == 1
    (late,) = incidents_of([row], 100.0)
    assert late.cause == "consumer_slowdown" and late.closed == 90.0
