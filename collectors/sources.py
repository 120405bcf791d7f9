"""A collector from the URL a person writes.

- ``http(s)://host:port/path``: Prometheus /metrics (preset detected from
  the names), nginx stub_status, or a RabbitMQ management-API document.
  A URL with no path means ``/metrics``.
- ``rabbitmq+http(s)://user:pass@host:15672/vhost/queue``: one RabbitMQ
  queue through the management API (``/vhost`` alone: every queue in it).
  The vhost is URL-encoded as RabbitMQ writes it (``%2F`` for ``/``).
- ``redis://[user:pass@]host:port/db?queue=NAME&kind=celery|rq``: a Celery
  or RQ queue kept in Redis.

Passwords are used to connect and never appear in a collector's name, in a
status or in a label.
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from collectors.http import HttpClient, redact
from collectors.http_queue import HTTP_PRESETS, HttpQueueCollector
from collectors.presets import PRESET_NAMES, canonical
from collectors.redis_queues import RedisQueueCollector

RABBITMQ_PORT = 15672
REDIS_PORT = 6379
SCHEMES = ("http", "https", "rabbitmq+http", "rabbitmq+https", "redis")


class SourceError(ValueError):
    """The URL or preset cannot name a source; the message says why."""


def _port(url: str, default: int) -> int:
    try:
        port = urlsplit(url).port
    except ValueError:
        raise SourceError(f"bad port in {redact(url)}") from None
    return default if port is None else port


def _preset(preset: str | None, allowed: tuple[str, ...], where: str) -> str | None:
    if preset is None:
        return None
    known = canonical(preset)
    if known is None:
        raise SourceError(f"unknown preset {preset!r}; presets: {', '.join(PRESET_NAMES)}")
    if known not in allowed:
        raise SourceError(
            f"preset {known!r} does not read {where}; use one of {', '.join(allowed)}"
        )
    return known


def open_source(
    url: str,
    client: HttpClient,
    *,
    preset: str | None = None,
    name: str | None = None,
    timeout_s: float = 2.0,
) -> HttpQueueCollector | RedisQueueCollector:
    try:
        parts = urlsplit(url)
    except ValueError as problem:
        raise SourceError(f"bad URL {redact(url)}: {problem}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"{scheme!r}" if scheme else "none"
        raise SourceError(
            f"unsupported URL scheme {shown} in {redact(url)}; use http(s)://, "
            "rabbitmq+http(s)://user:pass@host:15672/vhost/queue or "
            "redis://host:port/db?queue=NAME&kind=celery|rq"
        )
    if not parts.hostname:
        raise SourceError(f"no host in {redact(url)}")
    _port(url, 0)
    if scheme in ("http", "https"):
        chosen = _preset(preset, HTTP_PRESETS, "HTTP metrics pages")
        path = parts.path or "/metrics"
        target = urlunsplit(parts._replace(path=path))
        auth = None
        if parts.username is not None:
            auth = (unquote(parts.username), unquote(parts.password or ""))
            target = urlunsplit(
                parts._replace(path=path, netloc=_netloc(parts.hostname, parts.port))
            )
        return HttpQueueCollector(
            target,
            client,
            preset=chosen,
            name=name or redact(urlunsplit(parts._replace(path=path))),
            auth=auth,
        )
    if scheme.startswith("rabbitmq+"):
        _preset(preset, ("rabbitmq",), "RabbitMQ")
        return _rabbitmq(url, client, name)
    chosen = _preset(preset, ("celery", "rq"), "Redis")
    return _redis(url, chosen, name, timeout_s)


def _netloc(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _rabbitmq(url: str, client: HttpClient, name: str | None) -> HttpQueueCollector:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = _port(url, RABBITMQ_PORT)
    segments = [unquote(s) for s in parts.path.split("/")[1:] if s]
    if len(segments) > 2:
        raise SourceError(
            f"{redact(url)}: expected /vhost/queue after the host (vhost '/' is written %2F)"
        )
    api_path = "/api/queues" + "".join("/" + quote(s, safe="") for s in segments)
    scheme = parts.scheme.split("+", 1)[1]
    api_url = urlunsplit((scheme, _netloc(host, port), api_path, "", ""))
    auth = None
    user = ""
    if parts.username is not None:
        user = unquote(parts.username)
        auth = (user, unquote(parts.password or ""))
    shown = "/".join(quote(s, safe="") for s in segments)
    who = f"{user}@" if user else ""
    label = name or f"rabbitmq://{who}{_netloc(host, port)}/{shown}"
    return HttpQueueCollector(api_url, client, preset="rabbitmq", name=label, auth=auth)


def _redis(url: str, kind: str | None, name: str | None, timeout_s: float) -> RedisQueueCollector:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    chosen = kind or query.get("kind", ["celery"])[0]
    if chosen not in ("celery", "rq"):
        raise SourceError(f"kind must be celery or rq, got {chosen!r}")
    queue = query.get("queue", ["celery" if chosen == "celery" else "default"])[0]
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise SourceError(f"the path of {redact(url)} must be a database number, got {db_text!r}")
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    if password is None and username is not None:
        # redis://secret@host: a lone userinfo is the password, as redis-cli reads it.
        password, username = username, None
    host = parts.hostname or "localhost"
    port = _port(url, REDIS_PORT)
    return RedisQueueCollector(
        host,
        port,
        queue,
        "celery" if chosen == "celery" else "rq",
        db=int(db_text),
        password=password,
        username=username,
        name=name,
        timeout_s=timeout_s,
    )
