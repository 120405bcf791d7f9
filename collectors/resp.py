"""A minimal Redis client: pipelined commands, integer and string replies.

Reading queue lengths needs LLEN, ZCARD, SCARD and HLEN on one connection,
nothing more. Speaking RESP2 directly keeps the collector free of a Redis
client dependency (and of its connection-pool machinery) for four commands.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

MAX_BULK_BYTES = 1 << 20


class RespError(Exception):
    """An error reply from the server, or a broken conversation."""


def encode(*args: str | bytes | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def read_reply(reader: asyncio.StreamReader) -> Any:
    """One reply; an error reply is returned as a RespError, not raised."""
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise RespError("connection closed by the server")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode(errors="replace")
    if kind == b"-":
        return RespError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        if size > MAX_BULK_BYTES:
            raise RespError(f"reply of {size} bytes is larger than expected")
        data = await reader.readexactly(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(body)
        if count < 0:
            return None
        return [await read_reply(reader) for _ in range(count)]
    raise RespError(f"unexpected reply {line[:40]!r}")


class RedisConnection:
    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        password: str | None = None,
        username: str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self._password = password
        self._username = username
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        setup: list[tuple[str | bytes | int, ...]] = []
        if self._password is not None:
            if self._username:
                setup.append(("AUTH", self._username, self._password))
            else:
                setup.append(("AUTH", self._password))
        if self.db:
            setup.append(("SELECT", self.db))
        if setup:
            for reply in await self._exchange(setup):
                if isinstance(reply, RespError):
                    await self.close()
                    raise reply

    async def _exchange(self, commands: list[tuple[str | bytes | int, ...]]) -> list[Any]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"".join(encode(*c) for c in commands))
        await self._writer.drain()
        return [await read_reply(self._reader) for _ in commands]

    async def pipeline(self, commands: list[tuple[str | bytes | int, ...]]) -> list[Any]:
        """Send every command at once; replies in order. Reconnects when needed."""

        async def run() -> list[Any]:
            if self._writer is None or self._writer.is_closing():
                await self._connect()
            return await self._exchange(commands)

        try:
            return await asyncio.wait_for(run(), self.timeout_s)
        except BaseException:
            # A half-read reply would desynchronise every later command.
            await self.close()
            raise

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
