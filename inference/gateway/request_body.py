"""What the gateway needs to know about a request body, and nothing more.

The body is decoded once to read ``stream``, ``max_tokens`` and
``temperature``; everything else is the upstream's business, and the bytes
are forwarded exactly as the client sent them unless the max_tokens cap has
to rewrite them.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.asgi import dumps, parse_json_object

# A prompt token is about four bytes of English JSON; good enough to charge a
# tokens-per-minute bucket before the upstream has counted for real.
BYTES_PER_TOKEN = 4
# Charged as completion tokens when a request sets no max_tokens and no cap.
DEFAULT_COMPLETION_ESTIMATE = 256


@dataclass(frozen=True, slots=True)
class RequestBody:
    raw: bytes
    stream: bool
    max_tokens: int | None
    deterministic: bool

    def token_estimate(self) -> int:
        completion = self.max_tokens if self.max_tokens is not None else DEFAULT_COMPLETION_ESTIMATE
        return len(self.raw) // BYTES_PER_TOKEN + completion


def _int_field(payload: dict[str, object], name: str) -> int | None:
    value = payload.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def parse_request_body(raw: bytes, max_tokens_cap: int) -> RequestBody:
    payload = parse_json_object(raw)
    completion = _int_field(payload, "max_completion_tokens")
    max_tokens = completion if completion is not None else _int_field(payload, "max_tokens")
    if max_tokens_cap and (max_tokens is None or max_tokens > max_tokens_cap):
        # Capping only works if the upstream sees it: rewrite whichever field
        # the client used (both, if it sent both).
        if "max_completion_tokens" in payload:
            payload["max_completion_tokens"] = max_tokens_cap
        if "max_tokens" in payload or "max_completion_tokens" not in payload:
            payload["max_tokens"] = max_tokens_cap
        max_tokens = max_tokens_cap
        raw = dumps(payload)
    temperature = payload.get("temperature")
    return RequestBody(
        raw=raw,
        stream=payload.get("stream") is True,
        max_tokens=max_tokens,
        deterministic=temperature == 0 and not isinstance(temperature, bool),
    )
