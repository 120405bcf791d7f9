"""The lab supervisor: one gateway and N engine replicas as child processes.

Every child gets the kernel's parent-death signal, so even a supervisor killed
with -9 leaves no orphans. A child that dies is reported in the state file and
the log, never restarted behind the operator's back. Other `quell` commands
talk to a running supervisor through a Unix socket in the lab directory
(mode 0600, like the state file: it can scale the lab).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from inference.lab.config import LabConfig
from inference.lab.state import ensure_private_dir, write_private, write_state

log = logging.getLogger("quell.lab")

READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0
HEALTH_INTERVAL_S = 1.0
_LISTENING = re.compile(r" listening on (http://\S+)")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the supervisor dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own shutdown path still stops children
    # Ctrl-C in the supervisor's terminal must reach the supervisor alone,
    # which then stops the children in order.
    os.setpgrp()


class LabError(Exception):
    """The lab could not start or change; the message says why."""


@dataclass
class Child:
    name: str
    role: str  # "gateway" or "engine"
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    url: str = ""
    admin_token: str = ""
    index: int = -1
    healthy: bool = False
    exit_status: int | None = None
    stopping: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "url": self.url,
            "admin_token": self.admin_token,
            "pid": self.pid,
            "healthy": self.healthy and self.exit_status is None,
            "exit_status": self.exit_status,
            "log": str(self.log_path),
        }


def _quell(*args: str) -> list[str]:
    return [sys.executable, "-m", "console", *args]


class Supervisor:
    def __init__(self, config: LabConfig, directory: Path) -> None:
        self.config = config
        self.dir = ensure_private_dir(directory)
        self.gateway_token = secrets.token_urlsafe(24)
        self.keys = [
            {"name": k.name, "key": f"sk-quell-{secrets.token_urlsafe(18)}", "priority": k.priority}
            for k in config.keys
        ]
        self.engines: list[Child] = []
        self.gateway: Child | None = None
        self.control_path = self.dir / "control.sock"
        self.state_path = self.dir / "lab.json"
        self._next_index = 0
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._control: asyncio.AbstractServer | None = None
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    # -- children --------------------------------------------------------

    async def _spawn(self, child: Child, argv: list[str], env: dict[str, str]) -> None:
        log_file = child.log_path.open("ab")
        try:
            child.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                preexec_fn=_die_with_parent,
            )
        finally:
            log_file.close()
        child.url = await self._await_listening(child)
        child.healthy = True
        self._tasks.append(asyncio.create_task(self._watch(child)))

    async def _await_listening(self, child: Child) -> str:
        assert child.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        offset = 0
        while time.monotonic() < deadline:
            with child.log_path.open("rb") as handle:
                handle.seek(offset)
                text = handle.read().decode(errors="replace")
            match = _LISTENING.search(text)
            if match:
                return match.group(1)
            if child.process.returncode is not None:
                tail = child.log_path.read_text(errors="replace")[-2000:]
                raise LabError(
                    f"{child.name} exited with status {child.process.returncode}:\n{tail}"
                )
            await asyncio.sleep(0.05)
        raise LabError(
            f"{child.name} did not start within {READY_TIMEOUT_S:g} s; see {child.log_path}"
        )

    async def _watch(self, child: Child) -> None:
        assert child.process is not None
        status = await child.process.wait()
        child.exit_status = status
        child.healthy = False
        if not child.stopping and not self._stopped.is_set():
            # Reported, not restarted: a replica that dies is an incident to
            # see, and a silent restart would hide it.
            log.error("%s (pid %s) exited with status %s", child.name, child.pid, status)
            self.write_state()

    async def _start_engine(self) -> Child:
        index = self._next_index
        self._next_index += 1
        child = Child(
            name=f"engine-{index}",
            role="engine",
            log_path=self.dir / f"engine-{index}.log",
            admin_token=secrets.token_urlsafe(24),
            index=index,
        )
        argv = _quell(
            "engine", "serve", "--port", "0", "--engine-label", str(index),
            *self.config.engine.flags(),
        )  # fmt: skip
        await self._spawn(child, argv, {"QUELL_ENGINE_ADMIN_TOKEN": child.admin_token})
        self.engines.append(child)
        return child

    def _gateway_config(self) -> str:
        g = self.config.gateway
        lines = [
            "# Written by `quell lab up`; keys are stored as SHA-256 digests.",
            "[server]",
            'host = "127.0.0.1"',
            "port = 0",
            f'state_file = "{self.dir / "gateway-state.json"}"',
            f'access_log = "{self.dir / "gateway-access.log"}"',
            "",
            "[queue]",
            f"workers = {g.workers}",
            f"capacity = {g.capacity}",
            f"timeout_s = {g.timeout_s}",
            "",
            "[upstream_defaults]",
            "read_timeout_s = 60.0",
            "health_interval_s = 1.0",
        ]
        for spec, key in zip(self.config.keys, self.keys, strict=True):
            lines += [
                "",
                "[[keys]]",
                f'name = "{spec.name}"',
                f'sha256 = "{hashlib.sha256(key["key"].encode()).hexdigest()}"',
                f'priority = "{spec.priority}"',
            ]
            if spec.requests_per_second:
                lines.append(f"requests_per_second = {spec.requests_per_second}")
                lines.append(f"burst = {spec.burst or max(1, int(spec.requests_per_second))}")
        for engine in self.engines:
            lines += ["", "[[upstreams]]", f'name = "{engine.name}"', f'url = "{engine.url}"']
        return "\n".join(lines) + "\n"

    async def _start_gateway(self) -> None:
        config_path = self.dir / "gateway.toml"
        write_private(config_path, self._gateway_config())
        # A fresh lab must not inherit the previous lab's admin changes.
        (self.dir / "gateway-state.json").unlink(missing_ok=True)
        child = Child(
            name="gateway",
            role="gateway",
            log_path=self.dir / "gateway.log",
            admin_token=self.gateway_token,
        )
        argv = _quell("gateway", "serve", "--config", str(config_path), "--port", "0")
        await self._spawn(child, argv, {"QUELL_GATEWAY_ADMIN_TOKEN": self.gateway_token})
        self.gateway = child

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        for log_name in ("gateway.log", "gateway-access.log"):
            (self.dir / log_name).unlink(missing_ok=True)
        try:
            for _ in range(self.config.replicas):
                await self._start_engine()
            await self._start_gateway()
            await self._wait_healthy()
        except BaseException:
            await self.stop()
            raise
        self._control = await asyncio.start_unix_server(self._serve_control, str(self.control_path))
        self.control_path.chmod(0o600)
        self._tasks.append(asyncio.create_task(self._health_loop()))
        self.write_state()

    async def _healthy(self, child: Child) -> bool:
        assert self._http is not None
        if child.exit_status is not None or not child.url:
            return False
        try:
            async with self._http.get(f"{child.url}/health") as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        children = [*self.engines, *([self.gateway] if self.gateway else [])]
        while time.monotonic() < deadline:
            states = await asyncio.gather(*(self._healthy(c) for c in children))
            if all(states):
                return
            await asyncio.sleep(0.1)
        sick = [c.name for c, ok in zip(children, states, strict=True) if not ok]
        raise LabError(f"not healthy within {READY_TIMEOUT_S:g} s: {', '.join(sick)}")

    async def _health_loop(self) -> None:
        while not self._stopped.is_set():
            await asyncio.sleep(HEALTH_INTERVAL_S)
            children = [*self.engines, *([self.gateway] if self.gateway else [])]
            states = await asyncio.gather(*(self._healthy(c) for c in children))
            if self._stopped.is_set():
                return  # children going down on purpose are no news
            changed = False
            for child, ok in zip(children, states, strict=True):
                if ok != child.healthy:
                    log.warning("%s is %s", child.name, "healthy" if ok else "not answering")
                    child.healthy = ok
                    changed = True
            if changed:
                self.write_state()

    # -- state -----------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        gateway = self.gateway
        engine = self.config.engine
        return {
            "version": 1,
            "status": "stopping" if self._stopped.is_set() else "ready",
            "supervisor_pid": os.getpid(),
            "lab_dir": str(self.dir),
            "control_socket": str(self.control_path),
            "gateway": {
                "url": gateway.url if gateway else "",
                "admin_token": self.gateway_token,
                "pid": gateway.pid if gateway else None,
                "healthy": bool(gateway and gateway.healthy and gateway.exit_status is None),
                "access_log": str(self.dir / "gateway-access.log"),
                "log": str(self.dir / "gateway.log"),
                "config": str(self.dir / "gateway.toml"),
                "workers": self.config.gateway.workers,
                "queue_capacity": self.config.gateway.capacity,
            },
            "keys": self.keys,
            "engines": [e.describe() for e in self.engines],
            "engine_settings": {
                "slots": engine.slots,
                "max_waiting": engine.max_waiting,
                "kv_tokens": engine.kv_tokens,
                "decode_step_ms": engine.decode_step_ms,
                "decode_ms_per_seq": engine.decode_ms_per_seq,
                "prefill_ms_per_token": engine.prefill_ms_per_token,
            },
        }

    def write_state(self) -> None:
        write_state(self.describe(), self.state_path)

    # -- scaling ---------------------------------------------------------

    async def _gateway_admin(self, method: str, path: str, body: object | None = None) -> None:
        assert self._http is not None and self.gateway is not None
        headers = {"Authorization": f"Bearer {self.gateway_token}"}
        async with self._http.request(
            method, f"{self.gateway.url}{path}", json=body, headers=headers
        ) as response:
            if response.status >= 300:
                text = await response.text()
                raise LabError(f"gateway refused {method} {path}: {response.status} {text}")

    async def scale(self, replicas: int) -> dict[str, Any]:
        if not 1 <= replicas <= 32:
            raise LabError("replicas must be from 1 to 32")
        async with self._lock:
            live = [e for e in self.engines if e.exit_status is None]
            before = len(live)
            while len(live) < replicas:
                engine = await self._start_engine()
                await self._gateway_admin(
                    "POST", "/admin/upstreams", {"name": engine.name, "url": engine.url}
                )
                live.append(engine)
                log.warning("added %s at %s", engine.name, engine.url)
            while len(live) > replicas:
                engine = live.pop()
                # Drain first so requests already sent to it finish there.
                with contextlib.suppress(LabError):
                    await self._gateway_admin("POST", f"/admin/upstreams/{engine.name}/drain")
                    await asyncio.sleep(0.5)
                    await self._gateway_admin("DELETE", f"/admin/upstreams/{engine.name}")
                await self._stop_child(engine)
                self.engines.remove(engine)
                log.warning("removed %s", engine.name)
            self.write_state()
        return {"before": before, "after": replicas}

    # -- control socket --------------------------------------------------

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                request = json.loads(line)
                op = request["op"]
                if op == "status":
                    answer: dict[str, Any] = {"ok": True, "state": self.describe()}
                elif op == "scale":
                    answer = {"ok": True, **(await self.scale(int(request["replicas"])))}
                elif op == "down":
                    answer = {"ok": True}
                    self._stopped.set()
                else:
                    answer = {"ok": False, "error": f"unknown op {op!r}"}
            except LabError as error:
                answer = {"ok": False, "error": str(error)}
            except (ValueError, KeyError, TypeError) as error:
                answer = {"ok": False, "error": f"bad request: {error}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    # -- stopping --------------------------------------------------------

    async def _stop_child(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        child.stopping = True
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        except TimeoutError:
            # A child that hangs on SIGTERM must not outlive the lab.
            log.warning("%s ignored SIGTERM for %g s; killing it", child.name, STOP_GRACE_S)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        if self._control is not None:
            self._control.close()
        # The gateway first, so no new work reaches the engines while they stop.
        if self.gateway is not None:
            await self._stop_child(self.gateway)
        await asyncio.gather(*(self._stop_child(e) for e in self.engines))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        self.control_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)


async def control(path: Path, request: dict[str, Any], wait_s: float = 60.0) -> dict[str, Any]:
    """Send one request to a running supervisor and return its answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 5)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), wait_s)
    finally:
        writer.close()
    answer: dict[str, Any] = json.loads(line)
    return answer
