"""The store: ticks in, windows, ranges, roll-ups, retention, migrations, readers, full disks."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from collectors import store_schema
from collectors.daemon import PendingTicks
from collectors.model import Event, Labels, Sample
from collectors.store import Retention, Store, StoreError, prepare, writer_pid

T0 = 1_700_000_040.0  # a whole minute
A: Labels = (("target", "a"),)
B: Labels = (("target", "b"),)


def tick(ts: float, depth_a: float, depth_b: float) -> list[Sample]:
    return [Sample("depth", A, ts, depth_a), Sample("depth", B, ts, depth_b)]


async def fill(store: Store, seconds: int, start: float = T0) -> None:
    for i in range(seconds):
        await store.write_tick(tick(start + i, float(i), 2.0 * i))


@pytest.fixture
async def store(tmp_path: Path) -> Store:
    opened = await Store.open(tmp_path / "quell.db")
    yield opened  # type: ignore[misc]
    await opened.close()


async def test_ticks_come_back_as_latest_window_series_and_events(store: Store) -> None:
    await fill(store, 30)
    await store.write_tick(
        [Sample("depth", A, T0 + 30, 99.0), Sample("capacity", A, T0 + 30, math.nan)],
        [Event(T0 + 30, "queue_full", "gateway-access", "works queue_full", "warning")],
    )
    assert await store.series("depth") == [("depth", A), ("depth", B)]
    # NaN is left out (SQLite would store NULL), the rest of the tick is kept.
    assert await store.series("capacity") == []
    latest = await store.latest("depth", now=T0 + 31)
    assert [(s.labels, s.ts, s.value) for s in latest] == [(A, T0 + 30, 99.0), (B, T0 + 29, 58.0)]
    window = await store.window("depth", {"target": "a"}, seconds=3, now=T0 + 30)
    assert list(window) == [("depth", A)]
    assert [(p.ts - T0, p.value) for p in window[("depth", A)]] == [
        (27.0, 27.0), (28.0, 28.0), (29.0, 29.0), (30.0, 99.0),
    ]  # fmt: skip
    events = await store.events(T0, T0 + 60, kinds=["queue_full"])
    assert events == [Event(T0 + 30, "queue_full", "gateway-access", "works queue_full", "warning")]
    assert await store.events(T0, T0 + 60, kinds=["http_5xx"]) == []
    # A series silent for longer than max_age is stale, not "latest".
    assert await store.latest("depth", now=T0 + 1000, max_age_s=300) == []


async def test_range_buckets_raw_samples_into_about_n_points(store: Store) -> None:
    await fill(store, 50)
    result = await store.range("depth", {"target": "a"}, start=T0, end=T0 + 50, points=5)
    assert result.source == "raw"
    assert result.step_s == 10.0
    buckets = result.series[("depth", A)]
    assert [(b.ts - T0, b.min, b.max, b.mean, b.last, b.samples) for b in buckets] == [
        (0.0, 0.0, 9.0, 4.5, 9.0, 10),
        (10.0, 10.0, 19.0, 14.5, 19.0, 10),
        (20.0, 20.0, 29.0, 24.5, 29.0, 10),
        (30.0, 30.0, 39.0, 34.5, 39.0, 10),
        (40.0, 40.0, 49.0, 44.5, 49.0, 10),
    ]


async def test_rollups_answer_old_minutes_and_raw_the_rest(store: Store) -> None:
    await fill(store, 300)  # five minutes, 0..299
    # Minutes are rolled once they are over (plus a grace for late ticks).
    assert await store.roll_up(T0 + 190) == 3
    assert await store.roll_up(T0 + 190) == 0  # nothing new: no work
    result = await store.range("depth", {"target": "a"}, start=T0, end=T0 + 300, points=5)
    assert result.source == "rollups+raw"
    assert result.step_s == 60.0
    assert [(b.ts - T0, b.min, b.max, b.last, b.samples) for b in result.series[("depth", A)]] == [
        (0.0, 0.0, 59.0, 59.0, 60),
        (60.0, 60.0, 119.0, 119.0, 60),
        (120.0, 120.0, 179.0, 179.0, 60),
        (180.0, 180.0, 239.0, 239.0, 60),
        (240.0, 240.0, 299.0, 299.0, 60),
    ]
    # The same range read from raw samples only agrees.
    raw = await store.range(
        "depth", {"target": "a"}, start=T0, end=T0 + 300, points=5, use_rollups=False
    )
    assert raw.source == "raw"
    assert raw.series == result.series


async def test_a_late_sample_for_a_rolled_minute_is_rolled_again(store: Store) -> None:
    await fill(store, 120)
    assert await store.roll_up(T0 + 170) == 2
    # A tick buffered through a disk-full spell arrives after its minute was rolled.
    await store.write_tick([Sample("depth", A, T0 + 30.5, 1000.0)])
    assert await store.roll_up(T0 + 170) == 2
    result = await store.range("depth", {"target": "a"}, start=T0, end=T0 + 120, points=2)
    assert result.source == "rollups"
    first = result.series[("depth", A)][0]
    assert (first.max, first.samples) == (1000.0, 61)


async def test_retention_deletes_in_bounded_chunks(tmp_path: Path) -> None:
    retention = Retention(raw_s=120, rollup_s=86400)
    store = await Store.open(tmp_path / "quell.db", retention=retention)
    try:
        await fill(store, 600)  # ten minutes, two series: 1200 rows
        # Raw samples not rolled up yet are kept, however old.
        assert await store.expire(T0 + 3600, max_rows=100) == 0
        while await store.roll_up(T0 + 3600):
            pass
        # The raw cut is one hour minus two minutes: everything goes, 100 rows a call.
        assert await store.expire(T0 + 3600, max_rows=100) == 100
        assert await store.count_samples() == 1100
        deleted = 100
        while True:
            step = await store.expire(T0 + 3600, max_rows=500)
            assert step <= 500
            deleted += step
            if step < 500:
                break
        assert deleted == 1200
        assert await store.count_samples() == 0
        # Roll-ups outlive raw samples: the old range still answers.
        result = await store.range("depth", {"target": "a"}, start=T0, end=T0 + 600, points=10)
        assert result.source == "rollups"
        assert len(result.series[("depth", A)]) == 10
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()


def _prepare_together(paths: list[Path], barrier: object, errors: object) -> None:
    for path in paths:
        barrier.wait()  # type: ignore[attr-defined]
        try:
            prepare(path)
        except StoreError as problem:
            errors.put(str(problem))  # type: ignore[attr-defined]


def test_processes_creating_one_new_file_at_once_all_get_the_store(tmp_path: Path) -> None:
    # Two playbook runs on a fresh store once met "table meta already exists": each had read
    # version 0 before the other's first step committed.
    context = multiprocessing.get_context("spawn")
    paths = [tmp_path / f"new{i}.db" for i in range(8)]
    barrier, errors = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_prepare_together, args=(paths, barrier, errors)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0] * 4
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == [], problems
    for path in paths:
        connection = sqlite3.connect(path)
        assert store_schema.version(connection) == store_schema.LATEST
        connection.close()


async def test_a_v1_file_is_migrated_when_a_newer_quell_opens_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    store_schema.migrate(connection, upto=1)
    connection.execute(
        "INSERT INTO series (name, labels_json) VALUES ('depth', '{\"target\":\"a\"}')"
    )
    connection.execute(
        "INSERT INTO samples VALUES (?, 1, ?, 7.0)", (int(T0 * 1000) // 60000, int(T0 * 1000))
    )
    connection.close()

    store = await Store.open(path)
    try:
        assert await store.schema_version() == store_schema.LATEST == 2
        window = await store.window("depth", seconds=10, now=T0 + 1)
        assert window == {("depth", A): [(T0, 7.0)]}
    finally:
        await store.close()
    tables = {
        row[0]
        for row in sqlite3.connect(path).execute(
            "SELECT name FROM sqlite_master WHERE type='table'"
        )
    }
    assert {"incidents", "alerts", "playbook_runs", "audit"} <= tables
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(audit)")}
    assert {"id", "ts", "payload_json", "prev_hash", "hash"} <= columns


async def test_files_it_cannot_use_are_refused_in_one_line(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute("PRAGMA user_version = 99").connection.close()
    with pytest.raises(StoreError, match="v99, newer than this quell"):
        await Store.open(newer)
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreError, match="not a quell store"):
        await Store.open(foreign)
    with pytest.raises(StoreError, match="no store at"):
        await Store.open(tmp_path / "missing.db", read_only=True)


async def test_a_reader_follows_the_writer_without_blocking_it(tmp_path: Path) -> None:
    path = tmp_path / "quell.db"
    writer = await Store.open(path)
    reader = await Store.open(path, read_only=True)
    try:
        seen: list[int] = []

        async def write() -> None:
            for i in range(200):
                await writer.write_tick(tick(T0 + i, float(i), 0.0))
                await asyncio.sleep(0)

        async def read() -> None:
            while len(seen) < 3 or seen[-1] < 200:
                window = await reader.window("depth", {"target": "a"}, seconds=1000, now=T0 + 500)
                seen.append(len(window.get(("depth", A), [])))
                await reader.range("depth", start=T0, end=T0 + 200, points=20)
                await asyncio.sleep(0.001)

        await asyncio.wait_for(asyncio.gather(write(), read()), 30)
        assert seen == sorted(seen), "a reader saw a tick disappear"
        assert seen[-1] == 200 and len(set(seen)) > 2, seen
        with pytest.raises(StoreError, match="read-only"):
            await reader.write_tick(tick(T0, 0.0, 0.0))
        with pytest.raises(sqlite3.OperationalError):
            await reader._db.execute("DELETE FROM samples")
    finally:
        await reader.close()
        await writer.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_full_store_refuses_the_whole_tick_and_takes_writes_again(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "quell.db")
    try:
        await fill(store, 5)
        # The size cap makes SQLite answer as a full disk does (SQLITE_FULL).
        await store.set_max_bytes(1)
        big = [Sample(f"s{i}", A, T0 + 10, float(i)) for i in range(5000)]
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            await store.write_tick(big)
        assert await store.count_samples() == 10  # nothing of the failed tick
        assert await store.series("s1") == []
        await store.set_max_bytes(None)
        assert await store.write_tick(big) == 5000
        assert await store.count_samples() == 5010
    finally:
        await store.close()


async def test_one_writer_per_store(tmp_path: Path) -> None:
    path = tmp_path / "quell.db"
    assert writer_pid(path) is None
    first = await Store.open(path)
    try:
        assert writer_pid(path) is not None
        with pytest.raises(StoreError, match="being written by pid"):
            await Store.open(path)
        reader = await Store.open(path, read_only=True)
        await reader.close()
    finally:
        await first.close()
    assert writer_pid(path) is None


def test_pending_ticks_keep_the_newest_within_their_bound() -> None:
    pending = PendingTicks(limit=250)
    for i in range(5):
        pending.add(T0 + i, [Sample("depth", A, T0 + i, float(i))] * 100, [])
    assert (len(pending), pending.samples, pending.dropped) == (2, 200, 300)
    count, samples, _ = pending.peek(150)
    assert count == 1 and samples[0].ts == T0 + 3  # oldest first, one write at a time
    assert pending.pop(count) == T0 + 3
    assert pending.samples == 100
