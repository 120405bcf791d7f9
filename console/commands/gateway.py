"""`quell gateway serve` and `quell gateway hash-key`: the bundled AI gateway."""

from __future__ import annotations

import argparse
import getpass
import hashlib
import sys
from pathlib import Path
from typing import Any

from console.argtypes import PORT
from console.errors import UsageError

ADMIN_TOKEN_ENV = "QUELL_GATEWAY_ADMIN_TOKEN"  # noqa: S105 (a variable name, not a secret)


def register(subparsers: Any) -> None:
    gateway = subparsers.add_parser("gateway", help="the bundled AI gateway")
    actions = gateway.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve the gateway in front of one or more engines",
        description=(
            "Serve an OpenAI-compatible gateway: bearer API keys with priority classes, "
            "per-key rate limits, a bounded works queue in front of a worker pool (503 "
            "'works queue_full' with Retry-After when full), least-busy balancing over "
            "upstream engines with health checks and circuit breakers, an optional response "
            "cache, a JSON access log, Prometheus /metrics, and an admin API under /admin/. "
            f"The admin token comes from {ADMIN_TOKEN_ENV} or [admin] token_sha256 in the "
            "config, never from a flag (other users can read the process list)."
        ),
    )
    serve.add_argument(
        "--config", type=Path, required=True, help="the gateway's TOML configuration file"
    )
    serve.add_argument("--host", help="address to bind; overrides [server] host")
    serve.add_argument(
        "--port", type=PORT, help="port to bind, 0 for a free one; overrides [server] port"
    )
    serve.set_defaults(handler=serve_gateway)
    hash_key = actions.add_parser(
        "hash-key",
        help="print the sha256 of an API key read on stdin, for a config file",
        description=(
            "Read one API key on stdin (prompted without echo on a terminal) and print its "
            "sha256 in hex: the value for [[keys]] sha256 or [admin] token_sha256. The "
            "config holds only this digest, never the key."
        ),
    )
    hash_key.set_defaults(handler=hash_api_key)


def hash_api_key(args: argparse.Namespace) -> int:
    # A terminal gets a prompt without echo, so the key stays off the screen.
    raw = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    key = raw.strip()
    if not key:
        raise UsageError(
            'no key on stdin; pipe one in, e.g. `printf %s "$KEY" | quell gateway hash-key`'
        )
    print(hashlib.sha256(key.encode()).hexdigest())
    return 0


def serve_gateway(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from inference.gateway.app import GatewayApp
    from inference.gateway.config import ConfigError, load_config
    from inference.logs import configure_logging
    from inference.serve import bind_socket, serve

    configure_logging()
    try:
        config = load_config(args.config)
        server = config.server
        config = replace(
            config,
            server=replace(
                server,
                host=args.host if args.host is not None else server.host,
                port=args.port if args.port is not None else server.port,
            ),
        )
        app = GatewayApp(config)
    except ConfigError as error:
        raise UsageError(str(error)) from None
    host, port = config.server.host, config.server.port
    try:
        sock = bind_socket(host, port)
    except OSError as error:
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return 0 if serve(app, sock, "quell gateway") else 1
