"""The scrape client against a loopback server that plays scripted answers.

Each path of the server is a script: bytes to write, pauses, a close. So a
test can put a kept-alive connection's close, a silence, a cut-off body or
an HTTP/1.0 answer exactly where real exporters and proxies put them.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from collectors.http import FetchError, HttpClient
from tests.conftest import require_program

Step = bytes | float | None  # bytes to write, seconds to wait, None: close
Script = Callable[[int], list[Step]]  # from how many requests came on the connection before


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


PAGE = b"# TYPE quell_depth gauge\nquell_depth 3\n"


class Scripted:
    """A loopback HTTP server answering each path with its script."""

    def __init__(self, scripts: dict[str, Script], tls: ssl.SSLContext | None = None) -> None:
        self.scripts = scripts
        self.tls = tls
        self.connections = 0
        self.heads: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        before = 0
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(head)
                target = head.split(" ", 2)[1]
                path = target.split("?", 1)[0]
                steps, before = self.scripts[path](before), before + 1
                for step in steps:
                    if step is None:
                        return
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    else:
                        writer.write(step)
                        await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with HttpClient(connect_timeout_s=1.0, read_timeout_s=0.5) as made:
        yield made


async def test_pages_come_over_one_kept_connection(client: HttpClient) -> None:
    async with Scripted({"/metrics": lambda _: [answer(PAGE, "Content-Type: text/plain")]}) as s:
        for _ in range(5):
            got = await client.get(f"{s.url}/metrics")
            assert (got.status_code, got.text, got.content_type) == (200, PAGE.decode(),
                                                                      "text/plain")  # fmt: skip
        assert s.connections == 1
        head = s.heads[0]
        assert head.startswith("GET /metrics HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{s.port}\r\n" in head and "User-Agent: quell-collector" in head


async def test_a_kept_connection_the_server_closed_is_replaced_without_an_error(
    client: HttpClient,
) -> None:
    # /idle: the server closes after each answer, as one whose keep-alive is shorter
    # than the scrape interval does between scrapes. /racy: it closes just as the next
    # request arrives, the race no keep-alive setting avoids: a GET may be sent again.
    scripts: dict[str, Script] = {
        "/idle": lambda _: [answer(PAGE), 0.05, None],
        "/racy": lambda before: [None] if before else [answer(PAGE)],
    }
    async with Scripted(scripts) as s:
        for path in ("/idle", "/idle", "/racy", "/racy", "/racy"):
            assert (await client.get(f"{s.url}{path}")).text == PAGE.decode()
            await asyncio.sleep(0.1)
        assert s.connections == 5


async def test_bytes_after_the_answer_retire_the_connection(client: HttpClient) -> None:
    # A server that answered twice (a proxy's bug) must not have its second answer read
    # as the answer to the next scrape.
    stray = answer(b"stale page")
    async with Scripted({"/twice": lambda _: [answer(PAGE) + stray]}) as s:
        assert (await client.get(f"{s.url}/twice")).text == PAGE.decode()
        await asyncio.sleep(0.05)
        assert (await client.get(f"{s.url}/twice")).text == PAGE.decode()
        assert s.connections == 2


async def test_http_1_0_bodies_end_with_the_connection(client: HttpClient) -> None:
    script: Script = lambda _: [b"HTTP/1.0 200 OK\r\n\r\n", PAGE[:10], 0.05, PAGE[10:], None]  # noqa: E731
    async with Scripted({"/old": script}) as s:
        assert (await client.get(f"{s.url}/old")).text == PAGE.decode()
        assert (await client.get(f"{s.url}/old")).text == PAGE.decode()
        assert s.connections == 2


async def test_chunked_bodies_are_joined(client: HttpClient) -> None:
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for line in PAGE.splitlines(keepends=True):
        parts += [b"%x\r\n%s\r\n" % (len(line), line), 0.01]
    async with Scripted({"/c": lambda _: [*parts, b"0\r\n\r\n"]}) as s:
        assert (await client.get(f"{s.url}/c")).text == PAGE.decode()
        assert (await client.get(f"{s.url}/c")).text == PAGE.decode()
        assert s.connections == 1


async def test_silence_times_out_but_a_slow_steady_page_does_not(client: HttpClient) -> None:
    drip: list[Step] = [b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n"]
    for byte in b"abcdefgh":
        drip += [0.2, bytes([byte])]  # 1.6 s in all, never 0.5 s without a byte
    async with Scripted({"/silent": lambda _: [3.0], "/drip": lambda _: drip}) as s:
        started = time.monotonic()
        with pytest.raises(FetchError, match="did not answer in time"):
            await client.get(f"{s.url}/silent")
        assert time.monotonic() - started < 2.0
        assert (await client.get(f"{s.url}/drip")).text == "abcdefgh"


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (lambda _: [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", None],
         "closed the connection mid-answer"),
        (lambda _: [b"SMTP ready\r\n\r\n"], "a malformed answer"),
        (lambda _: [b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"], "more than 1 MiB"),
        (lambda _: [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                    *[b"10000\r\n" + b"x" * 65536 + b"\r\n"] * 20], "more than 1 MiB"),
        (lambda _: [answer(b"not gzip", "Content-Encoding: gzip")], "a corrupt gzip body"),
        (lambda _: [answer(b"", "Location: /loop", status="302 Found")],
         "redirected more than 5 times"),
    ],
)  # fmt: skip
async def test_broken_answers_are_one_line_errors(
    client: HttpClient, script: Script, message: str
) -> None:
    async with Scripted({"/loop": script}) as s:
        with pytest.raises(FetchError, match=message) as caught:
            await client.get(f"{s.url}/loop", max_bytes=1 << 20)
        assert "\n" not in str(caught.value) and s.url in str(caught.value)


async def test_no_server_and_bad_urls_are_named(client: HttpClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = f"cannot connect to http://127.0.0.1:{port}/m: connection refused"
    with pytest.raises(FetchError, match=refused):
        await client.get(f"http://127.0.0.1:{port}/m")
    with pytest.raises(FetchError, match="invalid URL"):
        await client.get("ftp://127.0.0.1/m")
    with pytest.raises(FetchError, match="percent-encode"):
        await client.get(f"http://127.0.0.1:{port}/a b")


async def test_query_auth_charset_and_compression(client: HttpClient) -> None:
    scripts: dict[str, Script] = {
        "/api": lambda _: [answer("café".encode("latin-1"),
                                  "Content-Type: text/plain; charset=ISO-8859-1")],
        "/gz": lambda _: [answer(gzip.compress(PAGE), "Content-Encoding: gzip")],
    }  # fmt: skip
    async with Scripted(scripts) as s:
        url = f"http://ops:s3cret@127.0.0.1:{s.port}/api?columns=name"
        got = await client.get(url, params={"vhost": "/"})
        assert got.text == "café"
        head = s.heads[-1]
        assert head.startswith("GET /api?columns=name&vhost=%2F HTTP/1.1\r\n")
        assert "Authorization: Basic b3BzOnMzY3JldA==\r\n" in head
        assert "s3cret" not in head.split("Authorization")[0]
        assert (await client.get(f"{s.url}/gz")).text == PAGE.decode()


async def test_redirects_are_followed_and_credentials_stay_with_their_origin(
    client: HttpClient,
) -> None:
    async with Scripted({"/metrics": lambda _: [answer(PAGE)]}) as other:
        scripts: dict[str, Script] = {
            "/metrics": lambda _: [answer(b"", "Location: /metrics/", status="301 Moved")],
            "/metrics/": lambda _: [answer(b"", f"Location: {other.url}/metrics",
                                           status="307 Temporary Redirect")],
        }  # fmt: skip
        async with Scripted(scripts) as first:
            got = await client.get(f"http://u:p@127.0.0.1:{first.port}/metrics")
            assert got.text == PAGE.decode()
            assert [h.split(" ")[1] for h in first.heads] == ["/metrics", "/metrics/"]
            assert all("Authorization" in h for h in first.heads)
            assert "Authorization" not in other.heads[0]


async def test_a_cancelled_scrape_leaves_no_half_read_connection_behind(
    client: HttpClient,
) -> None:
    scripts: dict[str, Script] = {"/slow": lambda _: [0.3, answer(PAGE)],
                                  "/fast": lambda _: [answer(PAGE)]}  # fmt: skip
    async with Scripted(scripts) as s:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.get(f"{s.url}/slow"), 0.1)
        # The late answer to /slow must not be read as the answer to /fast.
        await asyncio.sleep(0.4)
        assert (await client.get(f"{s.url}/fast")).text == PAGE.decode()
        assert s.connections == 2


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and a server certificate it signed for 127.0.0.1 and localhost."""
    openssl = require_program("openssl", "openssl")
    where = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (where / "leaf.ext").write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "authorityKeyIdentifier = keyid\n"
    )
    for command in (
        [openssl, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=quell test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext"],
    ):  # fmt: skip
        subprocess.run(command, cwd=where, check=True, capture_output=True, timeout=30)
    return where


def server_tls(certificates: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates / "leaf.pem", certificates / "leaf.key")
    return context


async def test_https_targets_signed_by_a_ca_named_in_ssl_cert_file_are_scraped(
    certificates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exporters behind an internal CA: OpenSSL's own SSL_CERT_FILE names the
    # bundle, as for curl; verification is never turned off.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates / "ca.pem"))
    page = {"/metrics": lambda _: [answer(PAGE, "Content-Type: text/plain")]}
    async with Scripted(page, server_tls(certificates)) as s:
        async with HttpClient(connect_timeout_s=2.0, read_timeout_s=2.0) as client:
            for host in ("127.0.0.1", "localhost", "localhost"):
                got = await client.get(f"https://{host}:{s.port}/metrics")
                assert (got.status_code, got.text) == (200, PAGE.decode())
        assert s.connections == 2, "one kept TLS connection per origin"
        assert s.heads[0].startswith("GET /metrics HTTP/1.1\r\n")


async def test_an_https_target_with_an_unknown_ca_is_refused_saying_what_to_do(
    certificates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates / "leaf.ext"))  # no certificate at all
    page = {"/metrics": lambda _: [answer(PAGE)]}
    async with (
        Scripted(page, server_tls(certificates)) as s,
        HttpClient(connect_timeout_s=2.0, read_timeout_s=2.0) as client,
    ):
        with pytest.raises(FetchError) as caught:
            await client.get(f"{s.url}/metrics")
    assert str(caught.value) == (
        f"cannot connect to {s.url}/metrics: TLS certificate not trusted (unable to get local "
        "issuer certificate); if an internal CA signed it, set SSL_CERT_FILE to that CA's bundle"
    )
    assert s.heads == [], "nothing was sent over an unverified connection"


async def test_a_certificate_for_another_name_is_refused_without_the_ca_hint(
    certificates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates / "ca.pem"))
    tls = server_tls(certificates)
    # Linux answers on all of 127.0.0.0/8; the certificate names 127.0.0.1 only.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.2", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HttpClient(connect_timeout_s=2.0, read_timeout_s=2.0) as client:
            with pytest.raises(FetchError) as caught:
                await client.get(f"https://127.0.0.2:{port}/metrics")
    finally:
        server.close()
    said = str(caught.value)
    assert said.startswith(f"cannot connect to https://127.0.0.2:{port}/metrics: TLS certificate "
                           "not trusted (IP address mismatch"), said  # fmt: skip
    assert "SSL_CERT_FILE" not in said


async def test_a_plain_http_server_on_an_https_url_is_a_one_line_tls_error(
    client: HttpClient,
) -> None:
    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # What nginx answers to a TLS hello on a plain port.
        await reader.read(65536)  # the whole hello, so the close is no reset
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(FetchError) as caught:
            await client.get(f"https://127.0.0.1:{port}/metrics")
    finally:
        server.close()
    assert str(caught.value) == (
        f"cannot connect to https://127.0.0.1:{port}/metrics: "
        "TLS: the server does not speak TLS on this port (http:// instead?)"
    )
