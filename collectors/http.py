"""One HTTP client for every scrape, and failures as one-line messages.

Every source shares one ``HttpClient``, so a daemon watching twenty targets
holds one pool of kept-alive connections. The wire work is in
``collectors.http_conn``: an httpx GET of a /metrics page cost about 1.1 ms
of CPU, aiohttp's 0.6 ms, that connection's about a fifth of aiohttp's
(bench/collectors.py's component table), and at 1 Hz over several targets
the client was the largest part of the daemon's budget.

What a scraper meets and this handles: credentials in the URL (sent as
basic auth, never shown), query parameters, redirects (a few, and never
carrying the credentials to another origin), gzip or deflate bodies from
servers that compress unasked, charsets, HTTPS with the system's trust
store, IPv6 literals, servers that close kept-alive connections (the GET is
sent once more on a new one), HTTP/1.0 answers that end with the
connection, and answers too large to be a metrics page.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlencode, urljoin, urlsplit, urlunsplit

from collectors.http_conn import Answered, Broken, ScrapeConnection, Stale, TooLarge

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
# A /metrics page larger than this is a misconfiguration (per-request labels)
# that would make every scrape slow; refuse it rather than parse it.
MAX_BODY_BYTES = 16 << 20
ACCEPT = "text/plain;version=0.0.4;q=1, application/json;q=0.9, */*;q=0.1"
USER_AGENT = "quell-collector"
# Below the keep-alive of common servers (Go's and nginx's are longer, uvicorn's 5 s),
# so a GET is seldom written into a connection the server is closing.
KEEPALIVE_S = 4.0
MAX_REDIRECTS = 5
REDIRECTS = frozenset((301, 302, 303, 307, 308))
# Idle connections kept per origin: a console reading many pages at once opens more,
# and closes those past this many when they come back.
MAX_IDLE = 4
_UNSENDABLE = re.compile(r"[^\x21-\x7e]")


class FetchError(Exception):
    """The target could not be read; the message is fit to show as is."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole HTTP answer, read and decoded."""

    status_code: int
    content_type: str
    text: str

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.text)


@dataclass(frozen=True, slots=True)
class _Origin:
    tls: bool
    host: str
    port: int


class HttpClient:
    """GETs with connect and read timeouts, a body limit and plain-worded errors.

    Connections are made on first use inside the running loop, so a client
    can be built before the loop starts (as the daemon's sources are).
    """

    def __init__(
        self,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._idle: dict[_Origin, list[ScrapeConnection]] = {}
        self._busy: set[ScrapeConnection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tls: ssl.SSLContext | None = None

    async def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> Answer:
        """The whole answer to ``GET url``, any status; FetchError when none came."""
        shown = redact(url)
        try:
            parts = urlsplit(url)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
            port = parts.port
        except ValueError:
            usable = False
        if not usable:
            raise FetchError(f"invalid URL {shown}: expected http:// or https:// and a host")
        if parts.username is not None:
            # Credentials in the URL ("http://user:pass@host/metrics") become
            # the header here (an explicit ``auth`` wins), so the URL handed
            # on carries no password.
            if auth is None:
                auth = (unquote(parts.username), unquote(parts.password or ""))
            parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
        if params:
            query = urlencode(params)
            parts = parts._replace(query=f"{parts.query}&{query}" if parts.query else query)
        extra = ""
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            extra = f"Authorization: Basic {token}\r\n"
        for _ in range(MAX_REDIRECTS + 1):
            assert parts.hostname is not None
            tls = parts.scheme == "https"
            origin = _Origin(tls, parts.hostname, port or _default_port(tls))
            request = _request(origin, parts, extra, shown)
            answered = await self._exchange(origin, request, max_bytes, shown)
            location = answered.header(b"location")
            if answered.status not in REDIRECTS or location is None:
                return _decoded(answered, max_bytes, shown)
            target = urljoin(urlunsplit(parts), location.decode("latin-1"))
            try:
                moved = urlsplit(target)
                port = moved.port
            except ValueError:
                raise FetchError(f"{shown} redirected to an invalid URL") from None
            if moved.scheme not in ("http", "https") or not moved.hostname:
                raise FetchError(f"{shown} redirected to {redact(target)}, not http(s)")
            if (moved.scheme, moved.hostname, port) != (parts.scheme, parts.hostname, parts.port):
                extra = ""  # credentials are for the origin they were given for
            parts = moved._replace(fragment="")
        raise FetchError(f"{shown} redirected more than {MAX_REDIRECTS} times")

    async def _exchange(
        self, origin: _Origin, request: bytes, max_bytes: int, shown: str
    ) -> Answered:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections belong to the loop that made them (tests run a loop each).
            self._drop_all()
            self._loop = loop
        while True:
            conn = self._reuse(origin, loop.time()) or await self._connect(origin, loop, shown)
            self._busy.add(conn)
            try:
                answered = await conn.get(request, self.read_timeout_s, max_bytes)
            except Stale:
                continue  # a GET may be sent again: on the next idle connection, or a new one
            except TimeoutError:
                raise FetchError(f"{shown} did not answer in time") from None
            except TooLarge:
                raise FetchError(f"{shown} answered more than {max_bytes >> 20} MiB") from None
            except Broken as problem:
                raise FetchError(f"cannot read {shown}: {problem}") from None
            finally:
                self._busy.discard(conn)
            if not conn.closed:
                self._put_back(origin, conn)
            return answered

    def _reuse(self, origin: _Origin, now: float) -> ScrapeConnection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                conn.reused = True
                return conn
            conn.close()
        return None

    def _put_back(self, origin: _Origin, conn: ScrapeConnection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= MAX_IDLE:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        idle.append(conn)

    async def _connect(
        self, origin: _Origin, loop: asyncio.AbstractEventLoop, shown: str
    ) -> ScrapeConnection:
        tls: ssl.SSLContext | None = None
        if origin.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: ScrapeConnection(loop),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise FetchError(f"cannot connect to {shown}: no answer in time") from None
        except ssl.SSLCertVerificationError as problem:
            said = (
                f"cannot connect to {shown}: TLS certificate not trusted ({problem.verify_message})"
            )
            if problem.verify_code in _UNKNOWN_ISSUER:
                # Verification is never switched off; an internal CA is named the
                # way OpenSSL's other clients take it.
                said += "; if an internal CA signed it, set SSL_CERT_FILE to that CA's bundle"
            raise FetchError(said) from None
        except ssl.SSLError as problem:
            code = getattr(problem, "reason", None)
            if code == "WRONG_VERSION_NUMBER":
                reason = "the server does not speak TLS on this port (http:// instead?)"
            elif isinstance(code, str) and code:
                reason = code.replace("_", " ").lower()
            else:
                reason = _reason(problem)
            raise FetchError(f"cannot connect to {shown}: TLS: {reason}") from None
        except OSError as problem:
            raise FetchError(f"cannot connect to {shown}: {_os_reason(problem)}") from None
        return conn

    def _drop_all(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in self._busy:
            conn.close()
        self._busy.clear()

    async def aclose(self) -> None:
        self._drop_all()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        problem: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def _default_port(tls: bool) -> int:
    return 443 if tls else 80


def _request(origin: _Origin, parts: Any, extra: str, shown: str) -> bytes:
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    if origin.port != _default_port(origin.tls):
        host = f"{host}:{origin.port}"
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    if _UNSENDABLE.search(target) or _UNSENDABLE.search(host):
        # The request line goes out as it is: a space, a control character or a
        # non-ASCII letter would make another request of it, or a broken one.
        raise FetchError(f"invalid URL {shown}: percent-encode its path and query")
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: {ACCEPT}\r\n"
        f"User-Agent: {USER_AGENT}\r\n{extra}\r\n"
    ).encode("ascii")


def _decoded(answered: Answered, max_bytes: int, shown: str) -> Answer:
    body = answered.body
    coding = (answered.header(b"content-encoding") or b"").strip().lower()
    if coding in (b"gzip", b"x-gzip", b"deflate"):
        # Nothing asks for compression, but some exporters compress regardless.
        wbits = 47 if coding != b"deflate" else 15  # 32+15: gzip or zlib header
        inflater = zlib.decompressobj(wbits)
        try:
            body = inflater.decompress(body, max_bytes + 1)
        except zlib.error as problem:
            raise FetchError(
                f"cannot read {shown}: a corrupt {coding.decode()} body ({problem})"
            ) from None
        if len(body) > max_bytes:
            raise FetchError(f"{shown} answered more than {max_bytes >> 20} MiB")
    content_type = answered.header(b"content-type")
    kind = content_type.decode("latin-1") if content_type is not None else ""
    charset = "utf-8"
    for parameter in kind.split(";")[1:]:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    try:
        text = body.decode(charset, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    return Answer(answered.status, kind, text)


def make_client(
    connect_timeout_s: float = CONNECT_TIMEOUT_S, read_timeout_s: float = READ_TIMEOUT_S
) -> HttpClient:
    return HttpClient(connect_timeout_s, read_timeout_s)


def redact(url: str) -> str:
    """The URL without its password, for messages and labels."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparseable URL)"
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    if ":" not in userinfo:
        if not parts.scheme.startswith("redis"):
            return url  # a user name alone is no secret
        userinfo = ":" + userinfo  # ...but redis://secret@host is a password
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else host))


# X509_V_ERR_* codes of a chain that ends at a CA this host does not know:
# unable to get issuer certificate (2), self-signed leaf (18), self-signed CA
# in the chain (19), unable to get local issuer certificate (20).
_UNKNOWN_ISSUER = frozenset({2, 18, 19, 20})


def _reason(problem: BaseException) -> str:
    text = str(problem).strip()
    # "[Errno 111] Connection refused" -> "connection refused"
    if text.startswith("[Errno") and "]" in text:
        text = text.split("]", 1)[1].strip()
    if not text:
        text = type(problem).__name__
    return text[:1].lower() + text[1:]


def _os_reason(problem: OSError) -> str:
    """ "connection refused", not "[Errno 111] Connect call failed ('127.0.0.1', 1)".

    Name lookup failures (negative errno) read "name or service not known".
    """
    if isinstance(problem.errno, int) and problem.errno > 0:
        return os.strerror(problem.errno).lower()
    return _reason(problem)


async def fetch(
    client: HttpClient,
    url: str,
    auth: tuple[str, str] | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> tuple[str, str]:
    """Body text and content type of ``GET url``; FetchError on any failure."""
    answer = await client.get(url, auth=auth, max_bytes=max_bytes)
    if answer.status_code != 200:
        hint = " (check the user and password)" if answer.status_code in (401, 403) else ""
        raise FetchError(f"HTTP {answer.status_code} from {redact(url)}{hint}")
    return answer.text, answer.content_type
