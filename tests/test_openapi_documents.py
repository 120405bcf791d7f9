"""The OpenAPI documents are valid OpenAPI 3.1 and name exactly the routes each server has.

A route added to a server without a line in its document would never be
fuzzed (tests/test_openapi_fuzz.py reads the document); a documented route
the server lacks would mislead every client. Both fail here, without
starting a process.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from collectors.exporter import GET_PATHS
from collectors.openapi import ALERTMANAGER_PATH, daemon_document
from inference.asgi import Router
from inference.engine.app import EngineApp
from inference.engine.config import EngineConfig
from inference.engine.openapi import engine_document
from inference.gateway.admin import UPSTREAMS_PREFIX
from inference.gateway.app import GatewayApp
from inference.gateway.config import GatewayConfig, UpstreamConfig
from inference.gateway.openapi import gateway_document

METHODS = ("get", "post", "put", "patch", "delete")


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def routed(router: Router) -> set[tuple[str, str]]:
    return {(method, path) for path, methods in router.paths().items() for method in methods}


def assert_valid(document: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()
    for result in schema.get_all_operations():
        result.ok()  # raises on an operation schemathesis cannot use


def test_the_engine_documents_every_route_it_serves() -> None:
    for config in (EngineConfig(), EngineConfig(api_key=b"k", admin_token=b"t")):
        document = engine_document(config)
        assert_valid(document)
        assert documented(document) == routed(EngineApp(config).router)
    with_key = engine_document(EngineConfig(api_key=b"k"))["paths"]["/v1/models"]["get"]
    without = engine_document(EngineConfig())["paths"]["/v1/models"]["get"]
    assert with_key["security"] == [{"engineApiKey": []}] and without["security"] == []


def test_the_gateway_documents_every_route_it_serves() -> None:
    config = GatewayConfig(upstreams=(UpstreamConfig("e0", "http://127.0.0.1:9"),))
    document = gateway_document(config)
    assert_valid(document)
    # Upstream actions are the one route with a name in its path; the
    # gateway serves them by prefix rather than from its route table.
    by_name = {
        ("DELETE", f"{UPSTREAMS_PREFIX}{{name}}"),
        ("POST", f"{UPSTREAMS_PREFIX}{{name}}/{{action}}"),
    }
    assert documented(document) == routed(GatewayApp(config).router) | by_name


def test_the_daemon_documents_its_routes_and_the_webhook_only_when_served() -> None:
    plain, with_webhook = daemon_document(), daemon_document([ALERTMANAGER_PATH])
    for document in (plain, with_webhook):
        assert_valid(document)
    assert documented(plain) == {("GET", path) for path in GET_PATHS}
    assert documented(with_webhook) - documented(plain) == {("POST", ALERTMANAGER_PATH)}


def test_every_error_answer_is_documented_in_the_shared_shape() -> None:
    config = GatewayConfig()
    for document in (engine_document(EngineConfig()), gateway_document(config),
                     daemon_document([ALERTMANAGER_PATH])):  # fmt: skip
        error = document["components"]["schemas"]["Error"]["properties"]["error"]
        assert set(error["required"]) == {"message", "type", "code"}
        for item in document["paths"].values():
            for operation in item.values():
                for status, answer in operation["responses"].items():
                    if status.startswith(("4", "5")):
                        schema = answer["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/Error"}, status
