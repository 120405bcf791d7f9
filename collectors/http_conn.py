"""GET over kept-alive HTTP/1.1 connections, for the scrapes of every tick.

The daemon GETs each target's page every second, so the client's own cost
is paid thousands of times an hour on every watched host. aiohttp's client
spent about 0.6 ms of CPU on a /metrics GET (response object, stream
reader, header multidicts, a timer context per read); a connection that
answers exactly one GET at a time into a future spends about a fifth of
that. Everything here is for that one shape of exchange:

- the whole answer is read into memory (a scrape parses all of it anyway),
  bounded by ``max_bytes``, then handed over at once;
- the read timeout is the longest silence allowed between bytes, checked
  by one timer per GET that re-arms itself only when bytes came meanwhile;
- a connection is kept when the answer said keep-alive and was read to its
  end, and dropped when the server closes it or sends bytes unasked.

The wording of failures is left to ``collectors.http``: this module raises
``Broken`` (after the request was written), ``Stale`` (a reused connection
closed before any byte of the answer: the GET may be sent again) and
``TimeoutError``.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools


class Broken(Exception):
    """The answer broke off or was malformed; the message says how."""


class TooLarge(Exception):
    """The answer is over the size limit; the connection is closed."""


class Stale(Broken):
    """A reused connection was closed before the answer began."""


class Answered:
    """A whole answer: status, headers (names in lower case) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class ScrapeConnection(asyncio.Protocol):
    """One connection; ``await get(request, ...)`` one GET at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._answer: asyncio.Future[Answered] | None = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._limit = 0
        self._framed = False  # a length or chunking says where the answer ends
        self._started = False  # any byte of the answer came
        self._keep = False
        self._over = False
        self._last_byte = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are alike asyncio.Transport, not subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            # Bytes nobody asked for (after the answer's end, or while idle): this
            # connection can't be trusted with the next GET.
            self._keep = False
            self.close()
            return
        self._started = True
        self._last_byte = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as problem:
            self._settle(Broken(f"a malformed answer ({problem})"))
        if self._over:
            self._settle(TooLarge())

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost ends the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is None or self._answer.done():
            return
        if self._status and not self._framed:
            # Neither a length nor chunks (HTTP/1.0 servers): the body ends with the connection.
            self._keep = False
            self._settle(None)
        elif not self._started and self.reused:
            self._settle(Stale("the server had closed the kept-alive connection"))
        else:
            reason = f" ({exc})" if exc else ""
            self._settle(Broken(f"the server closed the connection mid-answer{reason}"))

    # -- httptools callbacks ---------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._answer is None or self._answer.done():
            return  # a stray answer's (see on_message_complete)
        name = name.lower()
        if name == b"content-length":
            self._framed = True
            if value.isdigit() and int(value) > self._limit:
                self._over = True
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            self._framed = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._answer is None or self._answer.done():
            return
        self._size += len(body)
        if self._size > self._limit:
            self._over = True
        elif not self._over:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._answer is None or self._answer.done():
            # A second answer in the same read (a proxy's bug): whatever follows it
            # can't be matched to a request, so the connection goes.
            self._keep = False
            return
        self._keep = self.parser.should_keep_alive()
        self._settle(None)

    # -- for the client ------------------------------------------------------

    async def get(self, request: bytes, read_timeout_s: float, max_bytes: int) -> Answered:
        """Write ``request`` and wait for the whole answer."""
        assert self.transport is not None and self._answer is None
        answer: asyncio.Future[Answered] = self.loop.create_future()
        self._answer = answer
        self._status, self._headers, self._body, self._size = 0, [], [], 0
        self._limit, self._framed, self._started, self._keep = max_bytes, False, False, False
        self._over = False
        self._last_byte = self.loop.time()
        self._timer = self.loop.call_at(
            self._last_byte + read_timeout_s, self._check, read_timeout_s
        )
        self.transport.write(request)
        try:
            return await answer
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._answer = None
            if not self._keep:
                self.close()

    def _check(self, read_timeout_s: float) -> None:
        if self._answer is None or self._answer.done():
            return
        due = self._last_byte + read_timeout_s
        if self.loop.time() >= due:
            self._settle(TimeoutError())
        else:
            self._timer = self.loop.call_at(due, self._check, read_timeout_s)

    def _settle(self, problem: BaseException | None) -> None:
        answer = self._answer
        if answer is None or answer.done():
            return
        if problem is None:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            answer.set_result(Answered(self._status, self._headers, body))
        else:
            self._keep = False
            answer.set_exception(problem)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
