"""The JSON access log: one line per request, written off the hot path.

A request only appends a preformatted string to a list; a background task
writes the list out every 100 ms (sooner when it grows large) in one write
call, and rotates by size (between writes, so a file may pass the limit by
one write's worth). At tens of thousands of rejections per second a
write per line, or json.dumps per line, would cost more than the rejection.

Lines are assembled from pieces that are safe JSON already: key and upstream
names are encoded once when they are configured, outcomes are fixed words,
and anything the client controls goes through json.dumps.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("quell.gateway")

FLUSH_INTERVAL_S = 0.1
FLUSH_LINES = 4096


class Timestamps:
    """ISO-8601 UTC with milliseconds; the calendar part is formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


def _ms(seconds: float | None) -> str:
    return "null" if seconds is None else f"{seconds * 1000:.2f}"


def _int(value: int | None) -> str:
    return "null" if value is None else str(value)


class AccessLog:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.stamp = Timestamps()
        self._lines: list[str] = []
        self._file = self._open()
        self._size = self._file.tell()
        self._task: asyncio.Task[None] | None = None
        self._flush_soon = False
        self.write_errors = 0

    def _open(self) -> io.FileIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.open("ab", buffering=0)

    def record(
        self,
        key_json: str,
        priority: str,
        path: str,  # one of the gateway's own routes, never the client's text
        status: int,
        outcome: str,
        queue_wait_s: float | None,
        service_s: float | None,
        upstream_json: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        error_json: str,
    ) -> None:
        self._lines.append(
            f'{{"time":"{self.stamp(time.time())}","key":{key_json},"priority":"{priority}",'
            f'"path":"{path}","status":{status},"outcome":"{outcome}",'
            f'"queue_wait_ms":{_ms(queue_wait_s)},"service_ms":{_ms(service_s)},'
            f'"upstream":{upstream_json},"prompt_tokens":{_int(prompt_tokens)},'
            f'"completion_tokens":{_int(completion_tokens)},"error":{error_json}}}\n'
        )
        if len(self._lines) >= FLUSH_LINES and not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self.flush)

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="access-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
        self._file.close()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        self._flush_soon = False
        if not self._lines:
            return
        data = "".join(self._lines).encode()
        self._lines.clear()
        try:
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(data)
            self._size += len(data)
        except OSError as error:
            # A full disk must not take the gateway down with it; say so once
            # per burst of failures and keep serving.
            self.write_errors += 1
            if self.write_errors == 1 or self.write_errors % 1000 == 0:
                log.error("cannot write the access log %s: %s", self.path, error)

    def _rotate(self) -> None:
        self._file.close()
        if self.backups:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self._open()
        self._size = 0
