"""The HTTP/1.1 server under the gateway and the engine, spoken to over real sockets.

Raw bytes on a loopback connection rather than a client library: framing
(content-length, chunked, close-delimited), pipelining and timeouts are what
is under test, and a client library would hide them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from inference.http_server import HttpServer

Scope = dict[str, Any]


async def echo_app(scope: Scope, receive: Any, send: Any) -> None:
    """Answers with what it was asked; paths pick odd behaviours."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/fail":
        raise RuntimeError("the app broke")
    if path == "/early":
        # Refuses without reading the body, as the gateway does for a full queue.
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"full"})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/slow":
        await asyncio.sleep(0.5)
    if path == "/wait-disconnect":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"tick", "more_body": True})
        first = await receive()  # the (empty) request body
        assert first["type"] == "http.request" and not first["more_body"]
        message = await receive()
        DISCONNECTS.append(message["type"])
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    text = f"{scope['method']} {path} q={scope['query_string'].decode()} len={len(body)}"
    answer = text.encode() + (b" " + body[:16] if body else b"")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"x-seen", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": answer})


DISCONNECTS: list[str] = []


@contextlib.asynccontextmanager
async def running(app: Any = echo_app, **options: Any) -> AsyncIterator[tuple[HttpServer, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    server = HttpServer(app, **options)
    listening = asyncio.Event()
    task = asyncio.create_task(server.serve(sock, on_listening=listening.set))
    await asyncio.wait_for(listening.wait(), 5)
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)
        sock.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.read(), 5)
    return status, headers, body


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        for i in range(3):
            writer.write(f"GET /a%20b?n={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, headers, body = await read_response(reader)
            assert status == 200
            assert body == f"GET /a b q=n={i} len=0".encode()
            assert headers["content-length"] == str(len(body))
            assert "date" in headers and "connection" not in headers
        writer.close()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answers = [await read_response(reader) for _ in range(3)]
        assert [a[2] for a in answers] == [
            b"GET /slow q= len=0",
            b"POST /b q= len=5 hello",
            b"GET /c q= len=0",
        ]
        writer.close()


async def test_a_streamed_answer_is_chunked_and_http10_gets_it_close_delimited() -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200
        assert headers["transfer-encoding"] == "chunked" and body == b"one two three"
        writer.close()

        reader, writer = await connect(port)
        writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
        _, headers, body = await read_response(reader)
        assert "transfer-encoding" not in headers and headers["connection"] == "close"
        assert body == b"one two three"
        writer.close()


async def test_head_gets_the_headers_without_the_body() -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"content-length: 16" in head  # what GET would have sent: "HEAD /h q= len=0"
        # The next bytes are the second answer, not a body for the first.
        status, _, body = await read_response(reader)
        assert status == 200 and body == b"GET /after q= len=0"
        writer.close()


async def test_head_of_a_streamed_answer_has_no_body_and_no_chunk_framing() -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(
            b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head
        status, _, body = await read_response(reader)
        assert status == 200 and body == b"GET /after q= len=0"
        writer.close()


async def test_a_large_body_arrives_whole_through_paused_reads() -> None:
    size = 3 << 20  # past the high-water mark several times over
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(f"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        writer.write(b"x" * size)
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["x-seen"] == str(size)
        writer.close()


async def test_a_chunked_upload_and_expect_100_continue() -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 200 and body == b"POST /up q= len=11 hello world"
        writer.close()


async def test_an_answer_before_the_body_leaves_the_connection_usable() -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 503 and body == b"full"
        # The refused body arrives late; it is dropped, not read as a request.
        writer.write(b"0123456789GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 200 and body == b"GET /next q= len=0"
        writer.close()


async def test_bad_requests_get_400_and_oversized_headers_431() -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(b"THIS IS NOT HTTP\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert status == 400 and headers["connection"] == "close"
        assert await reader.read() == b""

        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(80):
                writer.write(b"X-Filler: " + b"f" * 16384 + b"\r\n")
                await writer.drain()
        status, _, body = await read_response(reader)
        assert status == 431 and b"too large" in body


async def test_an_app_error_is_a_500_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status == 500
        assert "the app broke" in caplog.text
        reader, writer = await connect(port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        writer.close()


async def test_idle_and_dribbling_connections_are_closed() -> None:
    async with running(keep_alive_s=0.5, header_timeout_s=1.0) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_response(reader)
        # Idle past the keep-alive: the server hangs up (within its one-second sweep).
        assert await asyncio.wait_for(reader.read(), 5) == b""

        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\n")
        closed = False
        for _ in range(40):  # a header every 0.1 s never completes the request
            try:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if reader.at_eof():
                closed = True
                break
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    closed = True
                    break
        assert closed, "a client dribbling headers for 4 s was not cut off"


async def test_receive_says_disconnect_when_the_client_goes() -> None:
    DISCONNECTS.clear()
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /wait-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"tick"), 5)
        writer.close()
        for _ in range(50):
            if DISCONNECTS:
                break
            await asyncio.sleep(0.05)
        assert DISCONNECTS == ["http.disconnect"]


async def test_stopping_lets_a_request_in_flight_finish() -> None:
    async with running() as (server, port):
        reader, writer = await connect(port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.1)
        server.stop()
        status, headers, body = await read_response(reader)
        assert status == 200 and body == b"GET /slow q= len=0"
        assert headers["connection"] == "close"
