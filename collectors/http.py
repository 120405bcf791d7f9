"""One HTTP client for every scrape, and failures as one-line messages.

Scrapes go through aiohttp: an httpx GET of a /metrics page cost about
1.1 ms of CPU against 0.3 ms for aiohttp's (bench/collectors.py's component
table), and at 1 Hz over several targets that difference alone was a
quarter of the daemon's whole budget. Every source shares one ``HttpClient``
so a daemon watching twenty targets holds one connection pool.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
# A /metrics page larger than this is a misconfiguration (per-request labels)
# that would make every scrape slow; refuse it rather than parse it.
MAX_BODY_BYTES = 16 << 20
ACCEPT = "text/plain;version=0.0.4;q=1, application/json;q=0.9, */*;q=0.1"
CHUNK_BYTES = 1 << 16


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

    The aiohttp session is made on first use, inside the running loop, so a
    client can be built before the loop starts (as the daemon's sources are).
    """

    def __init__(
        self,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"Accept": ACCEPT, "User-Agent": "quell-collector"},
                # Scrape targets are named explicitly; proxies from the
                # environment would route loopback targets through a
                # corporate proxy.
                trust_env=False,
            )
        return self._session

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
        except ValueError:
            usable = False
        if not usable:
            raise FetchError(f"invalid URL {shown}: expected http:// or https:// and a host")
        headers = {}
        if parts.username is not None:
            # Credentials in the URL ("http://user:pass@host/metrics") become
            # the header here (an explicit ``auth`` wins), so the URL handed
            # on carries no password.
            if auth is None:
                auth = (unquote(parts.username), unquote(parts.password or ""))
            url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        try:
            session = self._open()
            async with session.get(url, params=params, headers=headers) as response:
                declared = response.content_length
                if declared is not None and declared > max_bytes:
                    raise FetchError(f"{shown} answered more than {max_bytes >> 20} MiB")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError(f"{shown} answered more than {max_bytes >> 20} MiB")
                    chunks.append(chunk)
                status = response.status
                content_type = response.headers.get("Content-Type", "")
                encoding = response.charset or "utf-8"
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(f"{shown} did not answer in time") from None
        except aiohttp.ClientConnectorError as problem:
            raise FetchError(f"cannot connect to {shown}: {_connect_reason(problem)}") from None
        except (aiohttp.InvalidURL, ValueError) as problem:
            raise FetchError(f"invalid URL {shown}: {_reason(problem)}") from None
        except (aiohttp.ClientError, OSError) as problem:
            raise FetchError(f"cannot read {shown}: {_reason(problem)}") from None
        body = b"".join(chunks)
        try:
            text = body.decode(encoding, errors="replace")
        except LookupError:
            text = body.decode("utf-8", errors="replace")
        return Answer(status, content_type, text)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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


def _connect_reason(problem: aiohttp.ClientConnectorError) -> str:
    """ "connection refused", not aiohttp's "Cannot connect to host ... [Connect call failed]"."""
    cause = problem.os_error
    if isinstance(cause.errno, int) and cause.errno > 0:
        return os.strerror(cause.errno).lower()
    if cause.strerror:  # name resolution: "Name or service not known"
        return cause.strerror[:1].lower() + cause.strerror[1:]
    return _reason(cause)


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
