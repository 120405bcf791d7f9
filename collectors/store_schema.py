"""The store's tables, and the migrations that bring an older file up to date.

Every time column (``ts``, ``*_ts``) is INTEGER milliseconds since the epoch.
Integers keep the samples key small (a 6-byte varint against an 8-byte REAL),
make bucketing an exact integer division, and let ``ts = ?`` find a row
without float-equality surprises. Milliseconds are fine enough for any tick
quell allows (50 ms and up).

The schema version is ``PRAGMA user_version``. ``MIGRATIONS[n]`` turns a
version ``n - 1`` file into version ``n``; each runs in its own transaction
together with the version bump, so a file is never left half-migrated. Add a
migration for every change; never edit one that has shipped, since files
written by it exist.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

# v1: the time series (series, samples, one-minute roll-ups) and events.
_V1 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;

CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    UNIQUE (name, labels_json)
);

-- Keyed minute first, then series, then time, without a rowid. A tick's
-- rows all land in the current minute's few pages, so a commit writes a
-- handful of pages to the WAL; keyed (series_id, ts) it dirtied one page per
-- series and ingest ran 5-7x slower. Reads still seek: a window or range of
-- one series is one short run per minute, a roll-up or a retention delete
-- is one contiguous run of whole minutes.
CREATE TABLE samples (
    minute INTEGER NOT NULL,  -- ts // 60000
    series_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (minute, series_id, ts)
) WITHOUT ROWID;

CREATE TABLE rollups_1m (
    series_id INTEGER NOT NULL,
    minute INTEGER NOT NULL,  -- ts // 60000 of the minute's first millisecond
    min REAL NOT NULL,
    max REAL NOT NULL,
    mean REAL NOT NULL,
    last REAL NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (series_id, minute)
) WITHOUT ROWID;

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    severity TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX events_by_ts ON events (ts);
CREATE INDEX events_by_kind ON events (kind, ts);
"""

# v2: what diagnosis, alerts and playbooks record, kept in the same file so
# an incident, the samples that showed it and the runs that fixed it can be
# replayed together. The audit rows form a hash chain (each row's hash covers
# the previous row's); computing and checking it belongs to the playbooks.
_V2 = """
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    cause TEXT NOT NULL,
    opened_ts INTEGER NOT NULL,
    closed_ts INTEGER,
    confidence REAL NOT NULL DEFAULT 0,
    evidence_json TEXT NOT NULL DEFAULT '{}',
    timeline_json TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX incidents_by_opened ON incidents (opened_ts);
CREATE INDEX incidents_open ON incidents (target, closed_ts);

CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    fingerprint TEXT NOT NULL DEFAULT '',
    incident_id INTEGER REFERENCES incidents (id),
    payload_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX alerts_by_ts ON alerts (ts);

CREATE TABLE playbook_runs (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    playbook TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    trigger TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    finished_ts INTEGER,
    incident_id INTEGER REFERENCES incidents (id),
    payload_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX playbook_runs_by_ts ON playbook_runs (ts);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    run_id INTEGER REFERENCES playbook_runs (id),
    payload_json TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE
);
"""


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    def apply(connection: sqlite3.Connection) -> None:
        # executescript would COMMIT first; run statement by statement instead
        # so the migration and its version bump share one transaction.
        for statement in _statements(sql):
            connection.execute(statement)

    return apply


def _statements(sql: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _script(_V1),
    2: _script(_V2),
}
LATEST = max(MIGRATIONS)


class SchemaError(Exception):
    """The file is not a store this code can use; the message says why."""


def version(connection: sqlite3.Connection) -> int:
    row = connection.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(connection: sqlite3.Connection, upto: int = LATEST) -> int:
    """Bring the file to version ``upto``; return the version it had before.

    ``connection`` must be in autocommit mode (isolation_level None). Several processes may
    open one new file at once (two playbook runs, a daemon and a console): each step reads
    the version again under the write lock, so a step another process has just applied is
    not applied twice.
    """
    already = version(connection)
    if 0 < already == upto:
        return already  # versions only go up: no write lock needed to know this
    found: int | None = None
    while True:
        connection.execute("BEGIN IMMEDIATE")
        try:
            current = version(connection)
            if found is None:
                found = current
            if current > LATEST:
                raise SchemaError(
                    f"the store is schema v{current}, newer than this quell knows (v{LATEST}); "
                    "upgrade quell to read it"
                )
            if current == 0 and _has_tables(connection):
                raise SchemaError("the file is an SQLite database but not a quell store")
            if current < upto:
                MIGRATIONS[current + 1](connection)
                connection.execute(f"PRAGMA user_version = {current + 1:d}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        if current >= upto:
            return found


def _has_tables(connection: sqlite3.Connection) -> bool:
    row = connection.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
    return bool(row[0])
