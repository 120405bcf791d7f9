"""An exact-match response cache for deterministic requests.

Only non-streaming requests with ``temperature`` 0 are cached: any other
request may rightly get a different answer each time. The key is the path
plus the request body bytes exactly as sent, so two requests share an entry
only when they are byte-for-byte the same question.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CachedResponse:
    body: bytes
    content_type: bytes
    expires: float


class ResponseCache:
    def __init__(self, enabled: bool, ttl_s: float, max_entries: int) -> None:
        self.enabled = enabled
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires <= now:
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: bytes, body: bytes, content_type: bytes, now: float) -> None:
        self._entries[key] = CachedResponse(body, content_type, now + self.ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def configure(self, enabled: bool, ttl_s: float, max_entries: int) -> None:
        self.enabled = enabled
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        if not enabled:
            # Switching the cache off means "stop serving stored answers";
            # keeping them would resurrect stale ones when it is switched on.
            self._entries.clear()
        while len(self._entries) > max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        return count

    def describe(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "ttl_s": self.ttl_s,
            "max_entries": self.max_entries,
            "entries": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
        }


def cache_key(path: str, body: bytes) -> bytes:
    return path.encode() + b"\0" + body
