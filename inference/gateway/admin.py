"""The admin API: the knobs a playbook or an operator turns during an incident.

It sits behind its own token. A client key gets 403 (it is known, but not
allowed here), anything else 401. Every change is checked completely before
any part of it is applied, answers ``{"before": ..., "after": ...}``, is
logged on "quell.gateway", and is saved to the state file so it outlives a
restart. The saved state is applied on start through the same checks, so a
hand-edited state file is held to the same rules as a request.

Routes::

    GET    /admin/state
    POST   /admin/queue      {"workers", "capacity", "timeout_s", "max_tokens_cap"}
    POST   /admin/limits     {"key"?, "requests_per_second", "burst", "tokens_per_minute"}
                             or {"key"?, "factor": 0.5}; without "key" the defaults change
                             (a factor scales the defaults and every key's own limits)
    POST   /admin/shed       {"classes": ["sheddable"]}
    POST   /admin/cache      {"enabled", "ttl_s", "max_entries", "clear"}
    POST   /admin/upstreams  {"name", "url", ...upstream settings}
    DELETE /admin/upstreams/NAME
    POST   /admin/upstreams/NAME/drain | undrain | trip | reset
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.asgi import (
    BodyTooLarge,
    HttpError,
    Receive,
    Router,
    Scope,
    Send,
    bearer_token,
    content_length,
    parse_json_object,
    send_json,
)
from inference.gateway.config import (
    LIMIT_FIELDS,
    PRIORITIES,
    SETTINGS_FIELDS,
    ConfigError,
    Limits,
    UpstreamConfig,
    cache_value,
    flag,
    limit_value,
    name,
    number,
    queue_value,
    text,
    upstream_settings,
    upstream_url,
)
from inference.gateway.keys import ApiKey
from inference.gateway.state_file import load_state, save_state
from inference.gateway.upstreams import Upstream

if TYPE_CHECKING:
    from inference.gateway.app import GatewayApp

log = logging.getLogger("quell.gateway")

QUEUE_FIELDS = ("workers", "capacity", "timeout_s", "max_tokens_cap")
CACHE_FIELDS = ("enabled", "ttl_s", "max_entries")
UPSTREAM_ACTIONS = ("drain", "undrain", "trip", "reset")
UPSTREAMS_PREFIX = "/admin/upstreams/"
MAX_FACTOR = 1000.0

Apply = Callable[[], None]


def _check_fields(body: dict[str, Any], known: Iterable[str], where: str) -> None:
    known = tuple(known)
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r} in {where}; known: {', '.join(known)}")
    if not body:
        raise ConfigError(f"no change given for {where}; known fields: {', '.join(known)}")


def _scale(limits: dict[str, float | int], factor: float) -> dict[str, float | int]:
    """Scale rates by ``factor``; unlimited stays unlimited, a limit never rounds to 0."""
    scaled: dict[str, float | int] = {}
    for field_name, value in limits.items():
        if not value:
            scaled[field_name] = value
        elif field_name == "requests_per_second":
            scaled[field_name] = round(float(value) * factor, 6) or 1e-6
        else:
            scaled[field_name] = max(1, round(value * factor))
    return scaled


class AdminApi:
    def __init__(self, app: GatewayApp) -> None:
        self.app = app
        self.state_file: Path | None = app.config.server.state_file

    def add_routes(self, router: Router) -> None:
        router.add("GET", "/admin/state", self.get_state)
        router.add("POST", "/admin/queue", self.post_queue)
        router.add("POST", "/admin/limits", self.post_limits)
        router.add("POST", "/admin/shed", self.post_shed)
        router.add("POST", "/admin/cache", self.post_cache)
        router.add("POST", "/admin/upstreams", self.post_upstream)

    # -- access ----------------------------------------------------------

    def check(self, scope: Scope) -> None:
        digest = self.app.config.admin_digest
        if digest is None:
            raise HttpError(
                403,
                "the admin API is disabled; set QUELL_GATEWAY_ADMIN_TOKEN or [admin] token_sha256",
                type="permission_error",
                code="admin_disabled",
            )
        token = bearer_token(scope)
        if token is not None:
            if hmac.compare_digest(hashlib.sha256(token).digest(), digest):
                return
            if self.app.keys.find(token) is not None:
                raise HttpError(
                    403,
                    "client API keys may not use the admin API",
                    type="permission_error",
                    code="forbidden",
                )
        raise HttpError(
            401, "missing or invalid admin token", type="authentication_error", code="unauthorized"
        )

    async def _body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        app = self.app
        limit = app.config.server.max_body_bytes
        try:
            raw = await app.slow_clients.read(
                receive, limit, content_length(scope), time.monotonic()
            )
        except BodyTooLarge:
            raise HttpError(
                413, f"request body exceeds {limit} bytes", code="request_too_large"
            ) from None
        except TimeoutError:
            raise HttpError(
                408,
                f"the request body did not arrive within {app.slow_clients.timeout_s:g} s",
                code="request_timeout",
            ) from None
        return parse_json_object(raw)

    async def _change(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        what: str,
        plan: Callable[[dict[str, Any]], tuple[Callable[[], object], Apply]],
    ) -> None:
        self.check(scope)
        body = await self._body(scope, receive)
        try:
            snapshot, apply = plan(body)
        except ConfigError as error:
            raise HttpError(422, str(error), code="invalid_setting") from None
        before = snapshot()
        apply()
        after = snapshot()
        await self._answer(send, what, before, after)

    async def _answer(self, send: Send, what: str, before: object, after: object) -> None:
        self.app.settings_changed()
        log.warning("admin changed %s: %s -> %s", what, before, after)
        reply: dict[str, object] = {"before": before, "after": after}
        warning = self.save()
        if warning is not None:
            reply["warning"] = warning
        await send_json(send, 200, reply)

    def save(self) -> str | None:
        if self.state_file is None:
            return None
        try:
            save_state(self.state_file, self.persistent_state())
        except OSError as error:
            message = (
                f"the change is in effect but could not be saved to {self.state_file}: "
                f"{error.strerror}; it will not survive a restart"
            )
            log.error("%s", message)
            return message
        return None

    # -- reading ---------------------------------------------------------

    def queue_settings(self) -> dict[str, object]:
        a = self.app.admission
        return {
            "workers": a.workers,
            "capacity": a.capacity,
            "timeout_s": a.timeout_s,
            "max_tokens_cap": self.app.max_tokens_cap,
        }

    def shed_classes(self) -> list[str]:
        return [p for p, on in zip(PRIORITIES, self.app.shed, strict=True) if on]

    def state(self) -> dict[str, object]:
        app = self.app
        a = app.admission
        now = time.monotonic()
        return {
            "queue": {
                **self.queue_settings(),
                "depth": a.depth,
                "depth_by_priority": dict(zip(PRIORITIES, a.class_depth, strict=True)),
                "in_flight": a.in_flight,
                "service_rate": round(app.drain.per_second, 3),
            },
            "shed": self.shed_classes(),
            "limits": app.keys.defaults.as_dict(),
            "keys": {k.name: k.describe() for k in app.keys.by_name.values()},
            "upstreams": {u.name: u.describe(now) for u in app.pool.upstreams},
            "cache": app.cache.describe(),
            "state_file": str(self.state_file) if self.state_file else None,
        }

    def persistent_state(self) -> dict[str, Any]:
        app = self.app
        defaults = app.pool.defaults
        return {
            "queue": self.queue_settings(),
            "limits": app.keys.defaults.as_dict(),
            "keys": {k.name: dict(k.overrides) for k in app.keys.by_name.values()},
            "shed": self.shed_classes(),
            "cache": {f: getattr(app.cache, f) for f in CACHE_FIELDS},
            "upstreams": [
                {
                    "name": u.name,
                    "url": u.url,
                    "drained": u.drained,
                    "tripped": u.breaker.tripped,
                    "api_key_env": u.config.api_key_env,
                    "settings": {
                        f: getattr(u.settings, f)
                        for f in SETTINGS_FIELDS
                        if getattr(u.settings, f) != getattr(defaults, f)
                    },
                }
                for u in app.pool.upstreams
            ],
        }

    async def get_state(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.check(scope)
        await send_json(send, 200, self.state())

    # -- queue -----------------------------------------------------------

    def plan_queue(self, body: dict[str, Any]) -> tuple[Callable[[], object], Apply]:
        _check_fields(body, QUEUE_FIELDS, "the queue settings")
        clean = {k: queue_value(f"queue.{k}", k, v) for k, v in body.items()}

        def apply() -> None:
            a = self.app.admission
            if "timeout_s" in clean:
                a.timeout_s = float(clean["timeout_s"])
            if "capacity" in clean:
                a.set_capacity(int(clean["capacity"]))
            if "max_tokens_cap" in clean:
                self.app.max_tokens_cap = int(clean["max_tokens_cap"])
            if "workers" in clean:
                a.set_workers(int(clean["workers"]))

        return self.queue_settings, apply

    async def post_queue(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._change(scope, receive, send, "queue", self.plan_queue)

    # -- limits ----------------------------------------------------------

    def plan_limits(self, body: dict[str, Any]) -> tuple[Callable[[], object], Apply]:
        _check_fields(body, ("key", "factor", *LIMIT_FIELDS), "the limits")
        keys = self.app.keys
        key: ApiKey | None = None
        if "key" in body:
            key_name = body["key"]
            key = keys.by_name.get(key_name) if isinstance(key_name, str) else None
            if key is None:
                raise ConfigError(
                    f"key {key_name!r} is not configured; known keys: "
                    f"{', '.join(keys.by_name) or 'none'}"
                )
        values = {k: body[k] for k in LIMIT_FIELDS if k in body}
        factor: float | None = None
        if "factor" in body:
            if values:
                raise ConfigError("give either a factor or limit values, not both")
            factor = number("factor", body["factor"], 0.0, MAX_FACTOR, above_low=True)
        elif not values:
            raise ConfigError(f"no limit given; known: factor, {', '.join(LIMIT_FIELDS)}")

        if key is not None:
            target = key
            if factor is not None:
                overrides = _scale(target.limits.as_dict(), factor)
            else:
                overrides = dict(target.overrides)
                for k, v in values.items():
                    if v is None:
                        # null hands the limit back to the defaults.
                        overrides.pop(k, None)
                    else:
                        overrides[k] = limit_value(f"limits.{k}", k, v)

            def apply_key() -> None:
                target.overrides = overrides
                target.apply(keys.defaults, time.monotonic())

            def snapshot_key() -> object:
                return {"key": target.name, **target.describe()}

            return snapshot_key, apply_key

        if factor is not None:
            defaults = Limits(**_scale(keys.defaults.as_dict(), factor))  # type: ignore[arg-type]
            scaled = {k.name: _scale(k.overrides, factor) for k in keys.by_name.values()}
        else:
            for k, v in values.items():
                if v is None:
                    raise ConfigError(f"limits.{k} cannot be null; 0 means unlimited")
            clean = {k: limit_value(f"limits.{k}", k, v) for k, v in values.items()}
            defaults = replace(keys.defaults, **clean)  # type: ignore[arg-type]
            scaled = {k.name: dict(k.overrides) for k in keys.by_name.values()}

        def apply_all() -> None:
            for key_name, overrides in scaled.items():
                keys.by_name[key_name].overrides = overrides
            keys.set_defaults(defaults, time.monotonic())

        def snapshot_all() -> object:
            return {
                "defaults": keys.defaults.as_dict(),
                "keys": {k.name: k.limits.as_dict() for k in keys.by_name.values()},
            }

        return snapshot_all, apply_all

    async def post_limits(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._change(scope, receive, send, "limits", self.plan_limits)

    # -- shedding --------------------------------------------------------

    def plan_shed(self, body: dict[str, Any]) -> tuple[Callable[[], object], Apply]:
        _check_fields(body, ("classes",), "shedding")
        classes = body["classes"]
        if not isinstance(classes, list) or any(c not in PRIORITIES for c in classes):
            raise ConfigError(
                f"classes must be a list drawn from {', '.join(PRIORITIES)}, got {classes!r}"
            )
        wanted = [p in classes for p in PRIORITIES]

        def apply() -> None:
            self.app.shed[:] = wanted

        return self.shed_classes, apply

    async def post_shed(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._change(scope, receive, send, "shed classes", self.plan_shed)

    # -- cache -----------------------------------------------------------

    def plan_cache(self, body: dict[str, Any]) -> tuple[Callable[[], object], Apply]:
        _check_fields(body, (*CACHE_FIELDS, "clear"), "the cache")
        clean = {k: cache_value(f"cache.{k}", k, v) for k, v in body.items() if k != "clear"}
        clear = flag("clear", body["clear"]) if "clear" in body else False
        cache = self.app.cache

        def apply() -> None:
            cache.configure(
                bool(clean.get("enabled", cache.enabled)),
                float(clean.get("ttl_s", cache.ttl_s)),
                int(clean.get("max_entries", cache.max_entries)),
            )
            if clear:
                cache.clear()

        def snapshot() -> object:
            described = cache.describe()
            return {k: described[k] for k in (*CACHE_FIELDS, "entries")}

        return snapshot, apply

    async def post_cache(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._change(scope, receive, send, "cache", self.plan_cache)

    # -- upstreams -------------------------------------------------------

    def upstream_config(self, body: dict[str, Any], where: str) -> UpstreamConfig:
        for required in ("name", "url"):
            if required not in body:
                raise ConfigError(f"{where}.{required} is required")
        api_key_env = body.get("api_key_env")
        if api_key_env is not None:
            text(f"{where}.api_key_env", api_key_env)
        return UpstreamConfig(
            name=name(f"{where}.name", body["name"]),
            url=upstream_url(f"{where}.url", body["url"]),
            settings=upstream_settings(body, where, self.app.pool.defaults),
            api_key_env=api_key_env,
        )

    def plan_add_upstream(self, body: dict[str, Any]) -> tuple[Callable[[], object], Apply]:
        _check_fields(body, ("name", "url", "api_key_env", *SETTINGS_FIELDS), "the upstream")
        config = self.upstream_config(body, "upstream")
        pool = self.app.pool
        if config.name in pool.by_name:
            raise ConfigError(f"an upstream named {config.name!r} exists already")

        def apply() -> None:
            pool.add(config)

        def snapshot() -> object:
            upstream = pool.by_name.get(config.name)
            return None if upstream is None else upstream.describe(time.monotonic())

        return snapshot, apply

    async def post_upstream(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._change(scope, receive, send, "upstreams (add)", self.plan_add_upstream)

    async def upstream_action(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/admin/upstreams/NAME[/ACTION]``: the one route with a name in its path."""
        method = scope["method"]
        rest = scope["path"][len(UPSTREAMS_PREFIX) :]
        upstream_name, _, action = rest.partition("/")
        if method == "DELETE" and not action:
            action = "remove"
        elif method != "POST" or action not in UPSTREAM_ACTIONS:
            raise HttpError(
                404,
                f"no route for {method} {scope['path']}; use POST "
                f"{UPSTREAMS_PREFIX}NAME/{{{'|'.join(UPSTREAM_ACTIONS)}}} "
                f"or DELETE {UPSTREAMS_PREFIX}NAME",
                code="not_found",
            )
        self.check(scope)
        pool = self.app.pool
        upstream = pool.by_name.get(upstream_name)
        if upstream is None:
            raise HttpError(
                404,
                f"no upstream named {upstream_name!r}; known: {', '.join(pool.by_name) or 'none'}",
                code="not_found",
            )
        before = upstream.describe(time.monotonic())
        after: object
        if action == "remove":
            pool.remove(upstream.name)
            self.app.forwarder.forget(upstream.name)
            after = None
        else:
            self._act(upstream, action)
            after = upstream.describe(time.monotonic())
        await self._answer(send, f"upstream {upstream.name} ({action})", before, after)

    @staticmethod
    def _act(upstream: Upstream, action: str) -> None:
        if action == "drain":
            upstream.drained = True
        elif action == "undrain":
            upstream.drained = False
        elif action == "trip":
            upstream.breaker.trip(time.monotonic())
        else:
            upstream.breaker.reset()

    # -- restoring saved state -------------------------------------------

    def restore(self) -> bool:
        """Apply the state file over the config; False when there is none yet."""
        if self.state_file is None:
            return False
        state = load_state(self.state_file)
        if state is None:
            return False
        try:
            self._restore(state)
        except ConfigError as error:
            raise ConfigError(f"state file {self.state_file}: {error}; fix or remove it") from None
        log.warning("restored admin changes from %s", self.state_file)
        return True

    def _restore(self, state: dict[str, Any]) -> None:
        app = self.app
        known = ("queue", "limits", "keys", "shed", "cache", "upstreams")
        unknown = sorted(set(state) - set(known))
        if unknown:
            raise ConfigError(f"unknown section {unknown[0]!r}")
        # Plan everything first so a bad section applies nothing at all.
        plans: list[Apply] = []
        if "queue" in state:
            plans.append(self.plan_queue(self._section(state, "queue"))[1])
        if "limits" in state:
            plans.append(self.plan_limits(self._section(state, "limits"))[1])
        if "shed" in state:
            plans.append(self.plan_shed({"classes": state["shed"]})[1])
        if "cache" in state:
            plans.append(self.plan_cache(self._section(state, "cache"))[1])
        key_overrides = self._saved_keys(state.get("keys", {}))
        upstreams = self._saved_upstreams(state["upstreams"]) if "upstreams" in state else None
        for apply in plans:
            apply()
        now = time.monotonic()
        for key_name, overrides in key_overrides.items():
            key = app.keys.by_name[key_name]
            key.overrides = overrides
            key.apply(app.keys.defaults, now)
        if upstreams is not None:
            app.pool.replace([config for config, _, _ in upstreams])
            for config, drained, tripped in upstreams:
                upstream = app.pool.by_name[config.name]
                upstream.drained = drained
                if tripped:
                    upstream.breaker.trip(now)

    @staticmethod
    def _section(state: dict[str, Any], section: str) -> dict[str, Any]:
        value = state[section]
        if not isinstance(value, dict):
            raise ConfigError(f"{section} must be an object")
        return value

    def _saved_keys(self, saved: Any) -> dict[str, dict[str, float | int]]:
        if not isinstance(saved, dict):
            raise ConfigError("keys must be an object")
        result: dict[str, dict[str, float | int]] = {}
        for key_name, overrides in saved.items():
            if key_name not in self.app.keys.by_name:
                log.warning("state file names key %r, which the config no longer has", key_name)
                continue
            if not isinstance(overrides, dict):
                raise ConfigError(f"keys.{key_name} must be an object")
            unknown = sorted(set(overrides) - set(LIMIT_FIELDS))
            if unknown:
                raise ConfigError(f"unknown field keys.{key_name}.{unknown[0]}")
            result[key_name] = {
                k: limit_value(f"keys.{key_name}.{k}", k, v) for k, v in overrides.items()
            }
        return result

    def _saved_upstreams(self, saved: Any) -> list[tuple[UpstreamConfig, bool, bool]]:
        if not isinstance(saved, list):
            raise ConfigError("upstreams must be a list")
        configured = {u.name: u for u in self.app.config.upstreams}
        result: list[tuple[UpstreamConfig, bool, bool]] = []
        seen: set[str] = set()
        for index, entry in enumerate(saved):
            where = f"upstreams[{index}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be an object")
            fields = ("name", "url", "drained", "tripped", "api_key_env", "settings")
            unknown = sorted(set(entry) - set(fields))
            if unknown:
                raise ConfigError(f"unknown field {where}.{unknown[0]}")
            settings = entry.get("settings", {})
            if not isinstance(settings, dict):
                raise ConfigError(f"{where}.settings must be an object")
            config = self.upstream_config(
                {
                    "name": entry.get("name"),
                    "url": entry.get("url"),
                    "api_key_env": entry.get("api_key_env"),
                    **settings,
                },
                where,
            )
            if config.name in seen:
                raise ConfigError(f"{where}.name {config.name!r} appears twice")
            seen.add(config.name)
            if config.name in configured:
                # Timeouts and breaker settings are the config's business;
                # the state file only remembers where it is and what was done.
                config = replace(configured[config.name], url=config.url)
            result.append(
                (
                    config,
                    flag(f"{where}.drained", entry.get("drained", False)),
                    flag(f"{where}.tripped", entry.get("tripped", False)),
                )
            )
        return result
