"""Run an ASGI app the same way for every bundled server.

The socket is bound here so that port 0 works: the kernel picks a free port
and the real address is printed on one line that a supervisor (or a test)
reads to learn where the server listens.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from typing import Any

from inference.http_server import HttpServer

LISTENING_PREFIX = "listening on "


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def serve(app: Any, sock: socket.socket, name: str, timeout_keep_alive: float = 5.0) -> bool:
    """Serve until SIGINT or SIGTERM, then finish in-flight requests and return.

    False when the app failed to start (its lifespan startup said so).
    """

    async def run() -> bool:
        loop = asyncio.get_running_loop()
        server = HttpServer(app, keep_alive_s=timeout_keep_alive)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.stop)

        def listening() -> None:
            # The app has started: a reader of stdout may send requests as
            # soon as it sees this line.
            print(f"{name} {LISTENING_PREFIX}{url_of(sock)}", flush=True)

        return await server.serve(sock, on_listening=listening)

    try:
        if _uvloop_available():
            import uvloop

            started = uvloop.run(run())
        else:
            started = asyncio.run(run())
    finally:
        sys.stdout.flush()
    return started
