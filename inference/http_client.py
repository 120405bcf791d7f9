"""Keep-alive HTTP/1.1 to one origin, on ``asyncio.Protocol`` and httptools.

The gateway forwards every admitted request through here and the collector
daemon scrapes every target through it, so its cost per request is the
gateway's throughput and a good share of the daemon's CPU. aiohttp's client
spent about a third of the gateway's CPU on a proxied request, and about
0.6 ms of the daemon's per scrape (docs/benchmarks.md): a response object
with a stream reader, header multidicts, timer contexts per read. This one
does what a reverse proxy and a scraper need and no more:

- a pool of idle connections per origin, newest first, not reused after
  ``keepalive_s`` idle (below the server's own keep-alive, so a request is
  rarely written into a socket the server is closing) and dropped when the
  server closes them;
- the request written in one call, from a request head built once per path;
- the answer's status and headers, then its body read whole or relayed in
  chunks as they arrive (chunked or content-length, httptools de-chunks);
- a connect timeout, and a read timeout that is the longest silence allowed
  between bytes, enforced by a sweep ten times a second while requests are
  out rather than a timer per read;
- a connection whose answer was not read to the end is closed, so a server
  sees an abandoned stream as its client gone.

Errors: ``ConnectFailed`` when no connection could be made (nothing was
sent, another upstream may be tried), ``TimeoutError`` for either timeout,
``OriginBroken`` for anything after the request went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

SWEEP_S = 0.1
MAX_HEADS = 1024
# Past this much unread answer, stop reading until the relay catches up.
READ_HIGH_WATER = 1 << 20


class OriginError(Exception):
    """The upstream could not be reached or broke off; the message says how."""


class ConnectFailed(OriginError):
    """No connection: the request was never sent."""


class OriginBroken(OriginError):
    """The connection failed or the answer was malformed after the request was sent."""


class Response:
    """One upstream answer: status and headers at once, the body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_error",
        "_waiter",
        "complete",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.complete = False
        self.keep_alive = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def header(self, name: bytes) -> bytes | None:
        """First value of a header; ``name`` in lower case."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        parts: list[bytes] = []
        while True:
            if self._chunks:
                parts += self._chunks
                self._take()
            if self.complete:
                break
            await self._wait()
        self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive; ``release()`` after, whether or not it ended."""
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._take()
                yield data
                continue
            if self.complete:
                return
            await self._wait()

    def release(self) -> None:
        """Give the connection back if the answer was read to its end, else close it."""
        conn = self._conn
        if conn.response is not self:
            return
        conn.response = None
        conn.deadline = 0.0
        if self.complete and self.keep_alive and not conn.closed:
            conn.origin.idle(conn)
        else:
            conn.close()

    # -- fed by the connection ---------------------------------------------

    def _take(self) -> None:
        self._chunks = []
        if self._buffered > READ_HIGH_WATER:
            self._conn.resume()
        self._buffered = 0

    def _add(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER:
            self._conn.pause()
        self._wake()

    async def _wait(self) -> None:
        """Until more of the answer came; raises its failure once the bytes before it are read."""
        if self._error is None:
            waiter = self._waiter = self._conn.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        error: BaseException | None = self._error
        if error is not None and not self._chunks and not self.complete:
            raise error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.complete or self._error is not None:
            return
        self._error = error
        self._wake()


class _Connection(asyncio.Protocol):
    def __init__(self, origin: OriginClient) -> None:
        self.origin = origin
        self.loop = origin.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.framed = False  # the answer's end is known without the connection's
        self.paused = False
        self.deadline = 0.0  # loop time by which more bytes must come; 0: not waiting
        self.idle_since = 0.0

    # -- asyncio.Protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            # Bytes with no request outstanding: the connection is not in a
            # state anyone can trust.
            self.close()
            return
        self.deadline = self.loop.time() + self.origin.read_timeout_s
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            response._fail(OriginBroken(f"a malformed answer: {error}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # then connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.origin.forget(self)
        response = self.response
        if response is not None and not response.complete:
            if response.status and not self.framed:
                # No length and not chunked (an HTTP/1.0 server, say): the
                # body is whatever came before the close.
                response.complete = True
                response._wake()
                return
            reason = f": {exc}" if exc else ""
            response._fail(OriginBroken(f"the server closed the connection{reason}"))

    # -- httptools callbacks ---------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is not None:
            name = name.lower()
            if name == b"content-length" or (
                name == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self.framed = True
            response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is not None:
            response.status = self.parser.get_status_code()
            response._wake()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None:
            response._add(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None:
            response.keep_alive = self.parser.should_keep_alive()
            response.complete = True
            self.deadline = 0.0
            response._wake()

    # -- for the client and the response -----------------------------------

    def send(self, data: bytes) -> Response:
        response = self.response = Response(self)
        self.framed = False
        self.deadline = self.loop.time() + self.origin.read_timeout_s
        assert self.transport is not None
        self.transport.write(data)
        return response

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class OriginClient:
    """Requests to one origin (scheme, host, port, base path) over pooled connections."""

    def __init__(
        self,
        url: str,
        connect_timeout_s: float,
        read_timeout_s: float,
        keepalive_s: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self.base_path = parts.path.rstrip("/")
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host:
            host_header = f"[{self.host}]" if default_port else f"[{self.host}]:{self.port}"
        self._fixed_headers = "".join(
            f"{name}: {value}\r\n"
            for name, value in {"Host": host_header, **(headers or {})}.items()
        ).encode("latin-1")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        self.loop = asyncio.get_running_loop()
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._heads: dict[tuple[str, str], bytes] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: bytes = b""
    ) -> Response:
        """Send a request and wait for the answer's status and headers.

        ``headers``: more header lines for this request alone, each ending in CRLF.
        """
        head = self._heads.get((method, path))
        if head is None:
            if len(self._heads) >= MAX_HEADS:
                self._heads.clear()  # query strings that never repeat
            head = self._heads[(method, path)] = (
                f"{method} {self.base_path}{path} HTTP/1.1\r\n".encode("latin-1")
                + self._fixed_headers
            )
        length = headers + b"content-length: %d\r\n\r\n" % len(body or b"")
        data = head + length + body if body else head + length
        conn = self._reuse() or await self._connect()
        self._busy.add(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())
        response = conn.send(data)
        try:
            while not response.status:
                await response._wait()
        except BaseException:
            response.release()
            raise
        return response

    def _reuse(self) -> _Connection | None:
        idle = self._idle
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self.keepalive_s:
                # Idle past the keep-alive: the server may be closing it, and
                # every older one behind it in the list is older still.
                conn.close()
                continue
            return conn
        return None

    async def _connect(self) -> _Connection:
        try:
            _, protocol = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                ),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise TimeoutError(
                f"no connection to {self.host}:{self.port} within {self.connect_timeout_s:g} s"
            ) from None
        except OSError as error:
            raise ConnectFailed(error.strerror or str(error)) from None
        return protocol

    def idle(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    async def _sweep(self) -> None:
        """Time out silent answers, for as long as any request is out.

        Started by a request and gone once none is out: a sweeper waking ten
        times a second for an idle origin cost 0.9 ms of CPU a second, a
        tenth of the collector daemon's budget for three targets. Idle
        connections past the keep-alive are closed when next picked.
        """
        try:
            while self._busy:
                await asyncio.sleep(SWEEP_S)
                now = self.loop.time()
                for conn in list(self._busy):
                    response = conn.response
                    if conn.deadline and conn.deadline <= now and response is not None:
                        response._fail(
                            TimeoutError(f"nothing from the upstream for {self.read_timeout_s:g} s")
                        )
                        conn.close()
        finally:
            self._sweeper = None

    async def close(self) -> None:
        sweeper = self._sweeper
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        for conn in [*self._idle, *self._busy]:
            conn.close()
        self._idle.clear()
        self._busy.clear()
