"""The time an LLM server spends on a request, as a token model.

A scheduler step advances every running sequence by one token. Its length is

    step = slowdown * (decode_step_ms
                       + decode_ms_per_seq * running
                       + prefill_ms_per_token * prompt tokens admitted this step)

A sequence spends G steps in its slot for G generated tokens: its prompt is
prefilled in the first step, which also emits the first token (continuous
batching with prefill folded into the step, as vLLM V1 schedules it).

With S sequences always running (the server saturated), every G steps S
requests finish and S prompts of P tokens are prefilled, so

    throughput = S / (G * (decode_step_ms + decode_ms_per_seq * S)
                      + S * P * prefill_ms_per_token) * 1000    requests/s

where S is the slot count, or fewer when the KV-token budget cannot hold S
sequences of P + G tokens.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CostModel:
    prefill_ms_per_token: float = 0.02
    decode_step_ms: float = 8.0
    decode_ms_per_seq: float = 0.05

    def step_seconds(self, running: int, prefill_tokens: int, slowdown: float = 1.0) -> float:
        millis = (
            self.decode_step_ms
            + self.decode_ms_per_seq * running
            + self.prefill_ms_per_token * prefill_tokens
        )
        return slowdown * millis / 1000.0

    def effective_slots(self, slots: int, kv_tokens: int, prompt: int, output: int) -> int:
        return max(0, min(slots, kv_tokens // max(1, prompt + output)))

    def predicted_throughput(
        self,
        slots: int,
        kv_tokens: int,
        prompt: int,
        output: int,
        slowdown: float = 1.0,
    ) -> float:
        """Completed requests per second when the server is kept saturated."""
        running = self.effective_slots(slots, kv_tokens, prompt, output)
        if running == 0 or output == 0:
            return 0.0
        millis_per_batch = (
            output * (self.decode_step_ms + self.decode_ms_per_seq * running)
            + running * prompt * self.prefill_ms_per_token
        ) * slowdown
        if millis_per_batch <= 0:
            return float("inf")
        return running * 1000.0 / millis_per_batch

    def service_seconds(
        self, prompt: int, output: int, running: int, slowdown: float = 1.0
    ) -> float:
        """How long one request holds its slot when ``running`` sequences share the steps."""
        return self.step_seconds(running, 0, slowdown) * output + slowdown * (
            self.prefill_ms_per_token * prompt / 1000.0
        )
