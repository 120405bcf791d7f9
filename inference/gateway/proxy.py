"""Sending a request to an upstream and relaying its answer to the client.

Non-streaming answers are relayed as the bytes the upstream sent, never
decoded and re-encoded; only the usage token counts are picked out of them
for the access log. Streaming answers are relayed chunk by chunk as they
arrive.

Upstream 5xx answers, refused connections and timeouts count against the
upstream's circuit breaker; 4xx answers are the client's doing and do not.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from inference.asgi import Receive, Send, error_body, send_bytes
from inference.gateway.metrics import GatewayMetrics
from inference.gateway.upstreams import Upstream, UpstreamPool
from inference.http_client import ConnectFailed, OriginError, Response

SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
# Error headers an upstream sets that a client needs to back off properly.
PASSED_ERROR_HEADERS = (b"retry-after", b"retry-after-ms")
USAGE_MARK = b'"usage"'
# An internal outcome: the connection was refused, nothing was sent.
CONNECT_FAILED = "connect_failed"


@dataclass(slots=True)
class Forwarded:
    """What became of one forwarded request, for the log and the metrics."""

    status: int
    outcome: str
    upstream: Upstream | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    body: bytes | None = None
    content_type: bytes = b"application/json"
    error: str | None = None


def _count_after(body: bytes, field: bytes, start: int) -> int | None:
    at = body.find(field, start)
    if at < 0:
        return None
    at += len(field)
    end = len(body)
    while at < end and body[at] in b' \t\r\n:"':
        at += 1
    digits = at
    while digits < end and 48 <= body[digits] <= 57:
        digits += 1
    return int(body[at:digits]) if digits > at else None


def usage_counts(body: bytes) -> tuple[int | None, int | None]:
    """Prompt and completion tokens from an OpenAI ``usage`` object, without decoding JSON."""
    at = body.rfind(USAGE_MARK)
    if at < 0:
        return None, None
    return (
        _count_after(body, b'"prompt_tokens"', at),
        _count_after(body, b'"completion_tokens"', at),
    )


class Forwarder:
    def __init__(self, pool: UpstreamPool, metrics: GatewayMetrics) -> None:
        self.pool = pool
        self.metrics = metrics
        self._meters: dict[str, tuple[Histogram, Counter, Counter]] = {}

    def _observe(self, upstream: Upstream, success: bool, elapsed: float) -> None:
        meters = self._meters.get(upstream.name)
        if meters is None:
            if self.pool.by_name.get(upstream.name) is not upstream:
                # Removed while this request was in flight: its series are gone
                # and must not come back.
                return
            m = self.metrics
            meters = self._meters[upstream.name] = (
                m.upstream_latency(upstream.name),
                m.upstream_requests(upstream.name, "success"),
                m.upstream_requests(upstream.name, "failure"),
            )
        latency, succeeded, failed = meters
        latency.observe(elapsed)
        (succeeded if success else failed).inc()

    def forget(self, name: str) -> None:
        self._meters.pop(name, None)
        self.metrics.forget_upstream(name)

    async def forward(
        self,
        method: str,
        path: str,
        body: bytes | None,
        stream: bool,
        receive: Receive,
        send: Send,
    ) -> Forwarded:
        """Send to the least-busy upstream and answer the client, whatever happens."""
        failure: Forwarded | None = None
        # A refused connection means no upstream saw the request, so one
        # other upstream may safely be tried; anything later may not be.
        for _ in range(2):
            upstream = self.pool.pick(time.monotonic())
            if upstream is None or (failure is not None and upstream is failure.upstream):
                break
            result = await self._attempt(upstream, method, path, body, stream, receive, send)
            if result.outcome != CONNECT_FAILED:
                return result
            result.outcome = "upstream_unreachable"
            failure = result
        if failure is not None:
            return await _answer_error(send, failure, 502, "upstream_unreachable")
        now = time.monotonic()
        return await _answer_error(
            send,
            Forwarded(
                503,
                "circuit_open",
                error=f"no upstream available: {self.pool.unavailable_summary(now)}",
            ),
            503,
            "circuit_open",
            retry_after_headers(self.pool.next_probe_in(now)),
        )

    async def _attempt(
        self,
        upstream: Upstream,
        method: str,
        path: str,
        body: bytes | None,
        stream: bool,
        receive: Receive,
        send: Send,
    ) -> Forwarded:
        client = upstream.client
        assert client is not None
        upstream.in_flight += 1
        started = time.monotonic()
        success = False
        try:
            response = await client.request(method, path, body)
            status = response.status
            success = status < 500
            content_type = response.header(b"content-type") or b"application/json"
            if stream and status == 200:
                try:
                    result = await _relay_stream(response, content_type, upstream, receive, send)
                finally:
                    # Not read to the end (client gone, error): the connection
                    # closes, which is how the engine learns to stop generating.
                    response.release()
                success = result.outcome in ("ok", "client_gone")
                return result
            data = await response.read()
            headers = [upstream.name_header]
            if status >= 400:
                for name in PASSED_ERROR_HEADERS:
                    value = response.header(name)
                    if value is not None:
                        headers.append((name, value))
        except TimeoutError as exc:
            return await _answer_error(
                send,
                Forwarded(
                    504, "upstream_timeout", upstream, error=f"upstream {upstream.name}: {exc}"
                ),
                504,
                "upstream_timeout",
            )
        except ConnectFailed as exc:
            return Forwarded(
                502,
                CONNECT_FAILED,
                upstream,
                error=f"cannot connect to upstream {upstream.name}: {exc}",
            )
        except OriginError as exc:
            return await _answer_error(
                send,
                Forwarded(
                    502,
                    "upstream_unreachable",
                    upstream,
                    error=f"upstream {upstream.name} failed: {exc}",
                ),
                502,
                "upstream_unreachable",
            )
        finally:
            upstream.in_flight -= 1
            now = time.monotonic()
            upstream.record(success, now)
            self._observe(upstream, success, now - started)
        await send_bytes(send, status, data, headers, content_type)
        if status < 400:
            prompt, completion = usage_counts(data)
            return Forwarded(
                status, "ok", upstream, prompt, completion, data if status == 200 else None,
                content_type,
            )  # fmt: skip
        return Forwarded(
            status,
            "upstream_error" if status >= 500 else "upstream_rejected",
            upstream,
            error=_upstream_message(data),
        )


def _upstream_message(data: bytes) -> str | None:
    """The upstream's own error message, for the access log; None if it sent none."""
    try:
        payload = json.loads(data)
        message = payload["error"]["message"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    return message if isinstance(message, str) else None


async def _answer_error(
    send: Send,
    result: Forwarded,
    status: int,
    code: str,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Forwarded:
    result.status = status
    headers: list[tuple[bytes, bytes]] = list(extra_headers)
    if result.upstream is not None:
        headers.append(result.upstream.name_header)
    await send_bytes(send, status, error_body(result.error or code, "server_error", code), headers)
    return result


async def _relay_stream(
    response: Response,
    content_type: bytes,
    upstream: Upstream,
    receive: Receive,
    send: Send,
) -> Forwarded:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                *SSE_HEADERS,
                upstream.name_header,
            ],
        }
    )
    # The engine stops generating when its client hangs up; so must the
    # gateway, or an abandoned stream holds a worker to the end.
    gone = asyncio.ensure_future(receive())
    result = Forwarded(200, "ok", upstream)
    try:
        async for chunk in response.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if USAGE_MARK in chunk:
                prompt, completion = usage_counts(chunk)
                if prompt is not None:
                    result.prompt_tokens, result.completion_tokens = prompt, completion
            if gone.done():
                result.outcome = "client_gone"
                result.error = "the client disconnected during the stream"
                return result
    except TimeoutError as exc:
        result.outcome = "upstream_timeout"
        result.error = f"upstream {upstream.name} during the stream: {exc}"
    except OriginError as exc:
        result.outcome = "upstream_unreachable"
        result.error = f"upstream {upstream.name} failed during the stream: {exc}"
    finally:
        gone.cancel()
    tail = b""
    if result.error is not None:
        # Headers are gone already; an SSE error event is how OpenAI SDKs
        # learn that a stream broke (they raise APIError on it).
        tail = b"data: " + error_body(result.error, "server_error", result.outcome) + b"\n\n"
    await send({"type": "http.response.body", "body": tail, "more_body": False})
    return result


def retry_after_headers(seconds: float) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"retry-after", str(max(1, math.ceil(seconds))).encode()),
        (b"retry-after-ms", str(max(1, math.ceil(seconds * 1000))).encode()),
    )
