"""Samples and events in one SQLite file: one writer, any number of readers.

The writer (the daemon, or the console when no daemon runs) holds an
exclusive lock on ``<store>.writer`` for as long as it is open, so a second
writer is refused with the first one's pid instead of interleaving ticks.
Readers open the file with ``mode=ro`` and never block the writer: the file
is in WAL mode, where readers see the last committed tick.

Durability: ``synchronous=NORMAL`` in WAL mode fsyncs at checkpoints, not at
every commit. A killed process loses nothing it committed; a power cut may
lose the last few ticks, never the file's integrity. One tick is one
transaction, so a tick is in the file entirely or not at all.

Reads:

- ``window``: raw samples of the last W seconds, for diagnosis.
- ``range``: about N buckets per series (min, max, mean, last, count), for
  charts and replay. Whole minutes older than the roll-up watermark are read
  from ``rollups_1m`` when a bucket spans a minute or more (and always for
  data older than the oldest raw sample kept); the rest from raw samples.
- ``latest``, ``series`` and ``events`` by time and kind.

Roll-ups and retention are jobs the writer's owner runs between ticks
(``roll_up`` and ``expire``), each bounded so it never stalls a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import quote

import aiosqlite

from collectors import store_schema
from collectors.model import Event, Labels, Sample

SeriesKey = tuple[str, Labels]

MINUTE_MS = 60_000
# A minute is rolled up once every sample of it has surely arrived: a tick
# stamped just before the minute ends is written up to one scrape timeout
# later.
ROLLUP_GRACE_MS = 10_000
ROLLUP_CHUNK_MINUTES = 60
EXPIRE_CHUNK_ROWS = 10_000
BUSY_TIMEOUT_MS = 5_000
SET_META_SQL = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

# Samples are keyed (minute, series_id, ts): reads name the minutes they
# want ({minutes}) and the series ({ids}) so SQLite seeks one short run per
# pair instead of scanning every series of those minutes.
_LATEST_SQL = """
SELECT series_id, max(ts), value FROM samples
WHERE {minutes} AND series_id IN ({ids})
GROUP BY series_id
"""
_WINDOW_SQL = """
SELECT series_id, ts, value FROM samples
WHERE {minutes} AND series_id IN ({ids}) AND ts >= ? AND ts <= ?
ORDER BY series_id, ts
"""
# Buckets: (id, bucket, min, max, sum, count, last ts, last value); the last
# value is joined back from the row holding the bucket's latest time.
_RAW_BUCKETS_SQL = """
SELECT g.series_id, g.b, g.lo, g.hi, g.total, g.n, g.last_ts, s.value FROM (
    SELECT series_id, (ts - :origin) / :step AS b, min(value) AS lo, max(value) AS hi,
           sum(value) AS total, count(*) AS n, max(ts) AS last_ts
    FROM samples WHERE {minutes} AND series_id IN ({ids}) AND ts >= :start AND ts < :end
    GROUP BY series_id, b
) AS g JOIN samples AS s
    ON s.minute = g.last_ts / 60000 AND s.series_id = g.series_id AND s.ts = g.last_ts
"""
_ROLLUP_BUCKETS_SQL = """
SELECT g.series_id, g.b, g.lo, g.hi, g.total, g.n, g.last_minute * 60000, r.last FROM (
    SELECT series_id, (minute * 60000 - :origin) / :step AS b, min(min) AS lo,
           max(max) AS hi, sum(mean * count) AS total, sum(count) AS n,
           max(minute) AS last_minute
    FROM rollups_1m WHERE series_id IN ({ids}) AND minute >= :first AND minute < :stop
    GROUP BY series_id, b
) AS g JOIN rollups_1m AS r ON r.series_id = g.series_id AND r.minute = g.last_minute
"""
_ROLLUP_SQL = """
INSERT OR REPLACE INTO rollups_1m (series_id, minute, min, max, mean, last, count)
SELECT g.series_id, g.minute, g.lo, g.hi, g.mean, s.value, g.n FROM (
    SELECT minute, series_id, min(value) AS lo, max(value) AS hi, avg(value) AS mean,
           count(*) AS n, max(ts) AS last_ts
    FROM samples WHERE minute >= ? AND minute < ?
    GROUP BY minute, series_id
) AS g JOIN samples AS s
    ON s.minute = g.minute AND s.series_id = g.series_id AND s.ts = g.last_ts
"""
# Raw retention deletes a prefix of the key: everything below the n-th oldest
# row, so one call removes at most n rows.
_NTH_OLDEST_SQL = """
SELECT minute, series_id, ts FROM samples WHERE minute < ?
ORDER BY minute, series_id, ts LIMIT 1 OFFSET ?
"""
_ROLLUP_OLDEST_SQL = """
SELECT id, (SELECT min(minute) FROM rollups_1m WHERE series_id = series.id) FROM series
"""
_ROLLUP_EXPIRE_SQL = """
DELETE FROM rollups_1m WHERE series_id = :id AND minute < coalesce(
    (SELECT minute FROM rollups_1m WHERE series_id = :id AND minute < :cut
     ORDER BY minute LIMIT 1 OFFSET :left),
    :cut)
"""
# Past this many minutes a read scans the minutes' rows instead of listing them.
MAX_LISTED_MINUTES = 20_000


class Point(NamedTuple):
    ts: float
    value: float


class Bucket(NamedTuple):
    ts: float  # the bucket's start
    min: float
    max: float
    mean: float
    last: float
    samples: int  # how many raw samples the bucket summarises


@dataclass(frozen=True, slots=True)
class RangeResult:
    series: dict[SeriesKey, list[Bucket]]
    step_s: float
    # "raw", "rollups", "rollups+raw" or "none": which tables answered.
    source: str


@dataclass(frozen=True, slots=True)
class Retention:
    raw_s: float = 48 * 3600.0
    rollup_s: float = 30 * 86400.0


class StoreError(Exception):
    """The store cannot be opened as asked; the message says why, in one line."""


def to_ms(ts: float) -> int:
    return math.floor(ts * 1000.0 + 0.5)


def labels_json(labels: Labels) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def _parse_labels(text: str) -> Labels:
    return tuple(sorted(json.loads(text).items()))


def _query(template: str, ids: Iterable[int], first_minute: int = 0, last_minute: int = 0) -> str:
    """``template`` with ``{ids}`` and ``{minutes}`` filled in.

    Series ids and minutes are integers we computed, inlined rather than
    bound so a query over thousands of series is not limited by SQLite's cap
    on bound variables.
    """
    if last_minute - first_minute < MAX_LISTED_MINUTES:
        listed = ",".join(str(m) for m in range(int(first_minute), int(last_minute) + 1))
        minutes = f"minute IN ({listed})"
    else:
        minutes = f"minute BETWEEN {int(first_minute):d} AND {int(last_minute):d}"
    return template.replace("{ids}", ",".join(str(int(i)) for i in ids)).replace(
        "{minutes}", minutes
    )


def writer_lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".writer")


def writer_pid(path: Path | str) -> int | None:
    """The pid of the process writing the store at ``path``, or None when none is."""
    lock = writer_lock_path(Path(path))
    try:
        handle = lock.open("r")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _enter_wal(connection: sqlite3.Connection) -> str:
    # Turning a new file to WAL answers "database is locked" at once, without waiting for the
    # busy timeout, when another process is doing the same to it: retry for as long.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(connection.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as problem:
            if "locked" not in str(problem) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def prepare(path: Path) -> None:
    """Create or migrate the file with plain sqlite3, before the async connection opens."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        mode = _enter_wal(connection)
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: the filesystem does not support WAL mode (got {mode})")
        store_schema.migrate(connection)
    except store_schema.SchemaError as problem:
        raise StoreError(f"{path}: {problem}") from None
    except sqlite3.DatabaseError as problem:
        raise StoreError(f"{path}: {problem}") from None
    finally:
        connection.close()


class Store:
    """Use ``await Store.open(path)``; close with ``await store.close()`` or ``async with``."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        *,
        read_only: bool,
        retention: Retention,
        lock: IO[str] | None,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.retention = retention
        self._db = db
        self._lock = lock
        self._ids: dict[SeriesKey, int] = {}
        self._keys: dict[int, SeriesKey] = {}
        self._by_name: dict[str, list[tuple[Labels, int]]] = {}
        self._max_id = 0
        # Minutes before this one (an index, ts // 60000) are rolled up.
        self._rolled_through: int | None = None
        self._closed = False

    # -- opening and closing -------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        read_only: bool = False,
        retention: Retention | None = None,
        max_bytes: int | None = None,
    ) -> Store:
        path = Path(path)
        lock: IO[str] | None = None
        if read_only:
            if not path.exists():
                raise StoreError(f"no store at {path}")
            uri = f"file:{quote(str(path.resolve()))}?mode=ro"
            db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as problem:
                raise StoreError(f"cannot create {path.parent}: {problem.strerror}") from None
            lock = _take_writer_lock(path)
            try:
                await asyncio.to_thread(prepare, path)
                # sqlite3's implicit transactions: the first write of a tick
                # begins it, so a tick costs two trips to the connection's
                # thread (write, commit) rather than three with an explicit
                # BEGIN; at small ticks that trip is a fifth of the cost.
                db = await aiosqlite.connect(path, isolation_level="DEFERRED")
            except BaseException:
                lock.close()
                raise
        store = cls(db, path, read_only=read_only, retention=retention or Retention(), lock=lock)
        try:
            await store._configure(max_bytes)
        except BaseException:
            await store.close()
            raise
        return store

    async def _configure(self, max_bytes: int | None) -> None:
        await self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        if self.read_only:
            await self._db.execute("PRAGMA query_only = 1")
            async with self._db.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            found = int(row[0]) if row else 0
            if found != store_schema.LATEST:
                newer = found > store_schema.LATEST
                raise StoreError(
                    f"{self.path} is store schema v{found}; this quell reads "
                    f"v{store_schema.LATEST}"
                    + (" (upgrade quell)" if newer else " (open it once with a writer to upgrade)")
                )
        else:
            await self._db.execute("PRAGMA synchronous = NORMAL")
            if max_bytes is not None:
                await self.set_max_bytes(max_bytes)
        await self._refresh_series()
        await self._load_watermark()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._db.close()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def set_max_bytes(self, max_bytes: int | None) -> None:
        """Cap the file's size; writes past it fail as SQLite's "database or disk is full".

        The cap cannot go below what the file already holds. None lifts it.
        """
        async with self._db.execute("PRAGMA page_size") as cursor:
            row = await cursor.fetchone()
        page_size = int(row[0]) if row else 4096
        pages = 2**31 - 2 if not max_bytes else max(1, max_bytes // page_size)
        await self._db.execute(f"PRAGMA max_page_count = {pages:d}")

    # -- series ids ----------------------------------------------------------

    def _remember(self, key: SeriesKey, series_id: int) -> None:
        if key in self._ids:
            return
        self._ids[key] = series_id
        self._keys[series_id] = key
        self._by_name.setdefault(key[0], []).append((key[1], series_id))
        self._max_id = max(self._max_id, series_id)

    async def _refresh_series(self) -> None:
        """Learn the series another connection added since we last looked."""
        async with self._db.execute(
            "SELECT id, name, labels_json FROM series WHERE id > ? ORDER BY id", (self._max_id,)
        ) as cursor:
            rows = await cursor.fetchall()
        for series_id, name, text in rows:
            self._remember((name, _parse_labels(text)), int(series_id))

    def _select(
        self, names: str | Sequence[str] | None, labels: Mapping[str, str] | None
    ) -> list[int]:
        if isinstance(names, str):
            names = (names,)
        candidates: Iterable[tuple[Labels, int]]
        if names is None:
            candidates = ((key[1], series_id) for key, series_id in self._ids.items())
        else:
            candidates = (pair for name in names for pair in self._by_name.get(name, ()))
        if not labels:
            return sorted(series_id for _, series_id in candidates)
        wanted = set(labels.items())
        return sorted(series_id for have, series_id in candidates if wanted <= set(have))

    async def _match(
        self, names: str | Sequence[str] | None, labels: Mapping[str, str] | None
    ) -> list[int]:
        if self.read_only:
            await self._refresh_series()
        return self._select(names, labels)

    # -- writing -------------------------------------------------------------

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only")

    async def write_tick(self, samples: Sequence[Sample], events: Sequence[Event] = ()) -> int:
        """Write one tick in one transaction; return how many samples it held.

        Raises sqlite3.Error when the write fails (disk full, read-only file):
        nothing of the tick is written then, and the caller keeps it to retry.
        NaN values are left out: SQLite would store them as NULL.
        """
        self._writable()
        ids = self._ids
        rows: list[tuple[int, int, int, float]] = []
        missing: list[tuple[Sample, SeriesKey]] = []
        oldest_ms: int | None = None
        stamp_ts = math.nan
        stamp_ms = stamp_minute = 0
        add, lookup = rows.append, ids.get  # bound once: this loop runs per sample
        for sample in samples:
            value = sample.value
            if value != value:  # NaN
                continue
            ts = sample.ts
            if ts != stamp_ts:
                # A tick's samples share one timestamp: convert it once.
                stamp_ts = ts
                stamp_ms = to_ms(ts)
                stamp_minute = stamp_ms // MINUTE_MS
                if oldest_ms is None or stamp_ms < oldest_ms:
                    oldest_ms = stamp_ms
            key = (sample.series, sample.labels)
            series_id = lookup(key)
            if series_id is None:
                missing.append((sample, key))
            else:
                add((stamp_minute, series_id, stamp_ms, value))
        if not rows and not missing and not events:
            return 0
        rewind = (
            oldest_ms is not None
            and self._rolled_through is not None
            and oldest_ms // MINUTE_MS < self._rolled_through
        )
        event_rows = [(to_ms(e.ts), e.kind, e.source, e.severity, e.text) for e in events]
        rewind_to = oldest_ms // MINUTE_MS if rewind and oldest_ms is not None else None
        # The whole transaction is one call on the connection's thread. Held
        # open across awaits, its write lock outlived any await in between,
        # and a playbook journal writing to the same file from this event
        # loop (blocking, with a busy timeout) then waited on a commit that
        # needed the loop it was blocking: "database is locked" after 5 s.
        # aiosqlite runs a callable on its thread only through this private
        # method (0.17 to 0.22 alike); the connection is used on that thread.
        fresh: dict[SeriesKey, int] = await self._db._execute(  # type: ignore[no-untyped-call]
            _write_tick, self._db._conn, rows, missing, event_rows, rewind_to
        )
        for key, series_id in fresh.items():
            self._remember(key, series_id)
        if rewind_to is not None:
            self._rolled_through = rewind_to
        return len(rows) + len(missing)

    async def _set_meta(self, key: str, value: Any) -> None:
        await self._db.execute(SET_META_SQL, (key, value))

    async def _load_watermark(self) -> None:
        async with self._db.execute("SELECT value FROM meta WHERE key = 'rolled_through'") as cur:
            row = await cur.fetchone()
        self._rolled_through = int(row[0]) if row and row[0] is not None else None

    async def _oldest_minute(self, at_or_after: int = -(2**62)) -> int | None:
        async with self._db.execute(
            "SELECT min(minute) FROM samples WHERE minute >= ?", (at_or_after,)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def roll_up(self, now: float, max_minutes: int = ROLLUP_CHUNK_MINUTES) -> int:
        """Roll finished minutes into ``rollups_1m``, at most ``max_minutes`` of them.

        Returns the number of minutes the watermark moved; 0 when up to date.
        Cheap to call every tick: it touches the file once a minute.
        """
        self._writable()
        target = (to_ms(now) - ROLLUP_GRACE_MS) // MINUTE_MS
        through = self._rolled_through
        if through is not None and through >= target:
            return 0
        if through is None:
            through = await self._oldest_minute()
            if through is None or through >= target:
                return 0
        end = min(target, through + max(1, max_minutes))
        db = self._db
        try:
            cursor = await db.execute(_ROLLUP_SQL, (through, end))
            rolled = cursor.rowcount
            await cursor.close()
            new_through = end
            if rolled == 0 and end < target:
                # A gap (the daemon was stopped): jump to the next sample.
                following = await self._oldest_minute(end)
                new_through = target if following is None else min(target, following)
                new_through = max(end, new_through)
            await self._set_meta("rolled_through", new_through)
            await db.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.rollback()
            raise
        self._rolled_through = new_through
        return new_through - through

    async def expire(self, now: float, max_rows: int = EXPIRE_CHUNK_ROWS) -> int:
        """Delete what is past retention, at most ``max_rows`` rows; return how many went.

        A return of ``max_rows`` means there is more: call again next tick.
        Raw samples not yet rolled up are kept whatever their age, so a
        roll-up that fell behind never loses a minute.
        """
        self._writable()
        now_ms = to_ms(now)
        raw_cut = (now_ms - int(self.retention.raw_s * 1000)) // MINUTE_MS
        raw_cut = min(raw_cut, -(2**62) if self._rolled_through is None else self._rolled_through)
        rollup_cut = (now_ms - int(self.retention.rollup_s * 1000)) // MINUTE_MS
        event_cut = now_ms - int(self.retention.rollup_s * 1000)
        budget = max(1, max_rows)
        db = self._db
        try:
            budget -= await self._expire_raw(raw_cut, budget)
            if budget > 0:
                budget -= await self._expire_rollups(rollup_cut, budget)
            if budget > 0:
                cursor = await db.execute(
                    "DELETE FROM events WHERE id IN "
                    "(SELECT id FROM events WHERE ts < ? ORDER BY ts LIMIT ?)",
                    (event_cut, budget),
                )
                budget -= max(0, cursor.rowcount)
                await cursor.close()
            await db.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.rollback()
            raise
        return max(1, max_rows) - budget

    async def _expire_raw(self, cut_minute: int, budget: int) -> int:
        async with self._db.execute(_NTH_OLDEST_SQL, (cut_minute, budget)) as cursor:
            nth = await cursor.fetchone()
        if nth is None:
            cursor = await self._db.execute("DELETE FROM samples WHERE minute < ?", (cut_minute,))
        else:
            cursor = await self._db.execute(
                "DELETE FROM samples WHERE (minute, series_id, ts) < (?, ?, ?)", tuple(nth)
            )
        deleted = max(0, cursor.rowcount)
        await cursor.close()
        return deleted

    async def _expire_rollups(self, cut_minute: int, budget: int) -> int:
        async with self._db.execute(_ROLLUP_OLDEST_SQL) as cursor:
            oldest = await cursor.fetchall()
        deleted = 0
        for series_id, first in oldest:
            left = budget - deleted
            if left <= 0:
                break
            if first is None or first >= cut_minute:
                continue
            cursor = await self._db.execute(
                _ROLLUP_EXPIRE_SQL, {"id": series_id, "cut": cut_minute, "left": left}
            )
            deleted += max(0, cursor.rowcount)
            await cursor.close()
        return deleted

    # -- reading -------------------------------------------------------------

    async def series(
        self, names: str | Sequence[str] | None = None, labels: Mapping[str, str] | None = None
    ) -> list[SeriesKey]:
        return [self._keys[i] for i in await self._match(names, labels)]

    async def latest(
        self,
        names: str | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        max_age_s: float = 300.0,
        now: float | None = None,
    ) -> list[Sample]:
        """The newest sample of each matching series seen in the last ``max_age_s``.

        A series silent for longer is stale and left out: its target is gone
        or down, and its last value is not the present.
        """
        ids = await self._match(names, labels)
        if not ids:
            return []
        end = to_ms(time.time() if now is None else now)
        first = (end - int(max_age_s * 1000)) // MINUTE_MS
        sql = _query(_LATEST_SQL, ids, first, end // MINUTE_MS)
        async with self._db.execute(sql) as cursor:
            rows = await cursor.fetchall()
        floor = end - int(max_age_s * 1000)
        found: list[Sample] = []
        for series_id, ts, value in sorted(rows):
            if ts < floor or ts > end:
                continue
            name, labels_ = self._keys[int(series_id)]
            found.append(Sample(name, labels_, ts / 1000.0, float(value)))
        return found

    async def window(
        self,
        names: str | Sequence[str] | None,
        labels: Mapping[str, str] | None = None,
        *,
        seconds: float,
        now: float | None = None,
    ) -> dict[SeriesKey, list[Point]]:
        """Raw samples of the last ``seconds`` (up to ``now``), oldest first, per series."""
        ids = await self._match(names, labels)
        end = to_ms(time.time() if now is None else now)
        start = end - int(seconds * 1000)
        window: dict[SeriesKey, list[Point]] = {}
        if not ids:
            return window
        sql = _query(_WINDOW_SQL, ids, start // MINUTE_MS, end // MINUTE_MS)
        async with self._db.execute(sql, (start, end)) as cursor:
            rows = await cursor.fetchall()
        keys = self._keys
        current_id = -1
        points: list[Point] = []
        for series_id, ts, value in rows:
            if series_id != current_id:
                current_id = series_id
                points = window.setdefault(keys[int(series_id)], [])
            points.append(Point(ts / 1000.0, value))
        return window

    async def range(
        self,
        names: str | Sequence[str] | None,
        labels: Mapping[str, str] | None = None,
        *,
        start: float,
        end: float,
        points: int = 500,
        use_rollups: bool = True,
    ) -> RangeResult:
        """About ``points`` buckets per series over [start, end)."""
        ids = await self._match(names, labels)
        start_ms, end_ms = to_ms(start), to_ms(end)
        span = end_ms - start_ms
        if not ids or span <= 0:
            return RangeResult({}, 0.0, "none")
        step = max(1, -(-span // max(1, points)))
        if self.read_only:
            await self._load_watermark()
        rolled_ms = None if self._rolled_through is None else self._rolled_through * MINUTE_MS
        split = start_ms
        if use_rollups and rolled_ms is not None:
            if step >= MINUTE_MS:
                # Whole minutes per bucket, so each minute's roll-up lands in one.
                step = -(-step // MINUTE_MS) * MINUTE_MS
                start_ms -= start_ms % MINUTE_MS
                split = rolled_ms
            else:
                oldest_raw = await self._oldest_minute()
                if oldest_raw is not None:
                    split = min(rolled_ms, oldest_raw * MINUTE_MS)
            split = max(start_ms, min(split, end_ms))
        merged: dict[int, dict[int, list[float]]] = {}
        used: list[str] = []
        if split > start_ms:
            rows = await self._buckets_from_rollups(ids, start_ms, split, step)
            if rows:
                used.append("rollups")
            _merge(merged, rows)
        if split < end_ms:
            rows = await self._buckets_from_raw(ids, start_ms, split, end_ms, step)
            if rows or not used:
                used.append("raw")
            _merge(merged, rows)
        series: dict[SeriesKey, list[Bucket]] = {}
        for series_id in sorted(merged):
            buckets = merged[series_id]
            series[self._keys[series_id]] = [
                Bucket(
                    (start_ms + b * step) / 1000.0,
                    lo,
                    hi,
                    total / count,
                    last,
                    int(count),
                )
                for b, (lo, hi, total, count, _, last) in sorted(buckets.items())
            ]
        return RangeResult(series, step / 1000.0, "+".join(used) if series else "none")

    async def _buckets_from_raw(
        self, ids: list[int], origin: int, start: int, end: int, step: int
    ) -> list[Any]:
        sql = _query(_RAW_BUCKETS_SQL, ids, start // MINUTE_MS, (end - 1) // MINUTE_MS)
        params = {"origin": origin, "step": step, "start": start, "end": end}
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _buckets_from_rollups(
        self, ids: list[int], origin: int, end: int, step: int
    ) -> list[Any]:
        params = {
            "origin": origin,
            "step": step,
            "first": -(-origin // MINUTE_MS),
            "stop": end // MINUTE_MS,
        }
        async with self._db.execute(_query(_ROLLUP_BUCKETS_SQL, ids), params) as cursor:
            return list(await cursor.fetchall())

    async def events(
        self,
        start: float,
        end: float,
        *,
        kinds: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Events in [start, end), oldest first, at most ``limit``."""
        sql = "SELECT ts, kind, source, text, severity FROM events WHERE ts >= ? AND ts < ?"
        params: list[Any] = [to_ms(start), to_ms(end)]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            params.extend(kinds)
        if sources:
            sql += f" AND source IN ({','.join('?' * len(sources))})"
            params.extend(sources)
        sql += " ORDER BY ts, id LIMIT ?"
        params.append(max(0, limit))
        async with self._db.execute(sql, params) as cursor:
            rows = await cursor.fetchall()
        return [
            Event(ts / 1000.0, kind, source, text, severity)
            for ts, kind, source, text, severity in rows
        ]

    # -- incidents and alerts ------------------------------------------------

    async def _commit(self, sql: str, params: Sequence[Any]) -> int:
        self._writable()
        try:
            cursor = await self._db.execute(sql, params)
            await self._db.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._db.rollback()
            raise
        return int(cursor.lastrowid or 0)

    async def open_incident(
        self, target: str, cause: str, ts: float, confidence: float, evidence: Mapping[str, Any]
    ) -> int:
        timeline = [{"ts": ts, "what": "opened", "cause": cause, "confidence": confidence}]
        return await self._commit(
            "INSERT INTO incidents (target, cause, opened_ts, confidence, evidence_json,"
            " timeline_json) VALUES (?, ?, ?, ?, ?, ?)",
            (target, cause, to_ms(ts), confidence, json.dumps(evidence), json.dumps(timeline)),
        )

    async def note_incident(
        self,
        incident_id: int,
        ts: float,
        what: str,
        cause: str | None = None,
        confidence: float | None = None,
        evidence: Mapping[str, Any] | None = None,
        closed: bool = False,
    ) -> None:
        """Add a step to an incident's timeline; a new cause, evidence or its close with it."""
        async with self._db.execute(
            "SELECT cause, confidence, evidence_json, timeline_json FROM incidents WHERE id = ?",
            (incident_id,),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise StoreError(f"no incident {incident_id}")
        timeline = json.loads(row[3])
        step: dict[str, Any] = {"ts": ts, "what": what}
        if cause is not None:
            step["cause"] = cause
        timeline.append(step)
        await self._commit(
            "UPDATE incidents SET cause = ?, confidence = ?, evidence_json = ?, timeline_json = ?,"
            " closed_ts = ? WHERE id = ?",
            (
                cause or row[0],
                row[1] if confidence is None else confidence,
                row[2] if evidence is None else json.dumps(evidence),
                json.dumps(timeline),
                to_ms(ts) if closed else None,
                incident_id,
            ),
        )

    async def incidents(self, since: float | None = None) -> list[dict[str, Any]]:
        async with self._db.execute(
            "SELECT id, target, cause, opened_ts, closed_ts, confidence, evidence_json,"
            " timeline_json FROM incidents WHERE opened_ts >= ? ORDER BY opened_ts",
            (to_ms(since) if since is not None else -(2**62),),
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            {
                "id": r[0],
                "target": r[1],
                "cause": r[2],
                "opened": r[3] / 1000,
                "closed": None if r[4] is None else r[4] / 1000,
                "confidence": r[5],
                "evidence": json.loads(r[6]),
                "timeline": json.loads(r[7]),
            }
            for r in rows
        ]

    async def record_alert(
        self,
        ts: float,
        name: str,
        target: str,
        status: str,
        fingerprint: str,
        payload: Mapping[str, Any],
        incident_id: int | None = None,
        source: str = "quell",
    ) -> int:
        return await self._commit(
            "INSERT INTO alerts (ts, source, name, target, status, fingerprint, incident_id,"
            " payload_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                to_ms(ts),
                source,
                name,
                target,
                status,
                fingerprint,
                incident_id,
                json.dumps(payload),
            ),
        )

    async def alerts(self, since: float | None = None) -> list[dict[str, Any]]:
        async with self._db.execute(
            "SELECT ts, source, name, target, status, fingerprint, incident_id, payload_json"
            " FROM alerts WHERE ts >= ? ORDER BY ts",
            (to_ms(since) if since is not None else -(2**62),),
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            {"ts": r[0] / 1000, "source": r[1], "name": r[2], "target": r[3], "status": r[4],
             "fingerprint": r[5], "incident_id": r[6], "payload": json.loads(r[7])}
            for r in rows
        ]  # fmt: skip

    async def count_samples(self) -> int:
        async with self._db.execute("SELECT count(*) FROM samples") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def integrity_check(self) -> str:
        async with self._db.execute("PRAGMA integrity_check") as cursor:
            rows = await cursor.fetchall()
        return "; ".join(str(r[0]) for r in rows)

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0


def _merge(merged: dict[int, dict[int, list[float]]], rows: Iterable[Any]) -> None:
    """Fold bucket rows (id, b, lo, hi, total, n, last_ts, last) into ``merged``.

    A bucket can get rows from both tables where roll-ups end and raw
    samples begin; the combined last value is the one with the later time.
    """
    for series_id, b, lo, hi, total, count, last_ts, last in rows:
        buckets = merged.setdefault(int(series_id), {})
        have = buckets.get(int(b))
        if have is None:
            buckets[int(b)] = [lo, hi, total, count, last_ts, last]
            continue
        have[0] = min(have[0], lo)
        have[1] = max(have[1], hi)
        have[2] += total
        have[3] += count
        if last_ts >= have[4]:
            have[4], have[5] = last_ts, last


def take_lock(path: Path, holder: str) -> tuple[IO[str] | None, str]:
    """An exclusive ``flock`` on ``path`` with ``holder`` written in it.

    (handle, holder) when taken; (None, what the holder wrote) when another
    open file holds it. The kernel drops the lock with the process, so a
    crash never leaves it taken. OSError when the file cannot be opened.
    """
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        held_by = handle.read().strip()
        handle.close()
        return None, held_by
    handle.seek(0)
    handle.truncate()
    handle.write(f"{holder}\n")
    handle.flush()
    return handle, holder


def _take_writer_lock(path: Path) -> IO[str]:
    lock_path = writer_lock_path(path)
    try:
        handle, holder = take_lock(lock_path, str(os.getpid()))
    except OSError as problem:
        raise StoreError(f"cannot open {lock_path}: {problem.strerror}") from None
    if handle is None:
        raise StoreError(
            f"{path} is being written by pid {holder or 'another process'}; one writer per "
            "store (readers may open it read-only)"
        )
    return handle


def _write_tick(
    db: sqlite3.Connection,
    rows: list[tuple[int, int, int, float]],
    missing: list[tuple[Sample, SeriesKey]],
    events: list[tuple[int, str, str, str, str]],
    rewind_to: int | None,
) -> dict[SeriesKey, int]:
    """One tick's transaction, run on the store connection's own thread."""
    fresh: dict[SeriesKey, int] = {}
    try:
        added = []
        for sample, key in missing:
            series_id = fresh.get(key)
            if series_id is None:
                # The no-op update makes RETURNING answer for a row that exists too.
                series_id = fresh[key] = db.execute(
                    "INSERT INTO series (name, labels_json) VALUES (?, ?) "
                    "ON CONFLICT (name, labels_json) DO UPDATE SET name = excluded.name "
                    "RETURNING id",
                    (key[0], labels_json(key[1])),
                ).fetchone()[0]
            ms = to_ms(sample.ts)
            added.append((ms // MINUTE_MS, series_id, ms, sample.value))
        if rows or added:
            db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?)", rows + added)
        if events:
            db.executemany(
                "INSERT INTO events (ts, kind, source, severity, text) VALUES (?, ?, ?, ?, ?)",
                events,
            )
        if rewind_to is not None:
            # Samples late for minutes already rolled up (a buffered tick
            # written after a disk-full spell): roll those minutes again.
            db.execute(SET_META_SQL, ("rolled_through", rewind_to))
        db.commit()
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.rollback()
        raise
    return fresh
