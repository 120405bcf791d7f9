"""Deterministic token counting and text generation.

The engine has no model, so it needs a tokenizer that is cheap, stable and
documented, and output whose token count is exactly what ``usage`` says.

Counting rule (``count_tokens``): a token is a run of one to four word
characters (letters, digits, underscore) or a single other non-space
character. "Hello, world!" is ``Hell`` ``o`` ``,`` ``worl`` ``d`` ``!``: six
tokens. That is close to the four-characters-a-token of real BPE tokenizers
on English text.

Chat prompts (``prompt_tokens``) follow the shape of the OpenAI cookbook's
rule: each message costs 3 tokens of framing plus its role and content (and
its name plus one, when it has one), and the reply is primed with 3 more.

Generated text is a sequence of words of one to four lower-case letters,
separated by single spaces, so each word is exactly one token and the text
re-counts to the number of tokens generated. The words are drawn from a PRNG
seeded by the prompt and the request's seed: the same prompt and seed give
the same text.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

_TOKEN = re.compile(r"\w{1,4}|[^\w\s]")

MESSAGE_FRAMING_TOKENS = 3
REPLY_PRIMING_TOKENS = 3

# A fixed vocabulary of short English words: each is 1-4 letters, hence
# exactly one token under the counting rule.
VOCABULARY: tuple[str, ...] = tuple(
    """
    a an and are as at be but by can do for from go has have he her his how i
    if in is it its just know like make me more my new no not now of on one or
    our out said see she so some take than that the them then they this time
    to up us use was way we well what when who will with you your gpu kv slot
    tok wait load rate peak calm fast slow full busy idle work node pool
    """.split()
)


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text))


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "text":
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "\n".join(parts)


def prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += MESSAGE_FRAMING_TOKENS
        total += count_tokens(str(message.get("role", "")))
        total += count_tokens(content_text(message.get("content")))
        name = message.get("name")
        if isinstance(name, str) and name:
            total += count_tokens(name) + 1
    return total


def prompt_digest(messages: Iterable[Mapping[str, Any]]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for message in messages:
        # surrogatepass: JSON may carry a lone surrogate ("\ud800") that
        # strict UTF-8 refuses; it is still part of the prompt.
        h.update(str(message.get("role", "")).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
        h.update(content_text(message.get("content")).encode("utf-8", "surrogatepass"))
        h.update(b"\x01")
    return h.digest()


def generate_words(digest: bytes, seed: int, count: int) -> list[str]:
    """``count`` words, each one token, fixed by the prompt digest and seed."""
    rng = random.Random(int.from_bytes(digest, "big") ^ (seed & 0xFFFFFFFFFFFFFFFF))
    return rng.choices(VOCABULARY, k=count)
