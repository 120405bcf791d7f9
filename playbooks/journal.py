"""The record of every playbook run, in the store's file, chained so an edit shows.

Runs live in ``playbook_runs`` (one row per run, its latest state) and
``audit`` (one row per thing that happened, never updated). Each audit row's
hash covers the previous row's hash and its own content, so changing or
deleting a row breaks every hash after it; ``verify_chain`` says where.

The journal writes beside the daemon, which owns the samples: SQLite in WAL
mode serialises the two writers, and each audit row is appended inside
``BEGIN IMMEDIATE`` so two runs cannot both chain onto the same row.

One run at a time per target: an exclusive ``flock`` on a file beside the
store, held for the whole run. The kernel drops it when the process dies, so
a crashed run never leaves the target locked.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from collectors.store import BUSY_TIMEOUT_MS, StoreError, prepare, take_lock, to_ms

GENESIS = "0" * 64
# Outcomes that changed, or tried to change, something: they count against
# cooldowns and hourly caps. Dry runs and refusals do not.
ACTED = ("applied", "rolled_back", "failed", "running", "rollback_failed")


class Busy(RuntimeError):
    """Another run holds the target, or a cooldown or an hourly cap is in force."""


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def chain_hash(prev_hash: str, ts_ms: int, run_id: int | None, payload_json: str) -> str:
    material = f"{prev_hash}\n{ts_ms}\n{run_id if run_id is not None else ''}\n{payload_json}"
    return hashlib.sha256(material.encode()).hexdigest()


class Journal:
    def __init__(self, path: Path | str, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            if not self.path.exists():
                raise StoreError(f"no store at {self.path}")
            self._db = sqlite3.connect(
                f"file:{self.path.resolve()}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"cannot create {self.path.parent}: {error.strerror}") from None
            prepare(self.path)
            self._db = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
        self._locks: dict[str, IO[str]] = {}

    def close(self) -> None:
        for handle in self._locks.values():
            handle.close()
        self._locks.clear()
        self._db.close()

    # -- the lock per target -----------------------------------------------

    def lock_path(self, target: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", target)[:80]
        return self.path.with_name(f"{self.path.name}.play-{safe}.lock")

    def lock(self, target: str, holder: str) -> None:
        """Take the target's lock or raise ``Busy`` naming who holds it."""
        path = self.lock_path(target)
        stamp = f"{holder} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})"
        try:
            handle, held_by = take_lock(path, stamp)
        except OSError as error:
            raise StoreError(f"cannot open {path}: {error.strerror or error}") from None
        if handle is None:
            raise Busy(f"{target} is locked by a run in progress: {held_by or 'another process'}")
        self._locks[target] = handle

    def release(self, target: str) -> None:
        handle = self._locks.pop(target, None)
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.truncate(0)
            handle.close()

    # -- writing -----------------------------------------------------------

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _append(self, db: sqlite3.Connection, run_id: int | None, payload: dict[str, Any]) -> str:
        row = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev = row[0] if row else GENESIS
        ts = to_ms(time.time())
        text = _canonical(payload)
        digest = chain_hash(prev, ts, run_id, text)
        db.execute(
            "INSERT INTO audit (ts, run_id, payload_json, prev_hash, hash) VALUES (?, ?, ?, ?, ?)",
            (ts, run_id, text, prev, digest),
        )
        return digest

    def start(
        self,
        playbook: str,
        target: str,
        trigger: str,
        status: str,
        record: dict[str, Any],
        incident_id: int | None = None,
    ) -> int:
        try:
            with self._immediate() as db:
                cursor = db.execute(
                    "INSERT INTO playbook_runs (ts, playbook, target, trigger, status,"
                    " incident_id, payload_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        to_ms(time.time()),
                        playbook,
                        target,
                        trigger,
                        status,
                        incident_id,
                        _canonical(record),
                    ),
                )
                run_id = int(cursor.lastrowid or 0)
                self._append(db, run_id, {"event": "started", "status": status, **record})
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot record the run: {error}") from None
        return run_id

    def note(self, run_id: int, event: dict[str, Any]) -> None:
        try:
            with self._immediate() as db:
                self._append(db, run_id, event)
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot record the run: {error}") from None

    def finish(self, run_id: int, status: str, record: dict[str, Any]) -> None:
        try:
            with self._immediate() as db:
                db.execute(
                    "UPDATE playbook_runs SET status = ?, finished_ts = ?, payload_json = ?"
                    " WHERE id = ?",
                    (status, to_ms(time.time()), _canonical(record), run_id),
                )
                self._append(
                    db,
                    run_id,
                    {"event": "finished", "status": status, "outcome": record.get("outcome")},
                )
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot record the run: {error}") from None

    def mark(self, run_id: int, status: str, why: str) -> None:
        """Change a past run's status (rolled back later), with the reason in the chain."""
        with self._immediate() as db:
            db.execute("UPDATE playbook_runs SET status = ? WHERE id = ?", (status, run_id))
            self._append(db, run_id, {"event": "status", "status": status, "why": why})

    def record_alert(
        self,
        ts: float,
        name: str,
        target: str,
        status: str,
        fingerprint: str,
        payload: dict[str, Any],
    ) -> None:
        """An Alertmanager alert that started a run; the fingerprint keeps it from starting two."""
        with self._immediate() as db:
            db.execute(
                "INSERT INTO alerts (ts, source, name, target, status, fingerprint, payload_json)"
                " VALUES (?, 'alertmanager', ?, ?, ?, ?, ?)",
                (to_ms(ts), name, target, status, fingerprint, _canonical(payload)),
            )

    # -- reading -----------------------------------------------------------

    def _rows(self, where: str = "", params: tuple[Any, ...] = (), limit: int = 50) -> list[Any]:
        columns = (
            "id, ts, playbook, target, trigger, status, finished_ts, incident_id, payload_json"
        )
        # ``where`` is one of this class's own fixed clauses; values go as parameters.
        query = f"SELECT {columns} FROM playbook_runs {where} ORDER BY id DESC LIMIT ?"  # noqa: S608
        return self._db.execute(query, (*params, limit)).fetchall()

    @staticmethod
    def _run(row: Any) -> dict[str, Any]:
        record = json.loads(row[8])
        return {
            "id": row[0],
            "ts": row[1] / 1000,
            "playbook": row[2],
            "target": row[3],
            "trigger": row[4],
            "status": row[5],
            "finished": None if row[6] is None else row[6] / 1000,
            "incident_id": row[7],
            **{k: v for k, v in record.items() if k not in ("id", "status", "playbook")},
        }

    def runs(self, limit: int = 50, since: float | None = None) -> list[dict[str, Any]]:
        if since is None:
            return [self._run(r) for r in self._rows(limit=limit)]
        return [self._run(r) for r in self._rows("WHERE ts >= ?", (to_ms(since),), limit)]

    def run(self, run_id: int) -> dict[str, Any] | None:
        rows = self._rows("WHERE id = ?", (run_id,), 1)
        return self._run(rows[0]) if rows else None

    def check_limits(
        self, playbook: str, target: str, cooldown_s: float, max_runs_per_hour: int
    ) -> None:
        """Raise ``Busy`` when the cooldown or the hourly cap forbids another run now."""
        now = time.time()
        marks = ",".join("?" for _ in ACTED)
        where = f"playbook = ? AND target = ? AND status IN ({marks}) AND ts >= ?"
        rows = self._db.execute(
            f"SELECT ts, finished_ts FROM playbook_runs WHERE {where} ORDER BY ts DESC",  # noqa: S608
            (playbook, target, *ACTED, to_ms(now - max(3600.0, cooldown_s))),
        ).fetchall()
        if cooldown_s and rows:
            last_end = (rows[0][1] or rows[0][0]) / 1000
            left = last_end + cooldown_s - now
            if left > 0:
                raise Busy(
                    f"{playbook} on {target} is cooling down for {left:.0f} s more "
                    f"(cooldown {cooldown_s:g} s after the run at {time.strftime('%H:%M:%S', time.localtime(last_end))})"  # noqa: E501
                )
        if max_runs_per_hour:
            in_hour = [r for r in rows if r[0] / 1000 >= now - 3600]
            if len(in_hour) >= max_runs_per_hour:
                oldest = min(r[0] for r in in_hour) / 1000
                raise Busy(
                    f"{playbook} on {target} ran {len(in_hour)} times in the last hour "
                    f"(cap {max_runs_per_hour}); next allowed in {oldest + 3600 - now:.0f} s"
                )

    def verify_chain(self) -> list[str]:
        """Problems found in the audit chain; empty when every row is as written."""
        problems: list[str] = []
        prev = GENESIS
        for row_id, ts, run_id, text, prev_hash, digest in self._db.execute(
            "SELECT id, ts, run_id, payload_json, prev_hash, hash FROM audit ORDER BY id"
        ):
            if prev_hash != prev:
                problems.append(f"audit row {row_id}: does not follow the row before it")
            if chain_hash(prev_hash, ts, run_id, text) != digest:
                problems.append(f"audit row {row_id}: content does not match its hash")
            prev = digest
        return problems

    def audit(self, run_id: int) -> list[dict[str, Any]]:
        return [
            {"ts": ts / 1000, **json.loads(text)}
            for ts, text in self._db.execute(
                "SELECT ts, payload_json FROM audit WHERE run_id = ? ORDER BY id", (run_id,)
            )
        ]

    def latest_incident(self, target: str, within_s: float = 86400.0) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT id, cause, opened_ts, closed_ts, confidence, evidence_json FROM incidents"
            " WHERE target = ? AND opened_ts >= ? ORDER BY opened_ts DESC LIMIT 1",
            (target, to_ms(time.time() - within_s)),
        ).fetchone()
        if row is None:
            return None
        return {
            "id": row[0],
            "cause": row[1],
            "opened": row[2] / 1000,
            "closed": None if row[3] is None else row[3] / 1000,
            "confidence": row[4],
            "evidence": json.loads(row[5]),
        }
