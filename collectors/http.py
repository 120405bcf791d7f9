"""One HTTP client for every scrape, and failures as one-line messages.

httpx is fine at scrape rates (a few requests per second); the gateway's
upstream path uses aiohttp for the reasons in DESIGN.md. Every source shares
one AsyncClient so a daemon watching twenty targets holds one pool.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import httpx

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
# A /metrics page larger than this is a misconfiguration (per-request labels)
# that would make every scrape slow; refuse it rather than parse it.
MAX_BODY_BYTES = 16 << 20
ACCEPT = "text/plain;version=0.0.4;q=1, application/json;q=0.9, */*;q=0.1"


class FetchError(Exception):
    """The target could not be read; the message is fit to show as is."""


def make_client(
    connect_timeout_s: float = CONNECT_TIMEOUT_S, read_timeout_s: float = READ_TIMEOUT_S
) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=connect_timeout_s
    )
    return httpx.AsyncClient(
        timeout=timeout,
        headers={"Accept": ACCEPT, "User-Agent": "quell-collector"},
        follow_redirects=True,
        # Scrape targets are named explicitly; proxies from the environment
        # would route loopback targets through a corporate proxy.
        trust_env=False,
    )


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
    client: httpx.AsyncClient,
    url: str,
    auth: tuple[str, str] | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> tuple[str, str]:
    """Body text and content type of ``GET url``; FetchError on any failure."""
    shown = redact(url)
    try:
        async with client.stream("GET", url, auth=auth) as response:
            if response.status_code != 200:
                hint = (
                    " (check the user and password)" if response.status_code in (401, 403) else ""
                )
                raise FetchError(f"HTTP {response.status_code} from {shown}{hint}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"{shown} answered more than {max_bytes >> 20} MiB")
                chunks.append(chunk)
            content_type = response.headers.get("content-type", "")
            encoding = response.charset_encoding or "utf-8"
    except httpx.TimeoutException:
        raise FetchError(f"{shown} did not answer in time") from None
    except httpx.ConnectError as problem:
        raise FetchError(f"cannot connect to {shown}: {_reason(problem)}") from None
    except httpx.InvalidURL as problem:
        raise FetchError(f"invalid URL {shown}: {_reason(problem)}") from None
    except httpx.HTTPError as problem:
        raise FetchError(f"cannot read {shown}: {_reason(problem)}") from None
    try:
        return b"".join(chunks).decode(encoding, errors="replace"), content_type
    except LookupError:
        return b"".join(chunks).decode("utf-8", errors="replace"), content_type
