"""Actions: the knobs a playbook turns, each able to say what it would change first.

Most actions set *knobs*: named values on a system (the gateway's worker
count, a key's rate limit, the lab's replica count). Such an action reads
the knobs it touches, works out the values it wants, and writes only those
that differ. Because every knob is written by its action's ``write`` from a
plain value, the same code applies a change, undoes it from the recorded
before value, and puts the baseline back: there is one way to set a knob.

The other actions (``exec``, ``http``, ``notify``) do something rather than
set something; they plan as "would run ..." and are undone only when the
playbook gives them an ``undo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx

from collectors.alerts import Notification, Route, deliver

PRIORITIES = ("critical", "standard", "sheddable")
LIMIT_FIELDS = ("requests_per_second", "burst", "tokens_per_minute")
QUEUE_FIELDS = ("workers", "capacity", "timeout_s", "max_tokens_cap")
CACHE_FIELDS = ("enabled", "ttl_s", "max_entries")
FAULT_FIELDS = ("slowdown", "stalled", "error_rate", "dependency_ms")
FAULT_DEFAULTS: dict[str, Any] = {
    "slowdown": 1.0,
    "stalled": False,
    "error_rate": 0.0,
    "dependency_ms": 0.0,
}
MAX_OUTPUT = 4000
PROGRAM = re.compile(r"^[\w./+-]+$")


class ActionError(RuntimeError):
    """An action the system refused or could not reach; the text says which and why."""


@dataclass
class Endpoint:
    url: str
    token: str = field(repr=False, default="")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@dataclass
class Context:
    """Where the actions of one run reach: the gateway, the engines, the lab."""

    target: str = "gateway"
    gateway: Endpoint | None = None
    engines: dict[str, Endpoint] = field(default_factory=dict)
    lab_control: Path | None = None
    routes: Sequence[Route] = ()
    http: httpx.AsyncClient | None = None
    # The run's journal, for the one action that reads history (baseline.restore).
    journal: Any = None

    def client(self) -> httpx.AsyncClient:
        if self.http is None:
            self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0), trust_env=False)
        return self.http

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None

    async def call(
        self, endpoint: Endpoint, method: str, path: str, body: object | None = None, what: str = ""
    ) -> Any:
        url = endpoint.url.rstrip("/") + path
        try:
            response = await self.client().request(
                method, url, json=body, headers=endpoint.headers()
            )
        except httpx.HTTPError as error:
            raise ActionError(f"{what or url}: {type(error).__name__}: {error}") from None
        if response.status_code >= 300:
            try:
                detail = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                detail = response.text[:300]
            raise ActionError(
                f"{what or url}: {method} {path} answered {response.status_code}: {detail}"
            )
        return response.json() if response.content else {}

    async def gateway_admin(self, method: str, path: str, body: object | None = None) -> Any:
        if self.gateway is None:
            raise ActionError("no gateway to act on: start the lab or give --gateway")
        return await self.call(self.gateway, method, path, body, "the gateway")

    async def engine_admin(
        self, name: str, method: str, path: str, body: object | None = None
    ) -> Any:
        endpoint = self.engines.get(name)
        if endpoint is None:
            raise ActionError(f"no engine {name!r}; known: {', '.join(self.engines) or 'none'}")
        return await self.call(endpoint, method, path, body, name)

    async def lab(self, request: dict[str, Any]) -> dict[str, Any]:
        from inference.lab.supervisor import control

        if self.lab_control is None:
            raise ActionError("no lab to scale: lab.scale acts on a running `quell lab up`")
        try:
            answer = await control(self.lab_control, request, wait_s=120.0)
        except (OSError, TimeoutError, ValueError) as error:
            raise ActionError(f"the lab did not answer: {error}") from None
        if not answer.get("ok"):
            raise ActionError(f"the lab refused: {answer.get('error')}")
        return answer


def lab_engines(state: Mapping[str, Any]) -> dict[str, Endpoint]:
    """The live engines of a lab state (``quell lab status --json``) by name."""
    return {
        e["name"]: Endpoint(e["url"], e["admin_token"])
        for e in state["engines"]
        if e.get("exit_status") is None
    }


def lab_context(state: Mapping[str, Any], target: str = "gateway") -> Context:
    """Where actions reach in a running lab: its gateway, engines and supervisor."""
    gateway = state["gateway"]
    return Context(
        target=target,
        gateway=Endpoint(gateway["url"], gateway["admin_token"]),
        engines=lab_engines(state),
        lab_control=Path(state["control_socket"]),
    )


@dataclass(frozen=True)
class Change:
    """One knob: its value before, the value wanted, and whether they already agree."""

    action: str
    knob: str
    before: Any
    after: Any

    @property
    def unchanged(self) -> bool:
        return _same(self.before, self.after)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "knob": self.knob,
            "before": self.before,
            "after": self.after,
            "unchanged": self.unchanged,
        }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return bool(a == b)


@dataclass
class Outcome:
    """What applying an action did."""

    changes: list[Change] = field(default_factory=list)
    output: str = ""


def _number(args: Mapping[str, Any], name: str, low: float, high: float) -> None:
    value = args.get(name)
    if value is None or isinstance(value, str):
        return  # absent, or a template checked when it is filled
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")


def _known(args: Mapping[str, Any], known: Sequence[str]) -> None:
    for name in args:
        if name not in known:
            raise ValueError(f"unknown argument {name!r}; expected {', '.join(known)}")


class Action:
    """Base of every action; ``args`` are already rendered (no templates left)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    arguments: ClassVar[tuple[str, ...]] = ()
    sets_knobs: ClassVar[bool] = True

    def __init__(self, args: Mapping[str, Any]) -> None:
        self.check(args)
        self.args = dict(args)

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        """Refuse unknown or out-of-range arguments; templates pass until filled."""
        _known(args, cls.arguments)

    async def read(self, ctx: Context) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    async def current(cls, ctx: Context) -> dict[str, Any]:
        """Every knob of this kind as it is now, whatever an instance's arguments."""
        bare = cls.__new__(cls)
        bare.args = {}
        knobs = await bare.read(ctx)
        knobs.pop("_state", None)
        return knobs

    async def desired(self, ctx: Context, current: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        raise NotImplementedError

    async def plan(self, ctx: Context) -> list[Change]:
        current = await self.read(ctx)
        wanted = await self.desired(ctx, current)
        return [Change(self.name, k, current.get(k), v) for k, v in wanted.items()]

    def describe(self) -> str:
        return f"{self.name} {self.args}"

    async def apply(self, ctx: Context) -> Outcome:
        planned = await self.plan(ctx)
        todo = {c.knob: c.after for c in planned if not c.unchanged}
        if todo:
            await self.write(ctx, todo)
        after = await self.read(ctx)
        return Outcome(
            [Change(self.name, c.knob, c.before, after.get(c.knob, c.after)) for c in planned]
        )


# -- the gateway -------------------------------------------------------------


class GatewayQueue(Action):
    name = "gateway.queue"
    summary = "set the worker pool, queue capacity, queue timeout or max_tokens cap"
    arguments = (*QUEUE_FIELDS, "workers_factor", "capacity_factor")

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        if not args:
            raise ValueError(f"give at least one of {', '.join(cls.arguments)}")
        _number(args, "workers", 1, 100_000)
        _number(args, "capacity", 0, 10_000_000)
        _number(args, "timeout_s", 0.001, 86_400)
        _number(args, "max_tokens_cap", 0, 10_000_000)
        _number(args, "workers_factor", 0.01, 100)
        _number(args, "capacity_factor", 0.01, 100)
        for field_name in ("workers", "capacity"):
            if field_name in args and f"{field_name}_factor" in args:
                raise ValueError(f"give {field_name} or {field_name}_factor, not both")

    async def read(self, ctx: Context) -> dict[str, Any]:
        state = await ctx.gateway_admin("GET", "/admin/state")
        return {k: state["queue"][k] for k in QUEUE_FIELDS}

    async def desired(self, ctx: Context, current: Mapping[str, Any]) -> dict[str, Any]:
        wanted = {k: self.args[k] for k in QUEUE_FIELDS if k in self.args}
        for field_name in ("workers", "capacity"):
            factor = self.args.get(f"{field_name}_factor")
            if factor is not None:
                wanted[field_name] = max(1, round(current[field_name] * float(factor)))
        for field_name in ("workers", "capacity", "max_tokens_cap"):
            if field_name in wanted:
                wanted[field_name] = int(wanted[field_name])
        return wanted

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        await ctx.gateway_admin("POST", "/admin/queue", dict(values))


class GatewayLimits(Action):
    """Rate limits: the defaults, one key, or every key of some priority classes.

    Per-key knobs hold the key's *own* limit (None when it follows the
    defaults), so undoing a change hands the key back to the defaults
    rather than freezing the value it had then.
    """

    name = "gateway.limits"
    summary = "set request and token rate limits (defaults, a key, or keys by class)"
    arguments = ("key", "classes", *LIMIT_FIELDS, "factor", "total_requests_per_second")

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        values = [k for k in (*LIMIT_FIELDS, "factor", "total_requests_per_second") if k in args]
        if not values:
            raise ValueError(
                "give a limit: requests_per_second, burst, tokens_per_minute, factor "
                "or total_requests_per_second"
            )
        if "key" in args and "classes" in args:
            raise ValueError("give key or classes, not both")
        if "factor" in args and len(values) > 1:
            raise ValueError("give a factor or limit values, not both")
        if "total_requests_per_second" in args and "requests_per_second" in args:
            raise ValueError("give requests_per_second or total_requests_per_second, not both")
        if "total_requests_per_second" in args and "key" not in args and "classes" not in args:
            raise ValueError("total_requests_per_second is shared by keys: give classes or key")
        classes = args.get("classes")
        if isinstance(classes, list) and any(c not in PRIORITIES for c in classes):
            raise ValueError(f"classes must be drawn from {', '.join(PRIORITIES)}")
        _number(args, "requests_per_second", 0, 1e9)
        _number(args, "total_requests_per_second", 0, 1e9)
        _number(args, "burst", 0, 1e9)
        _number(args, "tokens_per_minute", 0, 1e12)
        _number(args, "factor", 0.0001, 1000)

    def _keys(self, state: Mapping[str, Any]) -> list[str]:
        keys: dict[str, Any] = state["keys"]
        if "key" in self.args:
            if self.args["key"] not in keys:
                raise ActionError(f"no key {self.args['key']!r}; known: {', '.join(keys)}")
            return [str(self.args["key"])]
        classes = self.args.get("classes")
        if classes is None:
            return []
        return sorted(name for name, key in keys.items() if key["priority"] in classes)

    async def read(self, ctx: Context) -> dict[str, Any]:
        state = await ctx.gateway_admin("GET", "/admin/state")
        knobs = {f"defaults.{k}": v for k, v in state["limits"].items() if k in LIMIT_FIELDS}
        for name, key in state["keys"].items():
            for k in LIMIT_FIELDS:
                knobs[f"keys.{name}.{k}"] = key["own_limits"].get(k)
        knobs["_state"] = state
        return knobs

    async def plan(self, ctx: Context) -> list[Change]:
        current = await self.read(ctx)
        wanted = await self.desired(ctx, current)
        current.pop("_state", None)
        return [Change(self.name, k, current.get(k), v) for k, v in wanted.items()]

    async def desired(self, ctx: Context, current: Mapping[str, Any]) -> dict[str, Any]:
        state = current["_state"]
        keys = self._keys(state)
        values = {k: self.args[k] for k in LIMIT_FIELDS if k in self.args}
        if "total_requests_per_second" in self.args:
            share = float(self.args["total_requests_per_second"]) / max(1, len(keys))
            values["requests_per_second"] = round(max(share, 0.001), 3)
        factor = self.args.get("factor")
        wanted: dict[str, Any] = {}
        if not keys:
            for k in LIMIT_FIELDS:
                effective = current[f"defaults.{k}"]
                if factor is not None:
                    wanted[f"defaults.{k}"] = _scaled(k, effective, float(factor))
                elif k in values:
                    wanted[f"defaults.{k}"] = values[k]
            if factor is None:
                return wanted
        for name in keys:
            effective = state["keys"][name]["limits"]
            for k in LIMIT_FIELDS:
                if factor is not None:
                    own = current[f"keys.{name}.{k}"]
                    if own is not None or "key" in self.args or "classes" in self.args:
                        wanted[f"keys.{name}.{k}"] = _scaled(k, effective[k], float(factor))
                elif k in values:
                    wanted[f"keys.{name}.{k}"] = values[k]
        return wanted

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        defaults: dict[str, Any] = {}
        per_key: dict[str, dict[str, Any]] = {}
        for knob, value in values.items():
            parts = knob.split(".")
            if parts[0] == "defaults" and len(parts) == 2:
                defaults[parts[1]] = value
            elif parts[0] == "keys" and len(parts) >= 3:
                per_key.setdefault(".".join(parts[1:-1]), {})[parts[-1]] = value
            else:
                raise ActionError(f"gateway.limits has no knob {knob!r}")
        if defaults:
            await ctx.gateway_admin("POST", "/admin/limits", defaults)
        for key, limits in per_key.items():
            await ctx.gateway_admin("POST", "/admin/limits", {"key": key, **limits})


def _scaled(field_name: str, value: Any, factor: float) -> Any:
    """A limit times ``factor``; 0 (unlimited) stays unlimited, a limit never becomes 0."""
    if not value:
        return value
    if field_name == "requests_per_second":
        return round(float(value) * factor, 3) or 0.001
    return max(1, round(float(value) * factor))


class GatewayShed(Action):
    name = "gateway.shed"
    summary = "reject priority classes outright (classes), or add/remove one"
    arguments = ("classes", "add", "remove")

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        if len(args) != 1:
            raise ValueError("give exactly one of classes, add, remove")
        for value in args.values():
            if isinstance(value, str) and "{{" in value:
                continue
            items = value if isinstance(value, list) else [value]
            if any(i not in PRIORITIES for i in items):
                raise ValueError(f"classes must be drawn from {', '.join(PRIORITIES)}")

    async def read(self, ctx: Context) -> dict[str, Any]:
        state = await ctx.gateway_admin("GET", "/admin/state")
        return {"classes": list(state["shed"])}

    async def desired(self, ctx: Context, current: Mapping[str, Any]) -> dict[str, Any]:
        classes = set(current["classes"])
        if "classes" in self.args:
            value = self.args["classes"]
            classes = set(value if isinstance(value, list) else [value])
        if "add" in self.args:
            value = self.args["add"]
            classes |= set(value if isinstance(value, list) else [value])
        if "remove" in self.args:
            value = self.args["remove"]
            classes -= set(value if isinstance(value, list) else [value])
        return {"classes": [p for p in PRIORITIES if p in classes]}

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        await ctx.gateway_admin("POST", "/admin/shed", {"classes": list(values["classes"])})


class GatewayCache(Action):
    name = "gateway.cache"
    summary = "turn the response cache on or off, set its TTL and size"
    arguments = CACHE_FIELDS

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        if not args:
            raise ValueError(f"give at least one of {', '.join(CACHE_FIELDS)}")
        _number(args, "ttl_s", 0.001, 86_400 * 7)
        _number(args, "max_entries", 1, 10_000_000)

    async def read(self, ctx: Context) -> dict[str, Any]:
        state = await ctx.gateway_admin("GET", "/admin/state")
        return {k: state["cache"][k] for k in CACHE_FIELDS}

    async def desired(self, ctx: Context, current: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.args[k] for k in CACHE_FIELDS if k in self.args}

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        await ctx.gateway_admin("POST", "/admin/cache", dict(values))


class GatewayUpstream(Action):
    """Drain or trip one upstream; knobs are ``NAME.drained`` and ``NAME.tripped``."""

    name = "gateway.upstream"
    summary = "drain or undrain an upstream, trip or reset its circuit breaker"
    arguments = ("upstream", "drained", "tripped")

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        if "upstream" not in args:
            raise ValueError("upstream is required (the upstream's name)")
        if "drained" not in args and "tripped" not in args:
            raise ValueError("give drained: true|false or tripped: true|false")
        for flag_name in ("drained", "tripped"):
            value = args.get(flag_name)
            if value is not None and not isinstance(value, bool | str):
                raise ValueError(f"{flag_name} must be true or false")

    async def read(self, ctx: Context) -> dict[str, Any]:
        state = await ctx.gateway_admin("GET", "/admin/state")
        knobs: dict[str, Any] = {}
        for name, upstream in state["upstreams"].items():
            knobs[f"{name}.drained"] = upstream["drained"]
            knobs[f"{name}.tripped"] = upstream["breaker"]["tripped"]
        return knobs

    async def desired(self, ctx: Context, current: Mapping[str, Any]) -> dict[str, Any]:
        upstream = str(self.args["upstream"])
        if f"{upstream}.drained" not in current:
            known = sorted({k.rsplit(".", 1)[0] for k in current})
            raise ActionError(f"no upstream {upstream!r}; known: {', '.join(known)}")
        return {
            f"{upstream}.{flag_name}": bool(self.args[flag_name])
            for flag_name in ("drained", "tripped")
            if flag_name in self.args
        }

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        for knob, value in values.items():
            upstream, _, flag_name = knob.rpartition(".")
            verb = {
                ("drained", True): "drain",
                ("drained", False): "undrain",
                ("tripped", True): "trip",
                ("tripped", False): "reset",
            }.get((flag_name, bool(value)))
            if verb is None:
                raise ActionError(f"gateway.upstream has no knob {knob!r}")
            await ctx.gateway_admin("POST", f"/admin/upstreams/{upstream}/{verb}")


# -- the lab and the engines -------------------------------------------------


class LabScale(Action):
    name = "lab.scale"
    summary = "set the number of engine replicas in the lab"
    arguments = ("replicas", "add")

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        if ("replicas" in args) == ("add" in args):
            raise ValueError("give replicas (how many) or add (how many more), one of them")
        _number(args, "replicas", 1, 32)
        _number(args, "add", -31, 31)

    async def read(self, ctx: Context) -> dict[str, Any]:
        answer = await ctx.lab({"op": "status"})
        engines = answer["state"]["engines"]
        return {"replicas": sum(1 for e in engines if e.get("exit_status") is None)}

    async def desired(self, ctx: Context, current: Mapping[str, Any]) -> dict[str, Any]:
        if "replicas" in self.args:
            wanted = int(self.args["replicas"])
        else:
            wanted = int(current["replicas"]) + int(self.args["add"])
        return {"replicas": max(1, min(32, wanted))}

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        await ctx.lab({"op": "scale", "replicas": int(values["replicas"])})
        # The supervisor's new engines have new URLs and tokens; later steps
        # of the same run need them.
        answer = await ctx.lab({"op": "status"})
        ctx.engines = lab_engines(answer["state"])


class EngineFault(Action):
    """Drills only: set or clear an engine's faults; knobs are ``ENGINE.FAULT``."""

    name = "engine.fault"
    summary = "inject or clear an engine fault (slowdown, stalled, error_rate, dependency_ms)"
    arguments = ("engine", "set", "clear")

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        if "engine" not in args:
            raise ValueError("engine is required (a name, or 'all')")
        if ("set" in args) == bool(args.get("clear")):
            raise ValueError("give set: {fault: value} or clear: true, one of them")
        settings = args.get("set")
        if settings is not None:
            if not isinstance(settings, dict) or not settings:
                raise ValueError("set must map fault names to values")
            _known(settings, FAULT_FIELDS)

    def _engines(self, ctx: Context) -> list[str]:
        engine = str(self.args.get("engine", "all"))
        if engine == "all":
            return sorted(ctx.engines)
        if engine not in ctx.engines:
            raise ActionError(f"no engine {engine!r}; known: {', '.join(ctx.engines) or 'none'}")
        return [engine]

    async def read(self, ctx: Context) -> dict[str, Any]:
        knobs: dict[str, Any] = {}
        for engine in self._engines(ctx):
            state = await ctx.engine_admin(engine, "GET", "/admin/state")
            for k in FAULT_FIELDS:
                knobs[f"{engine}.{k}"] = state["faults"][k]
        return knobs

    async def desired(self, ctx: Context, current: Mapping[str, Any]) -> dict[str, Any]:
        settings = self.args.get("set") or FAULT_DEFAULTS
        return {f"{engine}.{k}": v for engine in self._engines(ctx) for k, v in settings.items()}

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        per_engine: dict[str, dict[str, Any]] = {}
        for knob, value in values.items():
            engine, _, fault = knob.rpartition(".")
            per_engine.setdefault(engine, {})[fault] = value
        for engine, settings in per_engine.items():
            await ctx.engine_admin(engine, "POST", "/admin/faults", settings)


# -- doing rather than setting -----------------------------------------------


class Exec(Action):
    """A program run with an argument list: no shell, so no argument can inject one."""

    name = "exec"
    summary = "run a command (an argument list, no shell) with a timeout"
    arguments = ("argv", "timeout_s", "undo")
    sets_knobs = False

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        for key in ("argv", "undo"):
            if key not in args:
                if key == "argv":
                    raise ValueError("argv is required: the program and its arguments, a list")
                continue
            argv = args[key]
            if not isinstance(argv, list) or not argv:
                raise ValueError(f"{key} must be a non-empty list: the program, then arguments")
            if not all(isinstance(a, str | int | float) for a in argv):
                raise ValueError(f"{key} holds text and numbers only")
            program = str(argv[0])
            if "{{" not in program and not PROGRAM.match(program):
                raise ValueError(f"{key}[0] must be a program name or path, got {program!r}")
        _number(args, "timeout_s", 0.1, 3600)

    def describe(self) -> str:
        return "run " + " ".join(_quote(str(a)) for a in self.args["argv"])

    async def plan(self, ctx: Context) -> list[Change]:
        return []

    async def apply(self, ctx: Context) -> Outcome:
        return Outcome(
            output=await run_argv(
                [str(a) for a in self.args["argv"]], float(self.args.get("timeout_s", 60))
            )
        )

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        raise ActionError("exec sets no knob")


def _quote(arg: str) -> str:
    return arg if re.match(r"^[\w./=:,@+-]+$", arg) else repr(arg)


async def run_argv(argv: list[str], timeout_s: float) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as error:
        raise ActionError(f"cannot run {argv[0]}: {error.strerror or error}") from None
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
        raise ActionError(f"{argv[0]} did not finish within {timeout_s:g} s; killed") from None
    text = output.decode(errors="replace")[-MAX_OUTPUT:]
    if process.returncode:
        raise ActionError(f"{argv[0]} exited with status {process.returncode}: {text.strip()}")
    return text


class Http(Action):
    """One request to any admin API; the body and headers may read ``env.NAME`` secrets."""

    name = "http"
    summary = "send one HTTP request to an admin API and expect a status"
    arguments = ("method", "url", "headers", "json", "expect", "timeout_s", "undo")
    sets_knobs = False

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        if "url" not in args:
            raise ValueError("url is required")
        url = args["url"]
        if isinstance(url, str) and "{{" not in url and not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        method = str(args.get("method", "POST")).upper()
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            raise ValueError(f"method must be GET, POST, PUT, PATCH or DELETE, got {method}")
        _number(args, "expect", 100, 599)
        _number(args, "timeout_s", 0.1, 600)
        if "undo" in args:
            if not isinstance(args["undo"], dict):
                raise ValueError("undo must be a request: method, url, headers, json")
            cls.check(args["undo"])

    def describe(self) -> str:
        return f"{str(self.args.get('method', 'POST')).upper()} {self.args['url']}"

    async def plan(self, ctx: Context) -> list[Change]:
        return []

    async def apply(self, ctx: Context) -> Outcome:
        return Outcome(output=await send_request(ctx, self.args))

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        raise ActionError("http sets no knob")


async def send_request(ctx: Context, args: Mapping[str, Any]) -> str:
    method = str(args.get("method", "POST")).upper()
    url = str(args["url"])
    try:
        response = await ctx.client().request(
            method,
            url,
            json=args.get("json"),
            headers={str(k): str(v) for k, v in (args.get("headers") or {}).items()},
            timeout=float(args.get("timeout_s", 10)),
        )
    except httpx.HTTPError as error:
        raise ActionError(f"{method} {url}: {type(error).__name__}: {error}") from None
    expected = args.get("expect")
    ok = response.status_code == int(expected) if expected else response.status_code < 300
    if not ok:
        raise ActionError(f"{method} {url} answered {response.status_code}: {response.text[:300]}")
    return f"{response.status_code} {response.text[:MAX_OUTPUT]}"


class Notify(Action):
    name = "notify"
    summary = "send a message through the alert routes (log, webhook, command)"
    arguments = ("message", "severity")
    sets_knobs = False

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        if not isinstance(args.get("message"), str):
            raise ValueError("message is required (text)")
        if args.get("severity", "info") not in ("info", "warning", "critical"):
            raise ValueError("severity must be info, warning or critical")

    def describe(self) -> str:
        return f"notify: {self.args['message']}"

    async def plan(self, ctx: Context) -> list[Change]:
        return []

    async def apply(self, ctx: Context) -> Outcome:
        from collectors.alerts import LogRoute

        now = time.time()
        notification = Notification(
            status="firing",
            rule="playbook",
            severity=str(self.args.get("severity", "info")),
            target=ctx.target,
            summary=str(self.args["message"]),
            value=None,
            since=now,
            at=now,
        )
        problems = await deliver(notification, list(ctx.routes) or [LogRoute()])
        return Outcome(output="; ".join(problems) or "sent")

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        raise ActionError("notify sets no knob")


class BaselineRestore(Action):
    """Every knob a playbook changed since ``since`` back to its value before the first change.

    The baseline comes from the journal: the before value of the earliest
    recorded change of each knob in runs that were applied and not rolled
    back. Knobs nobody changed through quell are left as they are.
    """

    name = "baseline.restore"
    summary = "put every knob changed by playbooks since a time back to its earlier value"
    arguments = ("since",)

    @classmethod
    def check(cls, args: Mapping[str, Any]) -> None:
        super().check(args)
        _number(args, "since", 0, 1e11)

    def baseline(self, ctx: Context) -> dict[tuple[str, str], Any]:
        if ctx.journal is None:
            raise ActionError("baseline.restore needs the store's journal")
        since = float(self.args.get("since") or time.time() - 3600)
        runs = ctx.journal.runs(limit=1000, since=since)
        first: dict[tuple[str, str], Any] = {}
        for run in sorted(runs, key=lambda r: r["id"]):
            # Rolled-back runs count too: their before values are still the
            # earliest record of the knob, which a later undo run's are not.
            if run["status"] not in ("applied", "rolled_back", "failed", "rollback_failed"):
                continue
            for change in run.get("changes", []):
                if change.get("unchanged") or change["action"] not in ACTIONS:
                    continue
                first.setdefault((change["action"], change["knob"]), change["before"])
        return first

    async def read(self, ctx: Context) -> dict[str, Any]:
        return {}

    async def desired(self, ctx: Context, current: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    async def plan(self, ctx: Context) -> list[Change]:
        baseline = self.baseline(ctx)
        changes: list[Change] = []
        now: dict[str, dict[str, Any]] = {}
        for action, _knob in baseline:
            if action not in now:
                now[action] = await ACTIONS[action].current(ctx)
        for (action, knob), value in baseline.items():
            changes.append(Change(action, knob, now[action].get(knob), value))
        return changes

    async def apply(self, ctx: Context) -> Outcome:
        planned = await self.plan(ctx)
        await write_changes(ctx, [c for c in planned if not c.unchanged], undo=False)
        after: dict[str, dict[str, Any]] = {}
        for change in planned:
            if change.action not in after:
                after[change.action] = await ACTIONS[change.action].current(ctx)
        return Outcome(
            [
                Change(c.action, c.knob, c.before, after[c.action].get(c.knob, c.after))
                for c in planned
            ]
        )

    @classmethod
    async def write(cls, ctx: Context, values: Mapping[str, Any]) -> None:
        raise ActionError("baseline.restore writes through the actions that own each knob")


async def write_changes(ctx: Context, changes: Sequence[Change], undo: bool) -> None:
    """Write each change's new value (or, to undo, its old one), grouped by action in order."""
    groups: list[tuple[str, dict[str, Any]]] = []
    for change in changes:
        if not groups or groups[-1][0] != change.action:
            groups.append((change.action, {}))
        groups[-1][1][change.knob] = change.before if undo else change.after
    for action, values in groups:
        await ACTIONS[action].write(ctx, values)


ACTIONS: dict[str, type[Action]] = {
    cls.name: cls
    for cls in (
        GatewayQueue,
        GatewayLimits,
        GatewayShed,
        GatewayCache,
        GatewayUpstream,
        LabScale,
        EngineFault,
        Exec,
        Http,
        Notify,
        BaselineRestore,
    )
}
