"""Client API keys: who is calling, at what priority, within which limits.

Keys are held only as sha256 digests. The presented key is hashed and looked
up by digest; a dict lookup on a digest tells a timing observer nothing about
the key itself, and the final comparison is constant-time all the same.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Iterable, Mapping

from inference.gateway.config import LIMIT_FIELDS, PRIORITIES, KeyConfig, Limits
from inference.gateway.token_bucket import TokenBucket

PRIORITY_INDEX = {name: index for index, name in enumerate(PRIORITIES)}


def effective_limits(defaults: Limits, overrides: Mapping[str, float | int]) -> Limits:
    return Limits(
        requests_per_second=float(
            overrides.get("requests_per_second", defaults.requests_per_second)
        ),
        burst=int(overrides.get("burst", defaults.burst)),
        tokens_per_minute=int(overrides.get("tokens_per_minute", defaults.tokens_per_minute)),
    )


def request_capacity(limits: Limits) -> float:
    """Burst 0 means "no burst beyond one second's worth", never zero."""
    if limits.burst > 0:
        return float(limits.burst)
    return float(max(1, math.ceil(limits.requests_per_second)))


class ApiKey:
    __slots__ = (
        "digest",
        "limits",
        "name",
        "name_json",
        "overrides",
        "priority",
        "priority_index",
        "requests",
        "tokens",
    )

    def __init__(self, config: KeyConfig, defaults: Limits, now: float) -> None:
        self.name = config.name
        self.name_json = json.dumps(config.name)
        self.digest = config.digest
        self.priority = config.priority
        self.priority_index = PRIORITY_INDEX[config.priority]
        self.overrides: dict[str, float | int] = dict(config.overrides)
        self.limits = effective_limits(defaults, self.overrides)
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        self.apply(defaults, now)

    def apply(self, defaults: Limits, now: float) -> None:
        """Recompute the effective limits; buckets keep what they hold."""
        limits = effective_limits(defaults, self.overrides)
        self.limits = limits
        if limits.requests_per_second > 0:
            capacity = request_capacity(limits)
            if self.requests is None:
                self.requests = TokenBucket(limits.requests_per_second, capacity, now)
            else:
                self.requests.reconfigure(limits.requests_per_second, capacity, now)
        else:
            self.requests = None
        if limits.tokens_per_minute > 0:
            rate = limits.tokens_per_minute / 60.0
            if self.tokens is None:
                self.tokens = TokenBucket(rate, limits.tokens_per_minute, now)
            else:
                self.tokens.reconfigure(rate, limits.tokens_per_minute, now)
        else:
            self.tokens = None

    def describe(self) -> dict[str, object]:
        return {
            "priority": self.priority,
            "limits": self.limits.as_dict(),
            "own_limits": {k: self.overrides[k] for k in LIMIT_FIELDS if k in self.overrides},
        }


class KeyRing:
    def __init__(self, keys: Iterable[KeyConfig], defaults: Limits, now: float) -> None:
        self.defaults = defaults
        self.by_name: dict[str, ApiKey] = {}
        self._by_digest: dict[bytes, ApiKey] = {}
        for config in keys:
            key = ApiKey(config, defaults, now)
            self.by_name[key.name] = key
            self._by_digest[key.digest] = key

    def find(self, presented: bytes) -> ApiKey | None:
        digest = hashlib.sha256(presented).digest()
        key = self._by_digest.get(digest)
        if key is None or not hmac.compare_digest(key.digest, digest):
            return None
        return key

    def set_defaults(self, defaults: Limits, now: float) -> None:
        self.defaults = defaults
        for key in self.by_name.values():
            key.apply(defaults, now)
