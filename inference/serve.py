"""Run an ASGI app on uvicorn the same way for every bundled server.

The socket is bound here rather than by uvicorn so that port 0 works: the
kernel picks a free port and the real address is printed on one line that a
supervisor (or a test) reads to learn where the server listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from typing import Any

import uvicorn

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


def serve(app: Any, sock: socket.socket, name: str, timeout_keep_alive: int = 5) -> None:
    """Serve until SIGINT or SIGTERM, then finish in-flight requests and return."""
    config = uvicorn.Config(
        app,
        loop="uvloop" if _uvloop_available() else "asyncio",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        # Nothing here sits behind a trusted proxy; the middleware would only
        # cost time on every request.
        proxy_headers=False,
        timeout_keep_alive=timeout_keep_alive,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        # uvicorn's startup completes before the line is printed, so a reader
        # of stdout may send requests as soon as it sees it.
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        # uvicorn offers no event for "started", only the flag.
        while not server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if server.started:
            print(f"{name} {LISTENING_PREFIX}{url_of(sock)}", flush=True)
        await serving

    # uvicorn drains in-flight requests on SIGTERM, restores the handler it
    # found and raises the signal again. With the default handler that kills
    # the process after a clean drain, so a supervisor would see "killed by
    # SIGTERM". A no-op handler here lets the drain end in exit status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    with contextlib.suppress(KeyboardInterrupt):
        if _uvloop_available():
            import uvloop

            uvloop.run(run())
        else:
            asyncio.run(run())
    sys.stdout.flush()
