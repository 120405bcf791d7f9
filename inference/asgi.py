"""A small raw-ASGI toolkit shared by the engine and the gateway.

Raw ASGI answered about 45,000 immediate 503s per second here where
Starlette managed about 26,000 (see DESIGN.md), and shedding must never be
the thing that falls over, so the servers speak ASGI directly, on the
project's own HTTP server (``inference.http_server``). This module keeps
that bearable: body reading with a size limit, JSON and OpenAI-shaped error
responses, bearer tokens compared in constant time, and a route table.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_CONTENT = (b"content-type", b"application/json")


class BodyTooLarge(Exception):
    """The client sent more bytes than the route accepts."""


class ClientGone(Exception):
    """The client disconnected before the body was read."""


async def read_body(receive: Receive, limit: int, declared: int | None = None) -> bytes:
    """Read the whole request body, refusing more than ``limit`` bytes.

    ``declared`` is the Content-Length header when present, so an oversized
    upload is refused before a single chunk is buffered.
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def header(scope: Scope, name: bytes) -> bytes | None:
    """First value of a request header; ``name`` must be lower-case."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def content_length(scope: Scope) -> int | None:
    raw = header(scope, b"content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def bearer_token(scope: Scope) -> bytes | None:
    raw = header(scope, b"authorization")
    if raw is None:
        return None
    scheme, _, token = raw.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        return None
    return token.strip()


def token_matches(presented: bytes | None, expected: bytes | None) -> bool:
    """Constant-time comparison; an unset expected token matches nothing."""
    if presented is None or expected is None:
        return False
    return hmac.compare_digest(presented, expected)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    content_type: bytes = b"application/json",
) -> None:
    response_headers: Headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    response_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: object, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send_bytes(send, status, dumps(payload), headers)


def dumps(payload: object) -> bytes:
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # JSON may spell a lone surrogate ("\ud800") that UTF-8 cannot; a
        # model name or a body echoed back must not turn into a 500.
        return json.dumps(payload, separators=(",", ":")).encode()


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """The OpenAI error shape, which every OpenAI SDK knows how to surface."""
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


@dataclass(frozen=True, slots=True)
class HttpError(Exception):
    """An error a handler raises to answer the client in the OpenAI shape."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


async def send_error(send: Send, error: HttpError) -> None:
    await send_bytes(send, error.status, error.body(), error.headers)


Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class Router:
    """Exact-path routing; the APIs here have no path parameters worth a parser."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._routes.setdefault(path, {})[method] = handler

    def resolve(self, method: str, path: str) -> Handler | HttpError:
        methods = self._routes.get(path)
        if methods is None:
            return HttpError(404, f"no route for {path}", code="not_found")
        handler = methods.get(method)
        if handler is None and method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allowed = ", ".join(sorted(methods))
            return HttpError(
                405,
                f"method {method} not allowed on {path}; use {allowed}",
                code="method_not_allowed",
                headers=((b"allow", allowed.encode()),),
            )
        return handler

    def paths(self) -> dict[str, list[str]]:
        return {path: sorted(methods) for path, methods in self._routes.items()}


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body or raise a 400 the client can act on."""
    if not body:
        raise HttpError(400, "request body is empty; expected a JSON object", code="invalid_json")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(
            400, f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    except RecursionError:
        # "[[[[..." a few hundred thousand deep fits in 1 MiB and would
        # otherwise be a 500 with a traceback.
        raise HttpError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise HttpError(
            400,
            f"request body must be a JSON object, not {type(payload).__name__}",
            code="invalid_json",
        )
    return payload
