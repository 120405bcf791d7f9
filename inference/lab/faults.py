"""Timed fault injection for scenarios: engine admin calls, crashes, a CPU hog."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from inference.lab.scenario import FaultStep

_HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


@dataclass(frozen=True)
class EngineHandle:
    index: int
    url: str
    admin_token: str


@dataclass(frozen=True)
class GatewayHandle:
    url: str
    admin_token: str


class FaultInjector:
    """Applies a scenario's fault steps at their times and records what happened.

    Gateway queue settings a scenario changes are put back when it ends: a
    rehearsal must not leave the lab misconfigured for the next one.
    """

    def __init__(self, engines: list[EngineHandle], gateway: GatewayHandle | None = None) -> None:
        self.engines = engines
        self.gateway = gateway
        self.applied: list[dict[str, Any]] = []
        self._hogs: list[asyncio.subprocess.Process] = []
        self._gateway_before: dict[str, Any] = {}

    def _targets(self, step: FaultStep) -> list[EngineHandle]:
        if step.replica == "all":
            return list(self.engines)
        return [e for e in self.engines if e.index == step.replica]

    async def _call(
        self, session: aiohttp.ClientSession, engine: EngineHandle, step: FaultStep
    ) -> str:
        headers = {"Authorization": f"Bearer {engine.admin_token}"}
        if step.clear:
            method, path, body = "DELETE", "/admin/faults", None
        elif step.crash:
            method, path, body = "POST", "/admin/crash", None
        else:
            method, path, body = "POST", "/admin/faults", step.settings
        try:
            async with session.request(
                method, f"{engine.url}{path}", json=body, headers=headers
            ) as response:
                if response.status >= 300:
                    return f"engine-{engine.index}: {response.status} {await response.text()}"
                return f"engine-{engine.index}: ok"
        except (aiohttp.ClientError, TimeoutError) as error:
            return f"engine-{engine.index}: {type(error).__name__}"

    async def _gateway_queue(self, settings: dict[str, Any]) -> str:
        if self.gateway is None:
            return "no gateway to change"
        headers = {"Authorization": f"Bearer {self.gateway.admin_token}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.post(
                    f"{self.gateway.url}/admin/queue", json=settings, headers=headers
                ) as response,
            ):
                if response.status >= 300:
                    return f"gateway: {response.status} {await response.text()}"
                answer = await response.json()
        except (aiohttp.ClientError, TimeoutError) as error:
            return f"gateway: {type(error).__name__}"
        before = answer.get("before") or {}
        for key in settings:
            if key in before:
                self._gateway_before.setdefault(key, before[key])
        return "gateway: ok"

    async def apply(self, step: FaultStep, elapsed: float) -> None:
        record: dict[str, Any] = {"at_s": round(elapsed, 3), "what": step.describe()}
        if step.gateway_queue:
            record["result"] = [await self._gateway_queue(step.gateway_queue)]
        elif step.cpu_hog_workers:
            code = _HOG.format(seconds=step.cpu_hog_seconds)
            for _ in range(step.cpu_hog_workers):
                self._hogs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-c", code, stdin=asyncio.subprocess.DEVNULL
                    )
                )
            record["result"] = [f"{step.cpu_hog_workers} hog process(es) started"]
        else:
            targets = self._targets(step)
            if not targets:
                known = ", ".join(str(e.index) for e in self.engines) or "none"
                record["result"] = [f"no replica {step.replica} (replicas: {known})"]
            else:
                timeout = aiohttp.ClientTimeout(total=5)
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    record["result"] = list(
                        await asyncio.gather(*(self._call(session, e, step) for e in targets))
                    )
        self.applied.append(record)

    async def run(self, steps: tuple[FaultStep, ...], started: float) -> None:
        for step in steps:
            delay = started + step.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.apply(step, time.monotonic() - started)

    async def cleanup(self) -> None:
        if self._gateway_before:
            await self._gateway_queue(dict(self._gateway_before))
            self._gateway_before.clear()
        for hog in self._hogs:
            if hog.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    hog.kill()
                await hog.wait()
