"""Pieces shared by the engine's and the gateway's OpenAPI documents.

Each server describes its HTTP API in a hand-written OpenAPI 3.1 document
(``inference/engine/openapi.py``, ``inference/gateway/openapi.py``) and
serves it at ``GET /openapi.json``. The documents are what the schemathesis
fuzz tests read, so a route, a status or a field that is not written down
here is a test failure, not a surprise for a client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from inference.asgi import Handler, Receive, Scope, Send, dumps, send_bytes

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"

Schema = dict[str, Any]

# The OpenAI error shape every quell server answers with; SDKs surface
# ``error.message`` to the person who made the call.
ERROR_SCHEMA: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string", "description": "what went wrong, for a person"},
                "type": {
                    "type": "string",
                    "description": "the OpenAI error class, e.g. invalid_request_error",
                },
                "param": {
                    "type": ["string", "null"],
                    "description": "the request field at fault, when there is one",
                },
                "code": {
                    "type": ["string", "null"],
                    "description": "a stable word a program can branch on, e.g. queue_full",
                },
            },
        }
    },
}

STATUS_TEXT = {
    400: "the body is not a JSON object, or a field has a value the server refuses",
    401: "missing or invalid bearer token",
    403: "the token is known but not allowed here, or this API is switched off",
    404: "no such route, model or named resource",
    408: "the request body did not arrive in time",
    413: "the request body is larger than the server accepts",
    422: "the change was refused; the message names the field and the allowed range",
    429: "a rate limit was reached; Retry-After says when to try again",
    431: "the request headers are larger than the server accepts",
    500: "the engine failed the request (an injected fault)",
    502: "no upstream could be reached",
    503: "overloaded (works queue_full), shedding, or no upstream available; see Retry-After",
    504: "the upstream did not answer in time",
}

# Before OpenAPI 3.2 a text/event-stream schema describes one event.
SSE_EVENT: Schema = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "description": "one chat.completion.chunk as JSON (or an error object); "
            "the last event is [DONE]",
        },
    },
}

RETRY_AFTER_HEADERS: Schema = {
    "Retry-After": {
        "description": "whole seconds to wait before retrying",
        "schema": {"type": "string"},
    },
    "Retry-After-Ms": {
        "description": "milliseconds to wait before retrying",
        "schema": {"type": "string"},
    },
}


def error_responses(statuses: Iterable[int]) -> dict[str, Any]:
    """``responses`` entries for error statuses, all in the OpenAI error shape."""
    responses: dict[str, Any] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "description": STATUS_TEXT[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if status in (429, 503):
            entry["headers"] = RETRY_AFTER_HEADERS
        responses[str(status)] = entry
    return responses


def json_response(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def json_body(
    schema: Schema, description: str = "", required: bool = True, example: object = None
) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    body: dict[str, Any] = {"required": required, "content": {"application/json": media}}
    if description:
        body["description"] = description
    return body


METRICS_OPERATION: dict[str, Any] = {
    "summary": "Prometheus text exposition",
    "operationId": "metrics",
    "tags": ["operations"],
    "responses": {
        "200": {
            "description": "the server's metrics",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
}

OPENAPI_OPERATION: dict[str, Any] = {
    "summary": "this document",
    "operationId": "openapi",
    "tags": ["operations"],
    "responses": {"200": json_response("the OpenAPI document", {"type": "object"})},
}


def chat_example(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Is the works queue full?"}],
        "max_tokens": 8,
    }


def bearer_scheme(description: str) -> dict[str, Any]:
    return {"type": "http", "scheme": "bearer", "description": description}


def document(
    title: str,
    description: str,
    paths: Mapping[str, Any],
    schemas: Mapping[str, Schema],
    security_schemes: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": API_VERSION, "description": description},
        "paths": dict(paths),
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, **schemas},
            "securitySchemes": dict(security_schemes),
        },
    }


def document_handler(doc: Mapping[str, Any]) -> Handler:
    """A route that answers the document, encoded once."""
    body = dumps(doc)

    async def openapi(scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, body)

    return openapi
