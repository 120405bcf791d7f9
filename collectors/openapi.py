"""The daemon's OpenAPI document, served at ``GET /openapi.json`` beside /metrics.

Written out here rather than shared with the bundled servers' documents:
the collectors import nothing from ``inference`` (DESIGN.md), and the
daemon's API is small. Its errors take the same OpenAI shape as theirs,
``{"error": {"message", "type", "code"}}``, so one client-side check reads
them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

ALERTMANAGER_PATH = "/alertmanager"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_ERROR_TEXT = {
    400: "the body is not what the route reads",
    401: "missing or wrong bearer token",
    408: "the body did not arrive within 10 s",
    413: "the body is over 1 MiB",
    503: "the daemon is still starting; retry",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ALERT: dict[str, Any] = {
    "type": "object",
    "required": ["labels", "fingerprint"],
    "properties": {
        "status": {"enum": ["firing", "resolved"]},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "startsAt": {"type": "string"},
        "endsAt": {"type": "string"},
        "fingerprint": {"type": "string", "minLength": 1},
    },
}

_ALERTMANAGER: dict[str, Any] = {
    "post": {
        "summary": "Alertmanager webhook receiver (payload version 4)",
        "description": (
            "Each firing alert whose labels match a [[playbooks.alerts]] entry starts that "
            "playbook once; a repeat of the same alert (fingerprint and startsAt) is a "
            "duplicate. Served only while the webhook secret's variable is set."
        ),
        "operationId": "alertmanagerWebhook",
        "security": [{"webhookSecret": []}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["version", "alerts"],
                        "properties": {
                            "version": {"const": "4"},
                            "status": {"enum": ["firing", "resolved"]},
                            "receiver": {"type": "string"},
                            "groupKey": {"type": "string"},
                            "alerts": {"type": "array", "maxItems": 200, "items": _ALERT},
                        },
                    }
                }
            },
        },
        "responses": {
            "202": _json(
                "accepted: what started, what was a duplicate, what matched no mapping",
                {
                    "type": "object",
                    "required": ["started", "duplicates", "unmatched"],
                    "properties": {
                        "started": {"type": "array", "items": {"type": "object"}},
                        "duplicates": {"type": "array", "items": {"type": "string"}},
                        "unmatched": {"type": "array", "items": {"type": "string"}},
                    },
                },
            ),
            **_errors(400, 401, 408, 413, 503),
        },
    }
}


def _other_post(path: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"a receiver added at {path}",
            "operationId": "post" + path.replace("/", "_"),
            "requestBody": {"content": {"application/json": {"schema": {}}}},
            "responses": {
                "200": _json("accepted", {"type": "object"}),
                "202": _json("accepted", {"type": "object"}),
                **_errors(400, 401, 408, 413, 503),
            },
        }
    }


def daemon_document(post_paths: Iterable[str] = ()) -> dict[str, Any]:
    """The document for a daemon serving /metrics, /status and ``post_paths``."""
    paths: dict[str, Any] = {
        "/metrics": {
            "get": {
                "summary": "Prometheus exposition: collected series as quell_<signal>{target}, "
                "verdicts, and the daemon's own health (quell_daemon_*)",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "the last tick's series",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/status": {
            "get": {
                "summary": "the last tick's picture, as JSON",
                "operationId": "status",
                "responses": {"200": _json("targets, store and timings", {"type": "object"})},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "operationId": "openapi",
                "responses": {"200": _json("the OpenAPI document", {"type": "object"})},
            }
        },
    }
    for path in sorted(post_paths):
        paths[path] = _ALERTMANAGER if path == ALERTMANAGER_PATH else _other_post(path)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quell collect",
            "version": "1",
            "description": (
                "The collector daemon's own endpoint (127.0.0.1 unless [daemon] metrics_host "
                "says otherwise). Reading needs no token; the Alertmanager receiver needs the "
                "webhook's shared secret. Errors are "
                '{"error": {"message", "type", "param", "code"}}.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "webhookSecret": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the value of [playbooks] webhook_secret_env "
                    "(QUELL_WEBHOOK_SECRET by default)",
                }
            },
        },
    }
