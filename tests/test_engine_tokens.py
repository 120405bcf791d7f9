from __future__ import annotations

import pytest

from inference.engine.cost_model import CostModel
from inference.engine.tokens import (
    VOCABULARY,
    count_tokens,
    generate_words,
    prompt_digest,
    prompt_tokens,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("Hello, world!", 6),  # Hell o , worl d !
        ("a b c", 3),
        ("queue_full", 3),  # queu e_fu ll: underscore is a word character
        ("   \n\t", 0),
        ("1234567890", 3),
        ("é", 1),
    ],
)
def test_counting_rule(text: str, expected: int) -> None:
    assert count_tokens(text) == expected


def test_chat_prompt_rule_counts_framing_role_content_and_name() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},  # 3 + 2 (syst em) + 3 (Be brie f .) ...
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ops"},
    ]
    expected = 3  # reply priming
    expected += 3 + count_tokens("system") + count_tokens("Be brief.")
    expected += 3 + count_tokens("user") + count_tokens("hi") + count_tokens("ops") + 1
    assert prompt_tokens(messages) == expected


def test_every_word_of_the_vocabulary_is_one_token() -> None:
    assert all(count_tokens(word) == 1 for word in VOCABULARY)


def test_generated_text_recounts_to_the_tokens_generated() -> None:
    digest = prompt_digest([{"role": "user", "content": "why is the queue full?"}])
    for count in (1, 7, 64, 500):
        text = " ".join(generate_words(digest, 0, count))
        assert count_tokens(text) == count


def test_output_depends_on_prompt_and_seed_only() -> None:
    a = prompt_digest([{"role": "user", "content": "one"}])
    b = prompt_digest([{"role": "user", "content": "two"}])
    assert generate_words(a, 1, 30) == generate_words(a, 1, 30)
    assert generate_words(a, 1, 30) != generate_words(a, 2, 30)
    assert generate_words(a, 1, 30) != generate_words(b, 1, 30)


def test_predicted_throughput_formula() -> None:
    cost = CostModel(prefill_ms_per_token=0.1, decode_step_ms=10.0, decode_ms_per_seq=0.5)
    # 8 slots, 100-token prompts, 20 tokens out: 20 steps of 10 + 0.5*8 ms plus
    # 8 prefills of 100 tokens at 0.1 ms for every 8 requests.
    per_batch_ms = 20 * (10.0 + 0.5 * 8) + 8 * 100 * 0.1
    assert cost.predicted_throughput(8, 10_000, 100, 20) == pytest.approx(8 * 1000 / per_batch_ms)


def test_kv_budget_caps_the_batch_in_the_prediction() -> None:
    cost = CostModel(prefill_ms_per_token=0.0, decode_step_ms=10.0, decode_ms_per_seq=0.0)
    # The KV budget holds two sequences of 120 tokens though there are 8 slots.
    assert cost.effective_slots(8, 250, 100, 20) == 2
    assert cost.predicted_throughput(8, 250, 100, 20) == pytest.approx(2 * 1000 / (20 * 10.0))


def test_slowdown_scales_the_step() -> None:
    cost = CostModel(prefill_ms_per_token=0.0, decode_step_ms=10.0, decode_ms_per_seq=0.0)
    assert cost.step_seconds(4, 0, slowdown=3.0) == pytest.approx(0.030)
