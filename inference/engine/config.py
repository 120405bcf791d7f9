"""Settings of one engine process."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.engine.cost_model import CostModel


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str = "quell-mini"
    engine_label: str = "0"
    slots: int = 16
    kv_tokens: int = 65536
    max_waiting: int = 64
    max_model_len: int = 8192
    default_max_tokens: int = 64
    max_body_bytes: int = 1 << 20
    seed: int = 0
    cost: CostModel = field(default_factory=CostModel)
    # Secrets are bytes so they are compared as bytes, and repr() hides them
    # so a config printed in a log never shows one.
    admin_token: bytes | None = field(default=None, repr=False)
    api_key: bytes | None = field(default=None, repr=False)

    def public(self) -> dict[str, object]:
        """The settings an operator may see: everything but the secrets."""
        return {
            "model": self.model,
            "engine_label": self.engine_label,
            "slots": self.slots,
            "kv_tokens": self.kv_tokens,
            "max_waiting": self.max_waiting,
            "max_model_len": self.max_model_len,
            "default_max_tokens": self.default_max_tokens,
            "max_body_bytes": self.max_body_bytes,
            "seed": self.seed,
            "prefill_ms_per_token": self.cost.prefill_ms_per_token,
            "decode_step_ms": self.cost.decode_step_ms,
            "decode_ms_per_seq": self.cost.decode_ms_per_seq,
            "admin_api": self.admin_token is not None,
            "client_auth": self.api_key is not None,
        }
