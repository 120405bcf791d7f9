"""What the lab can serve, from its engines' cost model and the gateway's workers."""

from __future__ import annotations

from typing import Any

from inference.engine.cost_model import CostModel


def lab_capacity_rps(state: dict[str, Any], mean_prompt: float, mean_output: float) -> float:
    """Completed requests/s of the live replicas, saturated, at these mean token sizes.

    Each engine completes S / (G·step(S) + S·P·prefill) requests per second
    (``cost_model.py``); the gateway's workers bound how many requests the
    engines see at once, so fewer workers than slots lowers the figure.
    """
    settings = state["engine_settings"]
    cost = CostModel(
        settings["prefill_ms_per_token"], settings["decode_step_ms"], settings["decode_ms_per_seq"]
    )
    # The generator sizes whole prompts, framing included (traffic.py).
    prompt = max(1, round(mean_prompt))
    output = max(1, round(mean_output))
    live = [e for e in state["engines"] if e.get("exit_status") is None]
    if not live:
        return 0.0
    workers = state["gateway"].get("workers") or settings["slots"] * len(live)
    per_engine_slots = min(settings["slots"], max(1, workers // len(live)))
    per_engine = cost.predicted_throughput(per_engine_slots, settings["kv_tokens"], prompt, output)
    return per_engine * len(live)
