"""The gateway's upstream client against a raw loopback server that misbehaves on cue.

The server is a plain ``asyncio.start_server`` handler writing bytes by hand,
so answers can be cut short, go silent, or close the connection exactly
where a broken upstream would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from inference.http_client import (
    ConnectFailed,
    OriginBroken,
    OriginClient,
)


class RawUpstream:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client.set()
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                path = head.split(b" ")[1].split(b"?")[0]
                served += 1
                if path == b"/flaky" and served > 1:
                    return  # a kept connection dropped just as a request came in
                if not await self.answer(path, body, reader, writer):
                    return
        finally:
            writer.close()

    async def answer(
        self, path: bytes, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Write the answer for ``path``; False to end the connection."""
        if path.endswith((b"/ok", b"/flaky")):
            text = b'{"echo": %d}' % len(body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
        elif path == b"/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"data: 1\n\n", b"data: 2\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
        elif path == b"/endless":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                for _ in range(200):
                    writer.write(b"6\r\ntoken \r\n")
                    await writer.drain()
                    await asyncio.sleep(0.02)
            except ConnectionError:
                self.closed_by_client.set()  # what tells an engine to stop generating
            return False
        elif path == b"/cut":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
            await writer.drain()
            return False
        elif path == b"/silent":
            await asyncio.sleep(5)
            return False
        elif path == b"/close":
            writer.write(b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nConnection: close\r\n")
            writer.write(b"Content-Length: 2\r\n\r\n{}")
            await writer.drain()
            return False
        elif path == b"/http10":
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end")
            await writer.drain()
            return False
        elif path == b"/garbage":
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            return False
        await writer.drain()
        return True


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[tuple[RawUpstream, str]]:
    raw = RawUpstream()
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield raw, f"http://127.0.0.1:{port}"
    finally:
        server.close()


@contextlib.asynccontextmanager
async def client(url: str, read_timeout_s: float = 2.0) -> AsyncIterator[OriginClient]:
    c = OriginClient(url, 1.0, read_timeout_s, keepalive_s=0.3, headers={"X-Key": "k"})
    try:
        yield c
    finally:
        await c.close()


async def test_keep_alive_reuses_one_connection_and_sends_the_body() -> None:
    async with upstream() as (raw, url), client(url) as c:
        for body in (b"{}", b'{"a": 1}', b""):
            response = await c.request("POST", "/ok", body)
            assert response.status == 200
            assert await response.read() == b'{"echo": %d}' % len(body)
        assert raw.connections == 1
        first = raw.requests[0]
        assert first.startswith(b"POST /ok HTTP/1.1\r\n")
        assert b"Host: 127.0.0.1:" in first and b"X-Key: k" in first


async def test_a_base_path_in_the_url_prefixes_every_request() -> None:
    async with upstream() as (raw, url), client(url + "/base/") as c:
        response = await c.request("GET", "/ok")
        await response.read()
        assert raw.requests[0].startswith(b"GET /base/ok HTTP/1.1")


async def test_a_chunked_answer_arrives_in_pieces() -> None:
    async with upstream() as (_, url), client(url) as c:
        response = await c.request("POST", "/chunked", b"{}")
        pieces = [piece async for piece in response.chunks()]
        response.release()
        assert b"".join(pieces) == b"data: 1\n\ndata: 2\n\n"
        assert len(pieces) == 2  # relayed as they came, not at the end


async def test_an_abandoned_stream_closes_its_connection() -> None:
    async with upstream() as (raw, url), client(url) as c:
        response = await c.request("POST", "/endless", b"{}")
        async for _ in response.chunks():
            break
        response.release()
        await asyncio.wait_for(raw.closed_by_client.wait(), 5)
        # The next request gets a fresh connection.
        response = await c.request("GET", "/ok")
        await response.read()
        assert raw.connections == 2


async def test_connection_close_is_honoured_and_headers_are_readable() -> None:
    async with upstream() as (raw, url), client(url) as c:
        response = await c.request("GET", "/close")
        assert response.status == 429 and response.header(b"retry-after") == b"3"
        assert await response.read() == b"{}"
        response = await c.request("GET", "/ok")
        await response.read()
        assert raw.connections == 2


async def test_an_answer_cut_short_is_broken_not_truncated() -> None:
    async with upstream() as (_, url), client(url) as c:
        response = await c.request("GET", "/cut")
        with pytest.raises(OriginBroken, match="closed the connection"):
            await response.read()


async def test_garbage_is_broken() -> None:
    async with upstream() as (_, url), client(url) as c:
        with pytest.raises(OriginBroken):
            await c.request("GET", "/garbage")


async def test_silence_past_the_read_timeout_is_a_timeout() -> None:
    async with upstream() as (_, url), client(url, read_timeout_s=0.3) as c:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError, match=r"nothing from the upstream for 0.3 s"):
            await c.request("GET", "/silent")
        assert asyncio.get_running_loop().time() - started < 2.0


async def test_nobody_listening_is_connect_failed() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # a port that was free a moment ago: refused
    async with client(f"http://127.0.0.1:{port}") as c:
        with pytest.raises(ConnectFailed):
            await c.request("GET", "/ok")


async def test_an_idle_connection_past_the_keep_alive_is_closed_not_reused() -> None:
    async with upstream() as (raw, url), client(url) as c:
        response = await c.request("GET", "/ok")
        await response.read()
        await asyncio.sleep(0.6)  # past keepalive_s = 0.3
        response = await c.request("GET", "/ok")
        assert await response.read() == b'{"echo": 0}'
        assert raw.connections == 2
        await asyncio.wait_for(raw.closed_by_client.wait(), 5)


async def test_an_idle_origin_costs_no_wakeups() -> None:
    async with upstream() as (_, url), client(url) as c:
        response = await c.request("GET", "/ok")
        await response.read()
        await asyncio.sleep(0.3)
        assert c._sweeper is None, "the sweeper still runs with nothing out"


def test_only_http_urls() -> None:
    async def make() -> None:
        OriginClient("ftp://example.com", 1, 1, 1)

    with pytest.raises(ValueError, match="not an http"):
        asyncio.run(make())


async def test_a_removed_upstream_closes_its_connections_after_its_last_request() -> None:
    from inference.gateway.config import UpstreamConfig, UpstreamSettings
    from inference.gateway.upstreams import UpstreamPool

    async with upstream() as (raw, url):
        settings = UpstreamSettings(health_interval_s=60.0)
        pool = UpstreamPool([UpstreamConfig("e0", url, settings)], settings)
        await pool.start()
        try:
            e0 = pool.by_name["e0"]

            def open_client() -> OriginClient | None:
                return e0.client

            c = open_client()
            assert c is not None
            response = await c.request("GET", "/ok")
            await response.read()
            e0.in_flight = 1  # a request still being answered
            pool.remove("e0")
            await asyncio.sleep(0.7)
            assert open_client() is not None, "closed under a request in flight"
            e0.in_flight = 0
            for _ in range(40):
                if open_client() is None:
                    break
                await asyncio.sleep(0.05)
            assert open_client() is None
            await asyncio.wait_for(raw.closed_by_client.wait(), 5)
        finally:
            await pool.stop()


async def test_a_body_without_length_ends_at_the_close() -> None:
    async with upstream() as (_, url), client(url) as c:
        response = await c.request("GET", "/http10")
        assert response.status == 200 and await response.read() == b"to the end"
