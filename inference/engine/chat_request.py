"""Validation of ``POST /v1/chat/completions`` bodies.

Every way a body can be wrong becomes a 400 in the OpenAI error shape that
names the offending parameter; unknown fields are ignored, as OpenAI-
compatible servers do, because SDKs add new ones all the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from inference.asgi import HttpError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    stream: bool
    include_usage: bool
    seed: int


def _bad(param: str, message: str) -> HttpError:
    return HttpError(400, message, code="invalid_value", param=param)


def _optional_number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(name, f"'{name}' must be a number")
    if not low <= value <= high:
        raise _bad(name, f"'{name}' must be between {low:g} and {high:g}, got {value}")


def _optional_int(body: dict[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"'{name}' must be an integer")
    if value < low:
        raise _bad(name, f"'{name}' must be at least {low}, got {value}")
    return value


def _validate_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise HttpError(400, "'messages' is a required property", code="missing_required_parameter",
                        param="messages")  # fmt: skip
    if not isinstance(messages, list):
        raise _bad("messages", "'messages' must be an array of message objects")
    if not messages:
        raise _bad("messages", "'messages' must contain at least one message")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad(where, f"'{where}' must be an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _bad(f"{where}.role", f"'{where}.role' must be one of {', '.join(sorted(ROLES))}")
        content = message.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise _bad(f"{where}.content", f"'{where}.content' must be a string or an array")
        for part_index, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _bad(
                    f"{where}.content[{part_index}]",
                    f"'{where}.content[{part_index}]' must be an object with a 'type'",
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise _bad(
                    f"{where}.content[{part_index}].text",
                    f"'{where}.content[{part_index}].text' must be a string",
                )
    return messages


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    model = body.get("model")
    if model is None:
        raise HttpError(400, "'model' is a required property", code="missing_required_parameter",
                        param="model")  # fmt: skip
    if not isinstance(model, str):
        raise _bad("model", "'model' must be a string")
    messages = _validate_messages(body.get("messages"))
    max_tokens = _optional_int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", 1)
    _optional_number(body, "temperature", 0.0, 2.0)
    _optional_number(body, "top_p", 0.0, 1.0)
    n = _optional_int(body, "n", 1)
    if n is not None and n != 1:
        raise _bad("n", "only n=1 is supported")
    seed = _optional_int(body, "seed", -(2**63))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "'stream' must be a boolean")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("stream_options", "'stream_options' must be an object")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise _bad("stream_options.include_usage", "'include_usage' must be a boolean")
        include_usage = bool(usage)
    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        stream=bool(stream),
        include_usage=include_usage,
        seed=seed or 0,
    )
