"""The engine's OpenAPI document, served at ``GET /openapi.json``.

It is built from the engine's config, so the model name, the context limit
and whether clients must present a key are the ones this process enforces.
"""

from __future__ import annotations

from typing import Any

from inference.engine.chat_request import ROLES
from inference.engine.config import EngineConfig
from inference.engine.faults import MAX_DEPENDENCY_MS, MAX_SLOTS, MAX_SLOWDOWN
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

ADMIN: list[dict[str, list[str]]] = [{"engineAdminToken": []}]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _schemas(config: EngineConfig) -> dict[str, Schema]:
    text_part: Schema = {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    }
    other_part: Schema = {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"type": "string", "not": {"const": "text"}}},
        "description": "any other part (an image, audio); read as no text",
    }
    message: Schema = {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"enum": sorted(ROLES)},
            "content": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "null"},
                    {"type": "array", "items": {"anyOf": [text_part, other_part]}},
                ]
            },
            "name": {"type": "string"},
        },
    }
    token_limit: Schema = {"type": "integer", "minimum": 1, "maximum": config.max_model_len}
    return {
        "ChatMessage": message,
        "ChatCompletionRequest": {
            "type": "object",
            "required": ["model", "messages"],
            "description": (
                "Unknown fields are ignored, as OpenAI-compatible servers do. The prompt and "
                "the completion together must fit the model's context "
                f"({min(config.max_model_len, config.kv_tokens)} tokens) or the answer is 400 "
                "context_length_exceeded."
            ),
            "properties": {
                "model": {"enum": [config.model], "description": "the one model served"},
                "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
                "max_tokens": token_limit,
                "max_completion_tokens": token_limit,
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "n": {"const": 1},
                "seed": {"type": "integer"},
                "stream": {"type": "boolean"},
                "stream_options": {
                    "type": "object",
                    "properties": {"include_usage": {"type": "boolean"}},
                },
            },
        },
        "Usage": {
            "type": "object",
            "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
        "ChatCompletion": {
            "type": "object",
            "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "chat.completion"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "message", "finish_reason"],
                        "properties": {
                            "index": {"type": "integer"},
                            "message": {
                                "type": "object",
                                "required": ["role", "content"],
                                "properties": {
                                    "role": {"const": "assistant"},
                                    "content": {"type": "string"},
                                },
                            },
                            "finish_reason": {"type": ["string", "null"]},
                        },
                    },
                },
                "usage": _ref("Usage"),
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "object", "created", "owned_by"],
                        "properties": {
                            "id": {"type": "string"},
                            "object": {"const": "model"},
                            "created": {"type": "integer"},
                            "owned_by": {"type": "string"},
                            "max_model_len": {"type": "integer"},
                        },
                    },
                },
            },
        },
        "FaultChanges": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "description": "checked completely before any of it applies",
            "properties": {
                "slowdown": {
                    "type": "number",
                    "minimum": 1,
                    "maximum": MAX_SLOWDOWN,
                    "description": "every step takes this many times longer",
                },
                "stalled": {"type": "boolean", "description": "workers hang"},
                "error_rate": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "description": "share of admitted requests answered 500",
                },
                "dependency_ms": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": MAX_DEPENDENCY_MS,
                    "description": "a slow dependency's wait added to every request",
                },
                "slots": {"type": "integer", "minimum": 1, "maximum": MAX_SLOTS},
            },
        },
        "Knobs": {
            "type": "object",
            "required": ["slowdown", "stalled", "error_rate", "dependency_ms", "slots"],
            "properties": {
                "slowdown": {"type": "number"},
                "stalled": {"type": "boolean"},
                "error_rate": {"type": "number"},
                "dependency_ms": {"type": "number"},
                "slots": {"type": "integer"},
            },
        },
        "KnobChange": {
            "type": "object",
            "required": ["before", "after"],
            "properties": {"before": _ref("Knobs"), "after": _ref("Knobs")},
        },
        "EngineState": {
            "type": "object",
            "required": ["config", "slots", "faults", "running", "waiting", "completed", "pid"],
            "properties": {
                "config": {"type": "object"},
                "slots": {"type": "integer"},
                "faults": {"type": "object"},
                "running": {"type": "integer"},
                "waiting": {"type": "integer"},
                "kv_usage": {"type": "number"},
                "completed": {"type": "integer"},
                "service_rate": {"type": "number"},
                "pid": {"type": "integer"},
            },
        },
    }


def engine_document(config: EngineConfig) -> dict[str, Any]:
    client: list[dict[str, list[str]]] = [{"engineApiKey": []}] if config.api_key else []
    client_errors = (401,) if config.api_key else ()
    admin_errors = (401, 403)
    paths: dict[str, Any] = {
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI chat completion, streaming (server-sent events) or not",
                "operationId": "createChatCompletion",
                "tags": ["openai"],
                "security": client,
                "requestBody": json_body(
                    _ref("ChatCompletionRequest"), example=chat_example(config.model)
                ),
                "responses": {
                    "200": {
                        "description": "the completion, or its chunks when stream is true",
                        "content": {
                            "application/json": {"schema": _ref("ChatCompletion")},
                            "text/event-stream": {"schema": SSE_EVENT},
                        },
                    },
                    **error_responses((400, *client_errors, 404, 413, 500, 503)),
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "the model this engine serves",
                "operationId": "listModels",
                "tags": ["openai"],
                "security": client,
                "responses": {
                    "200": json_response("the model list", _ref("ModelList")),
                    **error_responses(client_errors),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "liveness; a stalled engine still answers, as a hung GPU would",
                "operationId": "health",
                "tags": ["operations"],
                "responses": {
                    "200": json_response(
                        "alive",
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                    )
                },
            }
        },
        "/metrics": {"get": METRICS_OPERATION},
        "/openapi.json": {"get": OPENAPI_OPERATION},
        "/admin/state": {
            "get": {
                "summary": "settings, faults, queue and slots",
                "operationId": "adminState",
                "tags": ["admin"],
                "security": ADMIN,
                "responses": {
                    "200": json_response("the engine's state", _ref("EngineState")),
                    **error_responses(admin_errors),
                },
            }
        },
        "/admin/faults": {
            "post": {
                "summary": "inject faults or resize the slots",
                "operationId": "setFaults",
                "tags": ["admin"],
                "security": ADMIN,
                "requestBody": json_body(_ref("FaultChanges"), example={"slowdown": 3.0}),
                "responses": {
                    "200": json_response("the knobs before and after", _ref("KnobChange")),
                    **error_responses((400, *admin_errors, 413, 422)),
                },
            },
            "delete": {
                "summary": "clear every fault",
                "operationId": "clearFaults",
                "tags": ["admin"],
                "security": ADMIN,
                "responses": {
                    "200": json_response("the knobs before and after", _ref("KnobChange")),
                    **error_responses(admin_errors),
                },
            },
        },
        "/admin/crash": {
            "post": {
                "summary": "exit with status 70 without cleaning up, as a crashing engine would",
                "operationId": "crash",
                "tags": ["admin"],
                "security": ADMIN,
                "responses": {
                    "202": json_response(
                        "the process exits 50 ms after this answer",
                        {
                            "type": "object",
                            "required": ["crashing", "pid"],
                            "properties": {
                                "crashing": {"const": True},
                                "pid": {"type": "integer"},
                            },
                        },
                    ),
                    **error_responses(admin_errors),
                },
            }
        },
    }
    key_note = (
        "Clients present QUELL_ENGINE_API_KEY as a bearer token."
        if config.api_key
        else "Clients need no key (QUELL_ENGINE_API_KEY is not set)."
    )
    return document(
        "quell engine",
        "An OpenAI-compatible inference engine with an LLM server's timing, Prometheus "
        "metrics in vLLM's names, and an admin API for fault injection. "
        f"{key_note} The admin API needs QUELL_ENGINE_ADMIN_TOKEN as a bearer token and "
        "answers 403 when the engine was started without one. Every error is "
        '{"error": {"message", "type", "param", "code"}}.',
        paths,
        _schemas(config),
        {
            "engineApiKey": bearer_scheme("QUELL_ENGINE_API_KEY, when the engine has one"),
            "engineAdminToken": bearer_scheme("QUELL_ENGINE_ADMIN_TOKEN"),
        },
    )
