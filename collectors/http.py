"""One HTTP client for every scrape, and failures as one-line messages.

Scrapes go through the project's own keep-alive client
(``inference.http_client``, asyncio.Protocol on httptools): an httpx GET of
a /metrics page cost about 1.1 ms of CPU, aiohttp's 0.3-0.6 ms, and at 1 Hz
over several targets those differences were a quarter of the daemon's whole
budget (bench/collectors.py's component table). Every source shares one
``HttpClient``, which keeps one pool of connections per origin.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

from inference.http_client import ConnectFailed, OriginClient, OriginError

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
# Below the 5 s that most servers keep an idle connection, so a scrape is
# rarely written into one the server is closing (and is retried once if so).
KEEPALIVE_S = 4.0
# A /metrics page larger than this is a misconfiguration (per-request labels)
# that would make every scrape slow; refuse it rather than parse it.
MAX_BODY_BYTES = 16 << 20
ACCEPT = "text/plain;version=0.0.4;q=1, application/json;q=0.9, */*;q=0.1"
FIXED_HEADERS = {"Accept": ACCEPT, "User-Agent": "quell-collector"}
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_CHARSET = re.compile(r"charset\s*=\s*\"?([\w.:-]+)", re.IGNORECASE)
# Characters a request path may carry as they are; the rest is %-encoded.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


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


class HttpClient:
    """GETs with connect and read timeouts, a body limit and plain-worded errors.

    An origin's connection pool is made on first use, inside the running
    loop, so a client can be built before the loop starts (as the daemon's
    sources are).
    """

    def __init__(
        self,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._origins: dict[tuple[str, str, int | None], OriginClient] = {}

    def _origin(self, parts: Any) -> OriginClient:
        key = (parts.scheme, parts.hostname, parts.port)
        client = self._origins.get(key)
        if client is None:
            origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
            client = self._origins[key] = OriginClient(
                origin, self.connect_timeout_s, self.read_timeout_s, KEEPALIVE_S, FIXED_HEADERS
            )
        return client

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
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError as problem:
            raise FetchError(f"invalid URL {shown}: {_reason(problem)}") from None
        if not usable:
            raise FetchError(f"invalid URL {shown}: expected http:// or https:// and a host")
        if parts.username is not None:
            # Credentials in the URL ("http://user:pass@host/metrics") become
            # the header here (an explicit ``auth`` wins), so the URL handed
            # on carries no password.
            if auth is None:
                auth = (unquote(parts.username), unquote(parts.password or ""))
            parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
        extra = b""
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            extra = f"Authorization: Basic {token}\r\n".encode()
        query = parts.query
        if params:
            query = f"{query}&{urlencode(params)}" if query else urlencode(params)
        target = quote(parts.path or "/", safe=_PATH_SAFE) + (f"?{query}" if query else "")
        try:
            for _ in range(MAX_REDIRECTS + 1):
                status, content_type, body = await self._fetch(parts, target, extra, max_bytes)
                if status not in REDIRECTS or not body[1]:
                    break
                # Followed as a GET, like every client does for a scrape.
                moved = urlsplit(urljoin(urlunsplit(parts._replace(query="")), body[1]))
                if moved.scheme not in ("http", "https") or not moved.hostname:
                    break
                if (moved.hostname, moved.port) != (parts.hostname, parts.port):
                    extra = b""  # credentials are for the host they were given for
                parts = moved
                target = quote(moved.path or "/", safe=_PATH_SAFE) + (
                    f"?{moved.query}" if moved.query else ""
                )
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(f"{shown} did not answer in time") from None
        except ConnectFailed as problem:
            raise FetchError(f"cannot connect to {shown}: {_reason(problem)}") from None
        except (OriginError, OSError, ValueError) as problem:
            raise FetchError(f"cannot read {shown}: {_reason(problem)}") from None
        data = body[0]
        charset = _CHARSET.search(content_type)
        encoding = charset.group(1) if charset else "utf-8"
        try:
            text = data.decode(encoding, errors="replace")
        except LookupError:
            text = data.decode("utf-8", errors="replace")
        return Answer(status, content_type, text)

    async def _fetch(
        self, parts: Any, target: str, extra: bytes, max_bytes: int
    ) -> tuple[int, str, tuple[bytes, str]]:
        """(status, content type, (body, redirect location))."""
        client = self._origin(parts)
        shown = redact(urlunsplit(parts))
        try:
            response = await client.request("GET", target, headers=extra)
        except (ConnectFailed, TimeoutError):
            raise
        except OriginError:
            # A kept-alive connection the server closed as the request went
            # out; a GET is safe to send once more on a fresh one.
            response = await client.request("GET", target, headers=extra)
        try:
            declared = response.header(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"{shown} answered more than {max_bytes >> 20} MiB")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.chunks():
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"{shown} answered more than {max_bytes >> 20} MiB")
                chunks.append(chunk)
        finally:
            response.release()
        data = b"".join(chunks)
        coding = (response.header(b"content-encoding") or b"").strip().lower()
        if coding in (b"gzip", b"x-gzip", b"deflate"):
            # Not asked for, but some servers compress regardless.
            try:
                data = zlib.decompressobj(47 if coding != b"deflate" else 15).decompress(
                    data, max_bytes + 1
                )
            except zlib.error as problem:
                raise FetchError(
                    f"{shown} sent a {coding.decode()} body that will not inflate: {problem}"
                ) from None
            if len(data) > max_bytes:
                raise FetchError(f"{shown} answered more than {max_bytes >> 20} MiB")
        content_type = (response.header(b"content-type") or b"").decode("latin-1")
        location = (response.header(b"location") or b"").decode("latin-1")
        return response.status, content_type, (data, location)

    async def aclose(self) -> None:
        origins, self._origins = list(self._origins.values()), {}
        for client in origins:
            await client.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        problem: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


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


def _reason(problem: BaseException) -> str:
    text = str(problem).strip()
    # "[Errno 111] Connection refused" -> "connection refused"
    if text.startswith("[Errno") and "]" in text:
        text = text.split("]", 1)[1].strip()
    if not text:
        text = type(problem).__name__
    return text[:1].lower() + text[1:]


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
