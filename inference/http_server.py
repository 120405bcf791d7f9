"""The HTTP/1.1 server under the bundled gateway and engine.

An ``asyncio.Protocol`` per connection with httptools' parser, speaking
ASGI 3 to the app. It replaced uvicorn, whose per-request path (a request
cycle object, header normalisation on every send, a timer armed and
cancelled per request) cost about as much CPU as the gateway's own
admission logic: the rejection path is at the server's floor, and shedding
must never be the thing that falls over (docs/benchmarks.md has the
figures). What it keeps of a real server:

- keep-alive with an idle timeout, and a deadline for a request's headers
  so a client dribbling them (slowloris) is cut off;
- pipelined requests answered in order, reading paused while one waits;
- request bodies streamed to ``receive()`` with reading paused above a
  high-water mark, and ``100 Continue`` sent when the app first reads;
- responses with a ``content-length`` when the app gives one or sends the
  whole body at once, chunked otherwise (HTTP/1.0: close-delimited), no
  body for HEAD, 204 and 304, the status line and headers written with the
  first body bytes in one call;
- writes wait while the transport's buffer is over its high-water mark;
- ``http.disconnect`` from ``receive()`` once the client is gone or the
  response is sent, so a streaming relay can stop early;
- a cap on the size of the request line and headers (431) and on bad
  requests (400), an app error before the response starts is a 500, after
  it the connection is closed;
- graceful shutdown: stop accepting, close idle connections, let busy ones
  finish their response within a grace period, then the lifespan shutdown.

Timeouts are enforced by one sweep a second over all connections rather than
a timer per request; a deadline is kept within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from typing import Any, cast
from urllib.parse import unquote

import httptools

log = logging.getLogger("quell.http")

Message = MutableMapping[str, Any]
App = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}
# Larger than any limit an app configures (the gateway allows up to 1 MiB):
# the app answers its own 431 politely; this only bounds memory.
MAX_HEADER_BYTES = (1 << 20) + (64 << 10)
BODY_HIGH_WATER = 256 << 10
SWEEP_S = 1.0
LINGER_S = 2.0
NO_BODY_STATUSES = frozenset({204, 304})
METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


STATUS_LINES = {status.value: _status_line(status.value) for status in http.HTTPStatus}


def _simple_response(status: int, text: str) -> bytes:
    body = text.encode()
    return (
        STATUS_LINES.get(status, _status_line(status))
        + b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class _Clock:
    """The ``date`` header, formatted once a second rather than per response."""

    def __init__(self) -> None:
        self.date_line = b""
        self.refresh()

    def refresh(self) -> None:
        self.date_line = b"date: " + formatdate(time.time(), usegmt=True).encode() + b"\r\n"


DISCONNECT: Message = {"type": "http.disconnect"}


class _Exchange:
    """One request and its response on a connection."""

    __slots__ = (
        "body",
        "body_complete",
        "body_size",
        "chunked",
        "conn",
        "delivered",
        "discard",
        "expect_continue",
        "head",
        "http10",
        "keep_alive",
        "length_given",
        "pending_head",
        "response_complete",
        "response_started",
        "scope",
        "status",
        "waiters",
    )

    def __init__(self, conn: _Connection, scope: dict[str, Any], keep_alive: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.http10 = scope["http_version"] == "1.0"
        self.head = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.body_size = 0
        self.body_complete = False
        self.delivered = False  # the app has read the whole body
        self.discard = False  # answered before the body arrived: drop the rest
        self.expect_continue = False
        self.response_started = False
        self.response_complete = False
        self.length_given = False
        self.chunked = False
        self.status = 0
        self.pending_head: list[bytes] | None = None
        self.waiters: list[asyncio.Future[None]] | None = None

    def wake(self) -> None:
        waiters = self.waiters
        if waiters is not None:
            self.waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- ASGI receive -------------------------------------------------------

    async def receive(self) -> Message:
        conn = self.conn
        while True:
            if conn.gone:
                return DISCONNECT
            if not self.delivered:
                if self.body or self.body_complete:
                    chunks = self.body
                    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    self.body = []
                    self.body_size = 0
                    more = not self.body_complete
                    self.delivered = not more
                    conn.resume_body()
                    return {"type": "http.request", "body": body, "more_body": more}
                if self.response_complete:
                    return DISCONNECT
                if self.expect_continue:
                    self.expect_continue = False
                    conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif self.response_complete:
                return DISCONNECT
            # One future per caller: a streaming relay keeps a receive()
            # pending to hear of a disconnect and cancels it at the end,
            # which cancels its future and must not cancel anyone else's.
            waiter = conn.loop.create_future()
            if self.waiters is None:
                self.waiters = [waiter]
            else:
                self.waiters.append(waiter)
            await waiter

    # -- ASGI send ----------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.response_started or self.response_complete:
                raise RuntimeError(f"unexpected ASGI message {kind!r} here")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            conn = self.conn
            if conn.gone:
                self.response_complete = not more
                return
            out = self.pending_head
            if out is not None:
                self.pending_head = None
                self._frame(out, len(body), more)
            else:
                out = []
            if body and not self.head and self.status not in NO_BODY_STATUSES:
                if self.chunked:
                    out += (b"%x\r\n" % len(body), body, b"\r\n")
                else:
                    out.append(body)
            if not more:
                if self.chunked:
                    out.append(b"0\r\n\r\n")
                self.response_complete = True
            if out:
                conn.write(b"".join(out) if len(out) > 1 else out[0])
            if not more:
                conn.response_done(self)
            elif conn.write_paused:
                await conn.drained()
        elif kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("the response has already started")
            self.response_started = True
            status = message["status"]
            self.status = status
            head = [STATUS_LINES.get(status) or _status_line(status)]
            for name, value in message.get("headers", ()):
                lower = name.lower()
                if lower == b"content-length":
                    self.length_given = True
                elif lower == b"connection":
                    if value.lower() == b"close":
                        self.keep_alive = False
                    continue
                elif lower == b"transfer-encoding":
                    continue  # framing is the server's to choose
                if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                    raise RuntimeError(f"invalid characters in response header {name!r}")
                head += (name, b": ", value, b"\r\n")
            head.append(self.conn.server.clock.date_line)
            # Sent with the first body bytes, once their framing is known.
            self.pending_head = head
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r}")

    def _frame(self, head: list[bytes], first_len: int, more: bool) -> None:
        """Finish the header block once the first body message says how long the body is."""
        status = self.status
        if self.length_given or status in NO_BODY_STATUSES or status < 200:
            pass
        elif not more:
            head.append(b"content-length: %d\r\n" % first_len)
        elif self.head:
            pass  # no body follows, so no framing: a streamed length is unknown
        elif self.http10:
            self.keep_alive = False  # the end of the body is the end of the connection
        else:
            self.chunked = True
            head.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        elif self.http10:
            head.append(b"connection: keep-alive\r\n")
        head.append(b"\r\n")


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.gone = False
        self.lingering = False
        self.write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.read_paused = False
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        # What the parser is filling, and what the app is answering.
        self.parsing: _Exchange | None = None
        self.current: _Exchange | None = None
        self.pipeline: deque[_Exchange] = deque()
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._expect_continue = False
        self.task: asyncio.Task[None] | None = None
        self.deadline = 0.0  # loop time past which an idle connection is closed; 0: busy

    # -- asyncio.Protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.local = (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None
        self.deadline = self.loop.time() + self.server.header_timeout_s
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        server = self.server
        server.connections.discard(self)
        if server.stopping and not server.connections:
            server.all_closed()
        for exchange in (self.current, self.parsing, *self.pipeline):
            if exchange is not None:
                exchange.wake()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(501, "protocol upgrades are not supported here")
        except httptools.HttpParserError as error:
            # An exception in a callback comes back wrapped, the original as its context.
            if isinstance(error.__context__, _HeadersTooLarge):
                self._refuse(431, "request line and headers are too large")
            else:
                self._refuse(400, f"bad request: {error}")

    def eof_received(self) -> bool | None:
        # The end of the client's bytes is taken as the client gone (as most
        # servers do): a half-closed socket looks the same as an abandoned
        # stream, and an abandoned stream must free its worker.
        return None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = []
        self._header_bytes = 0
        self._expect_continue = False
        if self.current is None:
            # Headers of a new request: the idle timeout becomes the header deadline.
            self.deadline = self.loop.time() + self.server.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _HeadersTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _HeadersTooLarge
        name = name.lower()
        if name == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        raw_path, _, query = url.partition(b"?")
        if not raw_path.startswith(b"/"):
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        method = parser.get_method()
        scope = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": parser.get_http_version(),
            "server": self.local,
            "client": self.client,
            "scheme": "http",
            "method": METHODS.get(method) or method.decode("ascii", "replace"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
        }
        keep_alive = parser.should_keep_alive() and not self.server.stopping
        exchange = _Exchange(self, scope, keep_alive)
        exchange.expect_continue = self._expect_continue
        self.parsing = exchange
        if self.current is None:
            self._start(exchange)
        else:
            # Pipelined behind a request still being answered: hold the rest.
            self.pipeline.append(exchange)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.discard or exchange.delivered:
            return
        exchange.body.append(body)
        exchange.body_size += len(body)
        if exchange.body_size > BODY_HIGH_WATER:
            self._pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is None:
            return
        self.parsing = None
        exchange.body_complete = True
        exchange.wake()
        if exchange.response_complete and exchange is self.current:
            self._next()

    # -- running the app ---------------------------------------------------

    def _start(self, exchange: _Exchange) -> None:
        self.current = exchange
        self.deadline = 0.0
        self.task = self.loop.create_task(self._run(exchange))

    async def _run(self, exchange: _Exchange) -> None:
        try:
            await self.app(exchange.scope, exchange.receive, exchange.send)
        except Exception:
            log.exception(
                "the app failed on %s %s", exchange.scope["method"], exchange.scope["path"]
            )
            if not exchange.response_started and not self.gone:
                self.write(_simple_response(500, "Internal Server Error"))
            self._close()
            return
        if not exchange.response_complete and not self.gone:
            if not exchange.response_started:
                log.error("the app sent no response to %s", exchange.scope["path"])
                self.write(_simple_response(500, "Internal Server Error"))
            self._close()

    def response_done(self, exchange: _Exchange) -> None:
        exchange.wake()
        if not exchange.keep_alive:
            if exchange.body_complete:
                self._close()
            else:
                self._linger()  # a refused upload may still be arriving
            return
        if exchange.body_complete:
            self._next()
        else:
            # The app answered without reading the whole body (a refusal):
            # the rest is read and dropped so the connection can be reused.
            exchange.discard = True
            exchange.body = []
            self._resume_reading()

    def _next(self) -> None:
        self.current = None
        self.task = None
        if self.pipeline:
            self._start(self.pipeline.popleft())
            if not self.pipeline:
                self._resume_reading()
            return
        if self.server.stopping:
            self._close()
            return
        self.deadline = self.loop.time() + self.server.keep_alive_s
        self._resume_reading()

    # -- transport helpers -----------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.gone:
            self.transport.write(data)

    async def drained(self) -> None:
        if not self.write_paused or self.gone:
            return
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def resume_body(self) -> None:
        if self.read_paused and not self.pipeline:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.gone:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.gone:
            self.read_paused = False
            self.transport.resume_reading()

    def _refuse(self, status: int, text: str) -> None:
        if self.current is None or not self.current.response_started:
            self.write(_simple_response(status, text))
        self._linger()

    def _linger(self) -> None:
        """Half-close and drop what the client still sends for a while.

        Closing a socket with unread bytes makes the kernel answer with a
        reset, which can destroy the error answer before the client reads it.
        """
        transport = self.transport
        self.gone = True  # the app, if running, writes no more
        if transport is None or transport.is_closing():
            return
        self.lingering = True
        self._resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self.deadline = self.loop.time() + LINGER_S

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.gone = True

    def idle(self) -> bool:
        return self.current is None

    def shut(self) -> None:
        """Server stopping: close now if idle, else after the response in progress."""
        if self.current is None:
            self._close()
        else:
            self.current.keep_alive = False


class _HeadersTooLarge(Exception):
    pass


class HttpServer:
    def __init__(
        self,
        app: App,
        *,
        keep_alive_s: float = 5.0,
        header_timeout_s: float = 10.0,
        shutdown_grace_s: float = 5.0,
    ) -> None:
        self.app = app
        self.keep_alive_s = keep_alive_s
        self.header_timeout_s = header_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        self.connections: set[_Connection] = set()
        self.clock = _Clock()
        self.stopping = False
        self._stop = asyncio.Event()
        self._all_closed = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self._lifespan: _Lifespan | None = None

    async def serve(self, sock: Any, on_listening: Callable[[], None] | None = None) -> bool:
        """Serve on a bound, listening socket until ``stop()``; False if the app failed to start."""
        self._lifespan = _Lifespan(self.app)
        if not await self._lifespan.startup():
            return False
        server = await self.loop.create_server(lambda: _Connection(self), sock=sock)
        sweeper = self.loop.create_task(self._sweep())
        try:
            if on_listening is not None:
                on_listening()
            await self._stop.wait()
        finally:
            self.stopping = True
            server.close()
            for conn in list(self.connections):
                conn.shut()
            if self.connections:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._all_closed.wait(), self.shutdown_grace_s)
            for conn in list(self.connections):
                if conn.task is not None:
                    conn.task.cancel()
                if conn.transport is not None:
                    conn.transport.abort()
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await self._lifespan.shutdown()
        return True

    def stop(self) -> None:
        self._stop.set()

    def all_closed(self) -> None:
        self._all_closed.set()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            self.clock.refresh()
            now = self.loop.time()
            for conn in list(self.connections):
                if conn.deadline and conn.deadline <= now:
                    conn._close()


class _Lifespan:
    """The ASGI lifespan protocol: startup before the first request, shutdown after the last."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.started = asyncio.get_running_loop().create_future()
        self.stopped = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.failed = False

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if not self.started.done():
                self.started.set_result(message)
        elif (
            kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed")
            and not self.stopped.done()
        ):
            self.stopped.set_result(message)

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": {}}
        try:
            await self.app(scope, self.inbox.get, self._send)
        except Exception:
            self.failed = True
            log.exception("the app's lifespan failed")
        finally:
            for future in (self.started, self.stopped):
                if not future.done():
                    future.set_result({"type": "gone"})

    async def startup(self) -> bool:
        self.task = asyncio.get_running_loop().create_task(self._main())
        await self.inbox.put({"type": "lifespan.startup"})
        message = await self.started
        if message["type"] == "lifespan.startup.failed":
            log.error("the app failed to start: %s", message.get("message", ""))
            return False
        # An app that returns at once does not speak lifespan; one that raised did fail.
        return not self.failed

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.stopped), 10)
