"""The gateway's OpenAPI document, served at ``GET /openapi.json``.

Two audiences, two tokens: clients call the OpenAI routes with their API
key, operators and playbooks call ``/admin/`` with the admin token. A client
key on an admin route is 403, anything else there 401. Key names are left
out on purpose: the document is served without a token.
"""

from __future__ import annotations

from typing import Any

from inference.gateway.config import (
    MAX_CAPACITY,
    MAX_RATE,
    MAX_WORKERS,
    MIN_SECONDS,
    PRIORITIES,
    GatewayConfig,
)
from inference.openapi import (
    METRICS_OPERATION,
    OPENAPI_OPERATION,
    SSE_EVENT,
    Schema,
    bearer_scheme,
    chat_example,
    document,
    error_responses,
    json_body,
    json_response,
)

CLIENT: list[dict[str, list[str]]] = [{"clientKey": []}]
ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
# What the gateway itself may answer on a proxied route, besides the
# upstream's own answers, which are relayed as they came.
PROXY_ERRORS = (400, 401, 404, 408, 413, 429, 500, 502, 503, 504)
ADMIN_CHANGE_ERRORS = (400, 401, 403, 408, 413, 422)
# The bundled engine's model; an example only, the upstreams decide.
EXAMPLE_MODEL = "quell-mini"
NAME_PATTERN = r'^[^\s/"\\]{1,64}$'


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _positive(high: float) -> Schema:
    return {"type": "number", "exclusiveMinimum": 0, "maximum": high}


def _seconds(high: float) -> Schema:
    return {"type": "number", "minimum": MIN_SECONDS, "maximum": high}


def _whole(low: int, high: int) -> Schema:
    return {"type": "integer", "minimum": low, "maximum": high}


def _upstream_settings() -> dict[str, Schema]:
    return {
        "connect_timeout_s": _seconds(600),
        "read_timeout_s": _seconds(3600),
        "health_path": {"type": "string", "pattern": "^/"},
        "health_interval_s": _seconds(3600),
        "breaker_consecutive_failures": _whole(1, 1_000_000),
        "breaker_error_ratio": _positive(1),
        "breaker_window_s": _seconds(86400),
        "breaker_min_requests": _whole(1, 1_000_000_000),
        "breaker_cooldown_s": _seconds(86400),
    }


def _change(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "required": ["before", "after"],
        "properties": {
            "before": {},
            "after": {},
            "warning": {
                "type": "string",
                "description": "the change is in effect but the state file could not be written",
            },
        },
    }


def _schemas() -> dict[str, Schema]:
    limit_values: dict[str, Schema] = {
        "requests_per_second": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": MAX_RATE,
            "description": "0: unlimited; null (for one key) hands it back to the defaults",
        },
        "burst": {"type": ["integer", "null"], "minimum": 0, "maximum": int(MAX_RATE)},
        "tokens_per_minute": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": int(MAX_RATE),
        },
    }
    return {
        "OpenAIRequest": {
            "type": "object",
            "description": (
                "Forwarded to an upstream byte for byte, except that max_tokens is rewritten "
                "when the gateway caps it. The gateway reads only stream, max_tokens, "
                "max_completion_tokens and temperature; the upstream checks the rest."
            ),
            "properties": {
                "model": {"type": "string"},
                "messages": {"type": "array", "items": {"type": "object"}},
                "max_tokens": {"type": "integer", "minimum": 1},
                "max_completion_tokens": {"type": "integer", "minimum": 1},
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "stream": {"type": "boolean"},
            },
        },
        "QueueChange": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "workers": _whole(1, MAX_WORKERS),
                "capacity": _whole(0, MAX_CAPACITY),
                "timeout_s": _positive(3600),
                "max_tokens_cap": _whole(0, 10_000_000),
            },
        },
        "LimitsChange": {
            "description": (
                "Either a factor that scales the limits, or limit values; without key the "
                "defaults change (and a factor scales every key's own limits too)."
            ),
            "oneOf": [
                {
                    "type": "object",
                    "required": ["factor"],
                    "additionalProperties": False,
                    "properties": {
                        "key": {"type": "string"},
                        "factor": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
                    },
                },
                {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "anyOf": [{"required": [name]} for name in limit_values],
                    "properties": {"key": {"type": "string"}, **limit_values},
                },
            ],
        },
        "ShedChange": {
            "type": "object",
            "required": ["classes"],
            "additionalProperties": False,
            "properties": {
                "classes": {
                    "type": "array",
                    "items": {"enum": list(PRIORITIES)},
                    "description": "the priority classes to shed; [] sheds none",
                }
            },
        },
        "CacheChange": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean"},
                "ttl_s": _positive(86400 * 30),
                "max_entries": _whole(1, 10_000_000),
                "clear": {"type": "boolean"},
            },
        },
        "NewUpstream": {
            "type": "object",
            "required": ["name", "url"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": NAME_PATTERN},
                "url": {
                    "type": "string",
                    "pattern": "^https?://[^?#]+$",
                    "description": "http:// or https://, no query or fragment",
                },
                "api_key_env": {
                    "type": "string",
                    "minLength": 1,
                    "description": "the variable holding the upstream's bearer key",
                },
                **_upstream_settings(),
            },
        },
        "GatewayState": {
            "type": "object",
            "required": ["queue", "shed", "limits", "keys", "upstreams", "cache"],
            "properties": {
                "queue": {"type": "object"},
                "shed": {"type": "array", "items": {"enum": list(PRIORITIES)}},
                "limits": {"type": "object"},
                "keys": {"type": "object"},
                "upstreams": {"type": "object"},
                "cache": {"type": "object"},
                "state_file": {"type": ["string", "null"]},
            },
        },
        "Change": _change("the setting before and after the change"),
    }


def _proxied(summary: str, operation_id: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": operation_id,
            "tags": ["openai"],
            "security": CLIENT,
            "requestBody": json_body(_ref("OpenAIRequest"), example=example),
            "responses": {
                "200": {
                    "description": "the upstream's answer (server-sent events when streaming)",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": SSE_EVENT},
                    },
                },
                **error_responses(PROXY_ERRORS),
            },
        }
    }


def _admin_post(summary: str, operation_id: str, body: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": operation_id,
            "tags": ["admin"],
            "security": ADMIN,
            "requestBody": json_body(_ref(body)),
            "responses": {
                "200": json_response("the change, in effect", _ref("Change")),
                **error_responses(ADMIN_CHANGE_ERRORS),
            },
        }
    }


def gateway_document(config: GatewayConfig) -> dict[str, Any]:
    name_parameter = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": NAME_PATTERN},
    }
    upstream_change = {
        "200": json_response("the upstream before and after", _ref("Change")),
        **error_responses((401, 403, 404)),
    }
    paths: dict[str, Any] = {
        "/v1/chat/completions": _proxied(
            "chat completion, queued for a worker", "chat", chat_example(EXAMPLE_MODEL)
        ),
        "/v1/completions": _proxied(
            "completion, queued for a worker",
            "completions",
            {"model": EXAMPLE_MODEL, "prompt": "Is the works queue full?", "max_tokens": 8},
        ),
        "/v1/embeddings": _proxied(
            "embeddings, queued for a worker",
            "embeddings",
            {"model": EXAMPLE_MODEL, "input": "Is the works queue full?"},
        ),
        "/v1/models": {
            "get": {
                "summary": "the models of an upstream; takes no worker",
                "operationId": "listModels",
                "tags": ["openai"],
                "security": CLIENT,
                "responses": {
                    "200": json_response("the upstream's model list", {"type": "object"}),
                    **error_responses((401, 502, 503, 504)),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "liveness and how many upstreams may take requests",
                "operationId": "health",
                "tags": ["operations"],
                "responses": {
                    "200": json_response(
                        "alive",
                        {
                            "type": "object",
                            "required": ["status", "upstreams", "upstreams_available"],
                            "properties": {
                                "status": {"const": "ok"},
                                "upstreams": {"type": "integer"},
                                "upstreams_available": {"type": "integer"},
                            },
                        },
                    )
                },
            }
        },
        "/metrics": {"get": METRICS_OPERATION},
        "/openapi.json": {"get": OPENAPI_OPERATION},
        "/admin/state": {
            "get": {
                "summary": "queue, shedding, limits, keys, upstreams and cache",
                "operationId": "adminState",
                "tags": ["admin"],
                "security": ADMIN,
                "responses": {
                    "200": json_response("the gateway's state", _ref("GatewayState")),
                    **error_responses((401, 403)),
                },
            }
        },
        "/admin/queue": _admin_post("resize workers or the queue", "setQueue", "QueueChange"),
        "/admin/limits": _admin_post("change or scale rate limits", "setLimits", "LimitsChange"),
        "/admin/shed": _admin_post("shed whole priority classes", "setShed", "ShedChange"),
        "/admin/cache": _admin_post("switch, size or clear the cache", "setCache", "CacheChange"),
        "/admin/upstreams": _admin_post("add an upstream", "addUpstream", "NewUpstream"),
        "/admin/upstreams/{name}": {
            "delete": {
                "summary": "remove an upstream",
                "operationId": "removeUpstream",
                "tags": ["admin"],
                "security": ADMIN,
                "parameters": [name_parameter],
                "responses": upstream_change,
            }
        },
        "/admin/upstreams/{name}/{action}": {
            "post": {
                "summary": "drain or undrain an upstream, trip or reset its breaker",
                "operationId": "upstreamAction",
                "tags": ["admin"],
                "security": ADMIN,
                "parameters": [
                    name_parameter,
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["drain", "undrain", "trip", "reset"]},
                    },
                ],
                "responses": upstream_change,
            }
        },
    }
    server = config.server
    return document(
        "quell gateway",
        "An AI gateway in front of OpenAI-compatible engines: bearer API keys with priority "
        "classes, per-key rate limits, a bounded works queue, circuit breakers, a response "
        "cache and an admin API for the knobs playbooks turn. Every error the gateway makes "
        'itself is {"error": {"message", "type", "param", "code"}}; an upstream\'s errors are '
        f"relayed as it sent them. Bodies over {server.max_body_bytes} bytes get 413, headers "
        f"over {server.max_header_bytes} bytes 431 on any route.",
        paths,
        _schemas(),
        {
            "clientKey": bearer_scheme("a client API key; the gateway holds its sha256 only"),
            "adminToken": bearer_scheme(
                "QUELL_GATEWAY_ADMIN_TOKEN, or the token whose sha256 is [admin] token_sha256"
            ),
        },
    )
