"""The first and last moment a store holds samples for: the extent of a replay.

``collectors.store.Store`` answers questions about windows of time, not
about its own extent, so this reads the extent with plain sqlite3 on a
read-only connection. Both queries walk the samples' primary key (minute
first) from one end, so they cost the same on a day-old file as on a new one.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import quote

MINUTE_MS = 60_000


def store_span(path: Path) -> tuple[float, float] | None:
    """(first, last) sample time in seconds, or None for a store without samples."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as connection:
        newest = connection.execute("SELECT max(minute) FROM samples").fetchone()[0]
        oldest = connection.execute("SELECT min(minute) FROM samples").fetchone()[0]
        if newest is None:
            return None
        last = connection.execute(
            "SELECT max(ts) FROM samples WHERE minute = ?", (newest,)
        ).fetchone()[0]
        first = connection.execute(
            "SELECT min(ts) FROM samples WHERE minute = ?", (oldest,)
        ).fetchone()[0]
        # Raw samples expire after their roll-ups are written: older minutes
        # survive only as roll-ups, and a replay may start there.
        # One seek per series down the roll-ups' (series, minute) key; a bare
        # min(minute) would scan every roll-up row.
        rolled = connection.execute(
            "SELECT min((SELECT min(minute) FROM rollups_1m WHERE series_id = series.id))"
            " FROM series"
        ).fetchone()[0]
        if rolled is not None:
            first = min(first, int(rolled) * MINUTE_MS)
    return first / 1000.0, last / 1000.0
