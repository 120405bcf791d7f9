"""The engines behind the gateway: balancing, health checks, drain.

Each upstream has its own keep-alive client (``inference.http_client``). httpx's
pool scans connections times waiters and collapsed past about 60 requests
in flight here (encode/httpcore#1035); aiohttp's client moved about 8,500
req/s alone but cost a third of the gateway's CPU per proxied request.

Balancing is least-busy: the eligible upstream with the fewest requests in
flight, ties broken round-robin so equal replicas share the load evenly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterable

from inference.gateway.circuit_breaker import BreakerState, CircuitBreaker
from inference.gateway.config import UpstreamConfig, UpstreamSettings
from inference.http_client import OriginClient, OriginError

log = logging.getLogger("quell.gateway")

# One failed check can be a hiccup; two in a row is an upstream that is down.
UNHEALTHY_AFTER_FAILED_CHECKS = 2
# Below the engine's 5 s keep-alive, so the gateway drops an idle connection
# before the engine does and never writes a request into a closing socket.
KEEPALIVE_S = 4.0
RETIRE_POLL_S = 0.5


class Upstream:
    def __init__(self, config: UpstreamConfig) -> None:
        s = config.settings
        self.config = config
        self.name = config.name
        # Precomputed for every answer and access-log line.
        self.name_json = json.dumps(config.name)
        self.name_header = (b"x-quell-upstream", config.name.encode())
        self.url = config.url
        self.settings = s
        self.breaker = CircuitBreaker(
            s.breaker_consecutive_failures,
            s.breaker_error_ratio,
            s.breaker_window_s,
            s.breaker_min_requests,
            s.breaker_cooldown_s,
        )
        self.in_flight = 0
        self.healthy = True
        self.drained = False
        self.failed_checks = 0
        self.last_check_error: str | None = None
        self.requests = 0
        self.failures = 0
        self.health_timeout_s = s.connect_timeout_s + max(1.0, s.health_interval_s)
        headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            secret = os.environ.get(config.api_key_env, "").strip()
            if secret:
                headers["Authorization"] = f"Bearer {secret}"
        self.headers = headers
        self.client: OriginClient | None = None
        self.health_task: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Start the client: needs the running loop."""
        s = self.settings
        self.client = OriginClient(
            self.url, s.connect_timeout_s, s.read_timeout_s, KEEPALIVE_S, self.headers
        )

    async def close(self) -> None:
        if self.health_task is not None:
            self.health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.health_task
            self.health_task = None
        if self.client is not None:
            await self.client.close()
            self.client = None

    def eligible(self, now: float) -> bool:
        return self.healthy and not self.drained and self.breaker.available(now)

    def record(self, success: bool, now: float) -> None:
        self.requests += 1
        if not success:
            self.failures += 1
        self.breaker.record(success, now)

    def unavailable_reason(self, now: float) -> str:
        if self.drained:
            return "drained"
        if self.breaker.state is not BreakerState.CLOSED and not self.breaker.available(now):
            return "breaker tripped" if self.breaker.tripped else "breaker open"
        if not self.healthy:
            return "unhealthy"
        return "available"

    def describe(self, now: float) -> dict[str, object]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "drained": self.drained,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "last_check_error": self.last_check_error,
            "breaker": self.breaker.describe(now),
        }


class UpstreamPool:
    def __init__(self, configs: Iterable[UpstreamConfig], defaults: UpstreamSettings) -> None:
        self.defaults = defaults
        self.upstreams: list[Upstream] = [Upstream(c) for c in configs]
        self.by_name = {u.name: u for u in self.upstreams}
        self._next = 0
        self.started = False
        # Upstreams removed at run time, closing once their requests are answered.
        self._retiring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.started = True
        for upstream in self.upstreams:
            self._watch(upstream)

    async def stop(self) -> None:
        for upstream in self.upstreams:
            await upstream.close()
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()
        for task in retiring:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def pick(self, now: float) -> Upstream | None:
        """The least-busy eligible upstream, or None when none may take a request."""
        upstreams = self.upstreams
        count = len(upstreams)
        if not count:
            return None
        start = self._next
        self._next = start + 1 if start + 1 < count else 0
        best: Upstream | None = None
        for offset in range(count):
            index = start + offset
            candidate = upstreams[index - count if index >= count else index]
            if (best is None or candidate.in_flight < best.in_flight) and candidate.eligible(now):
                best = candidate
        if best is not None and not best.breaker.allow(now):
            return None
        return best

    def unavailable_summary(self, now: float) -> str:
        if not self.upstreams:
            return "no upstreams are configured"
        return ", ".join(f"{u.name} {u.unavailable_reason(now)}" for u in self.upstreams)

    def next_probe_in(self, now: float) -> float:
        """Seconds until some open breaker lets a probe through; 1 s when none will by itself."""
        waits = [
            u.breaker.opened_at + u.breaker.cooldown_s - now
            for u in self.upstreams
            if u.breaker.state is BreakerState.OPEN
            and not u.breaker.tripped
            and not u.drained
            and u.healthy
        ]
        return max(0.1, min(waits)) if waits else 1.0

    # -- run-time changes ------------------------------------------------

    def replace(self, configs: Iterable[UpstreamConfig]) -> None:
        """Swap the whole set before start, when the state file says so."""
        assert not self.started, "replace() is for start-up only"
        self.upstreams = [Upstream(c) for c in configs]
        self.by_name = {u.name: u for u in self.upstreams}
        self._next = 0

    def add(self, config: UpstreamConfig) -> Upstream:
        upstream = Upstream(config)
        self.upstreams.append(upstream)
        self.by_name[upstream.name] = upstream
        if self.started:
            self._watch(upstream)
        return upstream

    def remove(self, name: str) -> Upstream:
        upstream = self.by_name.pop(name)
        self.upstreams.remove(upstream)
        self._next = 0
        if upstream.health_task is not None:
            upstream.health_task.cancel()
            upstream.health_task = None
        if self.started:
            task = asyncio.create_task(self._retire(upstream), name=f"retire-{name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return upstream

    async def _retire(self, upstream: Upstream) -> None:
        """Close a removed upstream's connections once its last request is answered."""
        try:
            # Nothing signals "in_flight reached 0"; a removal is rare enough to poll.
            while upstream.in_flight:  # noqa: ASYNC110
                await asyncio.sleep(RETIRE_POLL_S)
        finally:
            await upstream.close()

    # -- active health checks --------------------------------------------

    def _watch(self, upstream: Upstream) -> None:
        upstream.open()
        upstream.health_task = asyncio.create_task(
            self._check_forever(upstream), name=f"health-{upstream.name}"
        )

    async def _check_forever(self, upstream: Upstream) -> None:
        while True:
            await asyncio.sleep(upstream.settings.health_interval_s)
            await self.check(upstream)

    async def check(self, upstream: Upstream) -> None:
        client = upstream.client
        assert client is not None
        error: str | None = None
        try:
            async with asyncio.timeout(upstream.health_timeout_s):
                response = await client.request("GET", upstream.settings.health_path)
                await response.read()
            if response.status >= 400:
                error = f"health check answered {response.status}"
        except TimeoutError:
            error = "health check timed out"
        except OriginError as exc:
            error = f"health check failed: {exc.__class__.__name__}: {exc}"
        if error is None:
            if not upstream.healthy:
                log.warning("upstream %s is healthy again", upstream.name)
            upstream.healthy = True
            upstream.failed_checks = 0
            upstream.last_check_error = None
            return
        upstream.failed_checks += 1
        upstream.last_check_error = error
        if upstream.healthy and upstream.failed_checks >= UNHEALTHY_AFTER_FAILED_CHECKS:
            upstream.healthy = False
            log.warning("upstream %s is unhealthy: %s", upstream.name, error)
