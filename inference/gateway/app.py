"""The gateway's HTTP surface: the proxied OpenAI API, health, metrics, admin.

The order of checks on the proxied routes is the order of their cost:
header size, key, shed switch, request rate and a full works queue are all
decided before the body is read, so the answers an overloaded gateway gives
most often (works queue_full, 429) cost no body read and no JSON decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable

from inference.asgi import (
    BodyTooLarge,
    ClientGone,
    HttpError,
    Receive,
    Router,
    Scope,
    Send,
    error_body,
    send_bytes,
    send_error,
    send_json,
)
from inference.drain_rate import DrainRate
from inference.gateway.access_log import AccessLog
from inference.gateway.admin import UPSTREAMS_PREFIX, AdminApi
from inference.gateway.admission import Admission, QueueFull, QueueTimeout
from inference.gateway.cache import ResponseCache, cache_key
from inference.gateway.config import PRIORITIES, ConfigError, GatewayConfig
from inference.gateway.keys import ApiKey, KeyRing
from inference.gateway.metrics import GatewayMetrics
from inference.gateway.openapi import gateway_document
from inference.gateway.proxy import Forwarded, Forwarder, retry_after_headers
from inference.gateway.request_body import RequestBody, parse_request_body
from inference.gateway.slow_clients import SlowClients
from inference.gateway.token_bucket import TokenBucket
from inference.gateway.upstreams import UpstreamPool
from inference.openapi import document_handler

log = logging.getLogger("quell.gateway")

QUEUED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
TICK_S = 0.5
NULL = "null"
# A refused body may still be arriving; closing the connection is the only
# way not to read it.
CLOSE = ((b"connection", b"close"),)


class Rejection:
    """An error answer built once and sent many times.

    The server copies what it needs out of each message and never changes
    one, so the two message dicts are shared between requests.
    """

    __slots__ = ("body", "log_error", "start", "status")

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        type_: str = "server_error",
        headers: tuple[tuple[bytes, bytes], ...] = (),
        log_error: str | None = None,
    ) -> None:
        body = error_body(message, type_, code)
        self.status = status
        self.start = {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
        self.body = {"type": "http.response.body", "body": body}
        self.log_error = json.dumps(log_error or message)

    async def send(self, send: Send) -> None:
        await send(self.start)
        await send(self.body)


def _reset_text(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* style: "20ms", "1.5s"."""
    if seconds < 1.0:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    return f"{seconds:.1f}s"


class GatewayApp:
    def __init__(self, config: GatewayConfig) -> None:
        now = time.monotonic()
        self.config = config
        server = config.server
        self.max_header_bytes = server.max_header_bytes
        self.max_body_bytes = server.max_body_bytes
        self.body_timeout_s = server.body_timeout_s
        self.slow_clients = SlowClients(server.body_timeout_s)
        q = config.queue
        self.admission = Admission(q.workers, q.capacity, q.timeout_s)
        self.max_tokens_cap = q.max_tokens_cap
        self.drain = DrainRate()
        self.keys = KeyRing(config.keys, config.limits, now)
        self.pool = UpstreamPool(config.upstreams, config.upstream_defaults)
        c = config.cache
        self.cache = ResponseCache(c.enabled, c.ttl_s, c.max_entries)
        self.shed = [False] * len(PRIORITIES)
        self.metrics = GatewayMetrics()
        self.metrics.watch(
            self.admission, self.drain, self.pool, self.cache, self.shed, time.monotonic
        )
        self._rate_limit_counters = {
            name: self.metrics.rate_limited(name) for name in self.keys.by_name
        }
        self.forwarder = Forwarder(self.pool, self.metrics)
        self.access: AccessLog | None = None
        if server.access_log is not None:
            try:
                self.access = AccessLog(
                    server.access_log, server.access_log_max_bytes, server.access_log_backups
                )
            except OSError as error:
                raise ConfigError(
                    f"server.access_log: cannot open {server.access_log}: {error.strerror}"
                ) from None
        self.admin = AdminApi(self)
        self.admin.restore()
        self._tasks: list[asyncio.Task[None]] = []

        self._unauthorized = Rejection(
            401,
            "missing or invalid API key; send it as 'Authorization: Bearer <key>'",
            "invalid_api_key",
            "invalid_request_error",
        )
        self._shed_rejections = [
            Rejection(
                503,
                f"priority_shed: requests of priority {p} are being shed to protect higher "
                "priorities; try again later",
                "priority_shed",
            )
            for p in PRIORITIES
        ]
        self._queue_full = self._queue_full_rejection()

        self.router = Router()
        for path in QUEUED_PATHS:
            # Served before routing (see __call__); listed so that other
            # methods on these paths get 405 rather than 404.
            self.router.add("POST", path, self._queued_routed)
        self.router.add("GET", "/v1/models", self.models)
        self.router.add("GET", "/health", self.health)
        self.router.add("GET", "/metrics", self.prometheus)
        self.router.add("GET", "/openapi.json", document_handler(gateway_document(config)))
        self.admin.add_routes(self.router)

    # -- ASGI plumbing ---------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        size = 0
        auth = declared = None
        retried = False
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            if name == b"authorization":
                auth = value
            elif name == b"content-length":
                declared = value
            elif name == b"x-stainless-retry-count":
                retried = value not in (b"0", b"")
        if size > self.max_header_bytes:
            await send_error(
                send,
                HttpError(
                    431,
                    f"request headers total {size} bytes; the limit is {self.max_header_bytes}",
                    code="request_header_fields_too_large",
                    headers=CLOSE,
                ),
            )
            return
        path = scope["path"]
        method = scope["method"]
        try:
            if method == "POST" and path in QUEUED_PATHS:
                await self._queued(path, auth, declared, receive, send, retried)
                return
            handler = self.router.resolve(method, path)
            if isinstance(handler, HttpError):
                if not path.startswith(UPSTREAMS_PREFIX):
                    await send_error(send, handler)
                    return
                handler = self.admin.upstream_action
            await handler(scope, receive, send)
        except HttpError as error:
            await send_error(send, error)
        except ClientGone:
            return

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        await self.pool.start()
        if self.access is not None:
            self.access.start()
        self._tasks.append(asyncio.create_task(self._tick(), name="gateway-tick"))
        a = self.admission
        log.info(
            "gateway: %d keys, %d upstreams (%s), %d workers, works queue capacity %d",
            len(self.keys.by_name),
            len(self.pool.upstreams),
            ", ".join(u.name for u in self.pool.upstreams) or "none",
            a.workers,
            a.capacity,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pool.stop()
        if self.access is not None:
            await self.access.stop()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self.drain.update(self.admission.completed, now)
            self.slow_clients.sweep(now)
            self._queue_full = self._queue_full_rejection()

    def settings_changed(self) -> None:
        """Called after an admin change: rebuild what was precomputed from settings."""
        self._queue_full = self._queue_full_rejection()

    # -- rejections ------------------------------------------------------

    def _queue_full_rejection(self) -> Rejection:
        a = self.admission
        # Under sustained overload the queue sits at capacity, so the wait
        # for a place is about a full queue's worth of completions.
        retry_after = self.drain.retry_after(a.capacity)
        return Rejection(
            503,
            f"works queue_full: {a.capacity} requests are waiting (the queue's capacity) and "
            f"all workers are busy ({a.workers} in flight); retry after {retry_after:.1f} s",
            "works_queue_full",
            headers=retry_after_headers(retry_after),
            log_error=f"works queue_full (capacity {a.capacity}, workers {a.workers})",
        )

    def _log(
        self,
        key: ApiKey | None,
        path: str,
        status: int,
        outcome: str,
        error_json: str = NULL,
        queue_wait_s: float | None = None,
        service_s: float | None = None,
        result: Forwarded | None = None,
    ) -> None:
        access = self.access
        if access is None:
            return
        upstream_json = NULL
        prompt = completion = None
        if result is not None:
            if result.upstream is not None:
                upstream_json = result.upstream.name_json
            prompt, completion = result.prompt_tokens, result.completion_tokens
        access.record(
            key.name_json if key is not None else NULL,
            key.priority if key is not None else "none",
            path,
            status,
            outcome,
            queue_wait_s,
            service_s,
            upstream_json,
            prompt,
            completion,
            error_json,
        )

    async def _reject(
        self, key: ApiKey, path: str, send: Send, rejection: Rejection, outcome: str
    ) -> None:
        self.metrics.outcomes[outcome, key.priority_index].inc()
        self._log(key, path, rejection.status, outcome, rejection.log_error)
        await rejection.send(send)

    async def _reject_error(
        self, key: ApiKey, path: str, send: Send, error: HttpError, outcome: str
    ) -> None:
        self.metrics.outcomes[outcome, key.priority_index].inc()
        self._log(key, path, error.status, outcome, json.dumps(error.message))
        await send_error(send, error)

    async def _rate_limited(
        self, key: ApiKey, path: str, send: Send, wait: float, now: float, tokens: bool
    ) -> None:
        self._rate_limit_counters[key.name].inc()
        headers = list(retry_after_headers(wait))
        limits = key.limits
        if key.requests is not None:
            headers.extend(self._bucket_headers(b"requests", key.requests, now))
        if key.tokens is not None:
            headers.extend(self._bucket_headers(b"tokens", key.tokens, now))
        if tokens:
            what = f"{limits.tokens_per_minute} tokens per minute"
        else:
            what = f"{limits.requests_per_second:g} requests per second"
        error = HttpError(
            429,
            f"rate limit exceeded for key {key.name}: {what}; retry after {wait:.2f} s",
            type="requests" if not tokens else "tokens",
            code="rate_limit_exceeded",
            headers=tuple(headers),
        )
        await self._reject_error(key, path, send, error, "rate_limited")

    @staticmethod
    def _bucket_headers(kind: bytes, bucket: TokenBucket, now: float) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit-" + kind, str(int(bucket.capacity)).encode()),
            (b"x-ratelimit-remaining-" + kind, str(bucket.remaining(now)).encode()),
            (b"x-ratelimit-reset-" + kind, _reset_text(bucket.reset_after(now)).encode()),
        ]

    # -- the proxied OpenAI API ------------------------------------------

    def _authenticate(self, auth: bytes | None) -> ApiKey | None:
        if auth is None or auth[:7].lower() != b"bearer ":
            return None
        token = auth[7:].strip()
        return self.keys.find(token) if token else None

    def _read(self, receive: Receive, declared: bytes | None, arrived: float) -> Awaitable[bytes]:
        length = None
        if declared is not None:
            with contextlib.suppress(ValueError):
                length = int(declared)
        return self.slow_clients.read(receive, self.max_body_bytes, length, arrived)

    async def _queued(
        self,
        path: str,
        auth: bytes | None,
        declared: bytes | None,
        receive: Receive,
        send: Send,
        retried: bool = False,
    ) -> None:
        """A request for a worker: completions, chat completions, embeddings.

        ``retried`` marks a client's retry of an earlier attempt, as the
        OpenAI SDKs announce with ``x-stainless-retry-count``.
        """
        arrived = time.monotonic()
        metrics = self.metrics
        key = self._authenticate(auth)
        if key is None:
            metrics.received_unauthenticated.inc()
            metrics.unauthorized.inc()
            self._log(None, path, 401, "unauthorized", self._unauthorized.log_error)
            await self._unauthorized.send(send)
            return
        priority = key.priority_index
        metrics.received[priority].inc()
        if retried:
            metrics.retried[priority].inc()
        if self.shed[priority]:
            await self._reject(key, path, send, self._shed_rejections[priority], "priority_shed")
            return
        bucket = key.requests
        if bucket is not None:
            wait = bucket.take(1.0, arrived)
            if wait:
                await self._rate_limited(key, path, send, wait, arrived, tokens=False)
                return
        admission = self.admission
        if admission.full():
            await self._reject(key, path, send, self._queue_full, "works_queue_full")
            return

        request = await self._request_body(key, path, declared, arrived, receive, send)
        if request is None:
            return
        if key.tokens is not None:
            wait = key.tokens.take(request.token_estimate(), arrived)
            if wait:
                await self._rate_limited(key, path, send, wait, arrived, tokens=True)
                return
        cached_as = None
        if self.cache.enabled and request.deterministic and not request.stream:
            cached_as = cache_key(path, request.raw)
            hit = self.cache.get(cached_as, arrived)
            if hit is not None:
                metrics.cache_hits.inc()
                metrics.outcomes["cached", priority].inc()
                await send_bytes(send, 200, hit.body, (), hit.content_type)
                self._log(key, path, 200, "cached", service_s=time.monotonic() - arrived)
                return
            metrics.cache_misses.inc()

        queued = time.monotonic()
        try:
            await admission.acquire(priority)
        except QueueFull:
            await self._reject(key, path, send, self._queue_full, "works_queue_full")
            return
        except QueueTimeout:
            await self._queue_timeout(key, path, send, time.monotonic() - queued)
            return
        admitted = time.monotonic()
        try:
            result = await self.forwarder.forward(
                "POST", path, request.raw, request.stream, receive, send
            )
        finally:
            admission.release()
        done = time.monotonic()
        metrics.outcomes[result.outcome, priority].inc()
        metrics.queue_wait[priority].observe(admitted - queued)
        metrics.duration[priority].observe(done - arrived)
        if result.prompt_tokens:
            metrics.prompt_tokens.inc(result.prompt_tokens)
        if result.completion_tokens:
            metrics.completion_tokens.inc(result.completion_tokens)
        if cached_as is not None and result.body is not None and self.cache.enabled:
            self.cache.put(cached_as, result.body, result.content_type, done)
        self._log(
            key,
            path,
            result.status,
            result.outcome,
            NULL if result.error is None else json.dumps(result.error),
            admitted - queued,
            done - admitted,
            result,
        )

    async def _queued_routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = auth = None
        retried = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = bytes(value)
            elif name == b"authorization":
                auth = bytes(value)
            elif name == b"x-stainless-retry-count":
                retried = value not in (b"0", b"")
        await self._queued(scope["path"], auth, declared, receive, send, retried)

    async def _request_body(
        self,
        key: ApiKey,
        path: str,
        declared: bytes | None,
        arrived: float,
        receive: Receive,
        send: Send,
    ) -> RequestBody | None:
        """The parsed body, or None once the client has been answered."""
        try:
            raw = await self._read(receive, declared, arrived)
        except BodyTooLarge:
            error = HttpError(
                413,
                f"request body exceeds {self.max_body_bytes} bytes",
                code="request_too_large",
                headers=CLOSE,
            )
        except TimeoutError:
            error = HttpError(
                408,
                f"the request body did not arrive within {self.body_timeout_s:g} s",
                code="request_timeout",
                headers=CLOSE,
            )
        except ClientGone:
            self.metrics.outcomes["client_gone", key.priority_index].inc()
            self._log(key, path, 499, "client_gone")
            return None
        else:
            try:
                return parse_request_body(raw, self.max_tokens_cap)
            except HttpError as invalid:
                error = invalid
        await self._reject_error(key, path, send, error, "bad_request")
        return None

    async def _queue_timeout(self, key: ApiKey, path: str, send: Send, waited: float) -> None:
        retry_after = self.drain.retry_after(self.admission.depth)
        error = HttpError(
            503,
            f"queue_timeout: waited {waited:.2f} s in the works queue without getting a worker "
            f"(timeout {self.admission.timeout_s:g} s); retry after {retry_after:.1f} s",
            type="server_error",
            code="queue_timeout",
            headers=retry_after_headers(retry_after),
        )
        self.metrics.queue_wait[key.priority_index].observe(waited)
        await self._reject_error(key, path, send, error, "queue_timeout")

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answered by an upstream directly: listing models takes no worker."""
        key = self._authenticate(_authorization(scope))
        if key is None:
            self._log(None, "/v1/models", 401, "unauthorized", self._unauthorized.log_error)
            await self._unauthorized.send(send)
            return
        arrived = time.monotonic()
        result = await self.forwarder.forward("GET", "/v1/models", None, False, receive, send)
        error_json = NULL if result.error is None else json.dumps(result.error)
        self._log(
            key,
            "/v1/models",
            result.status,
            result.outcome,
            error_json,
            service_s=time.monotonic() - arrived,
            result=result,
        )

    # -- operations ------------------------------------------------------

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        now = time.monotonic()
        available = sum(1 for u in self.pool.upstreams if u.eligible(now))
        await send_json(
            send,
            200,
            {
                "status": "ok",
                "upstreams": len(self.pool.upstreams),
                "upstreams_available": available,
            },
        )

    async def prometheus(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self.metrics.exposition(), content_type=METRICS_CONTENT_TYPE)


def _authorization(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None
