"""`quell engine serve`: the bundled OpenAI-compatible inference engine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from console.argtypes import PORT, float_range, int_range
from console.errors import UsageError

ADMIN_TOKEN_ENV = "QUELL_ENGINE_ADMIN_TOKEN"  # noqa: S105 (a variable name, not a secret)
API_KEY_ENV = "QUELL_ENGINE_API_KEY"


def register(subparsers: Any) -> None:
    engine = subparsers.add_parser("engine", help="the bundled inference engine")
    actions = engine.add_subparsers(dest="engine_command", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve the OpenAI-compatible engine",
        description=(
            "Serve an OpenAI-compatible chat completions API whose timing follows an LLM "
            "server's: prompt tokens cost prefill time, each generated token one scheduler "
            "step, continuous batching over SLOTS sequences within a KV-token budget, and a "
            "bounded waiting queue that answers 503 'works queue_full' with Retry-After when "
            "full. Secrets come from the environment, never from flags (which other users "
            f"can read in the process list): {ADMIN_TOKEN_ENV} enables the admin API under "
            f"/admin/, {API_KEY_ENV} makes clients present a bearer key."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    net = serve.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind")
    net.add_argument("--port", type=PORT, default=8000, help="port to bind; 0 picks a free one")
    net.add_argument(
        "--max-body-bytes", type=int_range(1024), default=1 << 20,
        help="largest request body accepted; larger gets 413",
    )  # fmt: skip
    model = serve.add_argument_group("model and scheduling")
    model.add_argument("--model", default="quell-mini", help="model name served and reported")
    model.add_argument(
        "--engine-label", default="0", help="value of the 'engine' label on every metric"
    )
    model.add_argument(
        "--slots", type=int_range(1, 4096), default=16,
        help="sequences that run at once (continuous batching width)",
    )  # fmt: skip
    model.add_argument(
        "--kv-tokens", type=int_range(1), default=65536,
        help="KV-cache budget in tokens; a request reserves prompt + max_tokens",
    )  # fmt: skip
    model.add_argument(
        "--max-waiting", type=int_range(0), default=64,
        help="capacity of the waiting queue beyond the free slots",
    )  # fmt: skip
    model.add_argument(
        "--max-model-len", type=int_range(1), default=8192,
        help="largest prompt + completion in tokens; larger gets 400",
    )  # fmt: skip
    model.add_argument(
        "--default-max-tokens", type=int_range(1), default=64,
        help="tokens generated when a request sets no max_tokens",
    )  # fmt: skip
    model.add_argument("--seed", type=int, default=0, help="seed of the injected-failure draw")
    cost = serve.add_argument_group("cost model (milliseconds)")
    cost.add_argument(
        "--prefill-ms-per-token", type=float_range(0.0), default=0.02,
        help="prefill time per prompt token",
    )  # fmt: skip
    cost.add_argument(
        "--decode-step-ms", type=float_range(0.0), default=8.0,
        help="fixed time of one scheduler step (one token for every running sequence)",
    )  # fmt: skip
    cost.add_argument(
        "--decode-ms-per-seq", type=float_range(0.0), default=0.05,
        help="added step time per running sequence",
    )  # fmt: skip
    serve.add_argument(
        "--admin-token-file", type=Path,
        help=f"read the admin token from this file instead of {ADMIN_TOKEN_ENV}",
    )  # fmt: skip
    serve.set_defaults(handler=serve_engine)


def _secret(env: str, path: Path | None) -> bytes | None:
    if path is not None:
        try:
            value = path.read_text().strip()
        except OSError as error:
            raise UsageError(f"cannot read {path}: {error.strerror}") from None
        if not value:
            raise UsageError(f"{path} is empty; it should hold a token")
        return value.encode()
    value = os.environ.get(env, "").strip()
    return value.encode() if value else None


def serve_engine(args: argparse.Namespace) -> int:
    from inference.engine.app import EngineApp
    from inference.engine.config import EngineConfig
    from inference.engine.cost_model import CostModel
    from inference.logs import configure_logging
    from inference.serve import bind_socket, serve

    configure_logging()
    config = EngineConfig(
        model=args.model,
        engine_label=args.engine_label,
        slots=args.slots,
        kv_tokens=args.kv_tokens,
        max_waiting=args.max_waiting,
        max_model_len=args.max_model_len,
        default_max_tokens=args.default_max_tokens,
        max_body_bytes=args.max_body_bytes,
        seed=args.seed,
        cost=CostModel(
            prefill_ms_per_token=args.prefill_ms_per_token,
            decode_step_ms=args.decode_step_ms,
            decode_ms_per_seq=args.decode_ms_per_seq,
        ),
        admin_token=_secret(ADMIN_TOKEN_ENV, args.admin_token_file),
        api_key=_secret(API_KEY_ENV, None),
    )
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as error:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    return 0 if serve(EngineApp(config), sock, "quell engine") else 1
