"""The engine's HTTP surface: OpenAI-compatible API, health, metrics, admin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from typing import Any

from inference.asgi import (
    BodyTooLarge,
    ClientGone,
    HttpError,
    Receive,
    Router,
    Scope,
    Send,
    bearer_token,
    content_length,
    dumps,
    parse_json_object,
    read_body,
    send_bytes,
    send_error,
    send_json,
    token_matches,
)
from inference.drain_rate import DrainRate
from inference.engine.chat_request import ChatRequest, parse_chat_request
from inference.engine.config import EngineConfig
from inference.engine.faults import Faults, InvalidFault, validate_changes
from inference.engine.metrics import EngineMetrics
from inference.engine.openapi import engine_document
from inference.engine.scheduler import InjectedFailure, QueueFull, Scheduler, Sequence
from inference.engine.tokens import generate_words, prompt_digest, prompt_tokens
from inference.openapi import document_handler

log = logging.getLogger("quell.engine")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class EngineApp:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.metrics = EngineMetrics(config.model, config.engine_label)
        self.faults = Faults()
        self.scheduler: Scheduler | None = None
        self.drain = DrainRate()
        self.started = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self.router = Router()
        self.router.add("POST", "/v1/chat/completions", self.chat_completions)
        self.router.add("GET", "/v1/models", self.models)
        self.router.add("GET", "/health", self.health)
        self.router.add("GET", "/metrics", self.prometheus)
        self.router.add("GET", "/openapi.json", document_handler(engine_document(config)))
        self.router.add("GET", "/admin/state", self.admin_state)
        self.router.add("POST", "/admin/faults", self.admin_set_faults)
        self.router.add("DELETE", "/admin/faults", self.admin_clear_faults)
        self.router.add("POST", "/admin/crash", self.admin_crash)

    # -- ASGI plumbing ---------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            handler = self.router.resolve(scope["method"], scope["path"])
            if isinstance(handler, HttpError):
                await send_error(send, handler)
                return
            try:
                await handler(scope, receive, send)
            except HttpError as error:
                await send_error(send, error)
            except ClientGone:
                return
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start(self) -> None:
        c = self.config
        self.scheduler = Scheduler(
            c.cost, c.slots, c.kv_tokens, c.max_waiting, self.faults, self.metrics, c.seed
        )
        self.metrics.watch(self.scheduler)
        self._tasks = [
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self._track_drain_rate(), name="drain-rate"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _track_drain_rate(self) -> None:
        assert self.scheduler is not None
        while True:
            await asyncio.sleep(1.0)
            self.drain.update(self.scheduler.completed)

    # -- authentication --------------------------------------------------

    def _check_client(self, scope: Scope) -> None:
        if self.config.api_key is None:
            return
        if not token_matches(bearer_token(scope), self.config.api_key):
            self.metrics.reject("unauthorized")
            raise HttpError(401, "missing or invalid API key", code="invalid_api_key")

    def _check_admin(self, scope: Scope) -> None:
        if self.config.admin_token is None:
            raise HttpError(
                403,
                "the admin API is disabled; start the engine with QUELL_ENGINE_ADMIN_TOKEN set",
                type="permission_error",
                code="admin_disabled",
            )
        if not token_matches(bearer_token(scope), self.config.admin_token):
            raise HttpError(
                401,
                "missing or invalid admin token",
                type="authentication_error",
                code="unauthorized",
            )

    async def _json_body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        try:
            body = await read_body(receive, self.config.max_body_bytes, content_length(scope))
        except BodyTooLarge:
            self.metrics.reject("body_too_large")
            raise HttpError(
                413,
                f"request body exceeds {self.config.max_body_bytes} bytes",
                code="request_too_large",
            ) from None
        try:
            return parse_json_object(body)
        except HttpError:
            self.metrics.reject("invalid_request")
            raise

    # -- the OpenAI-compatible API ---------------------------------------

    def _admit(self, request: ChatRequest, streaming: bool) -> tuple[Sequence, list[str]]:
        c = self.config
        scheduler = self.scheduler
        assert scheduler is not None
        if request.model != c.model:
            self.metrics.reject("model_not_found")
            raise HttpError(
                404,
                f"The model `{request.model}` does not exist; this engine serves `{c.model}`.",
                code="model_not_found",
                param="model",
            )
        prompt = prompt_tokens(request.messages)
        output = request.max_tokens or c.default_max_tokens
        if prompt + output > c.max_model_len or prompt + output > c.kv_tokens:
            self.metrics.reject("context_length_exceeded")
            limit = min(c.max_model_len, c.kv_tokens)
            raise HttpError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt + output} tokens ({prompt} in the messages, {output} in the completion).",
                code="context_length_exceeded",
                param="messages",
            )
        seq = Sequence(
            request_id=scheduler.next_id(),
            prompt_tokens=prompt,
            output_tokens=output,
            arrival=scheduler.now(),
            streaming=streaming,
            stop_reason="length" if request.max_tokens else "stop",
        )
        loop = asyncio.get_running_loop()
        if streaming:
            seq.progress = asyncio.Queue()
        else:
            seq.done = loop.create_future()
        try:
            scheduler.submit(seq)
        except QueueFull:
            self.metrics.reject("queue_full")
            retry_after = self.drain.retry_after(scheduler.waiting_count)
            raise HttpError(
                503,
                f"works queue_full: {scheduler.waiting_count} requests are waiting "
                f"(capacity {scheduler.max_waiting}) and all {scheduler.slots} slots are busy; "
                f"retry after {retry_after:.1f} s",
                type="server_error",
                code="queue_full",
                headers=(
                    (b"retry-after", str(math.ceil(retry_after)).encode()),
                    (b"retry-after-ms", str(int(retry_after * 1000)).encode()),
                ),
            ) from None
        except InjectedFailure:
            self.metrics.reject("injected_failure")
            raise HttpError(
                500,
                "the engine failed to process the request (injected fault)",
                type="server_error",
                code="internal_error",
            ) from None
        words = generate_words(prompt_digest(request.messages), request.seed, output)
        return seq, words

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._check_client(scope)
        body = await self._json_body(scope, receive)
        try:
            request = parse_chat_request(body)
        except HttpError:
            self.metrics.reject("invalid_request")
            raise
        seq, words = self._admit(request, request.stream)
        if request.stream:
            await self._stream(seq, words, request, receive, send)
            return
        assert seq.done is not None
        # The client may hang up while its request waits; stop spending steps
        # on an answer nobody will read, as vLLM does.
        gone = asyncio.ensure_future(receive())
        await asyncio.wait((seq.done, gone), return_when=asyncio.FIRST_COMPLETED)
        if not seq.done.done():
            assert self.scheduler is not None
            self.scheduler.abort(seq)
            return
        gone.cancel()
        text = " ".join(words)
        payload = {
            "id": f"chatcmpl-{self.config.engine_label}-{seq.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": seq.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": seq.prompt_tokens,
                "completion_tokens": seq.generated,
                "total_tokens": seq.prompt_tokens + seq.generated,
            },
        }
        await send_json(send, 200, payload)

    async def _stream(
        self, seq: Sequence, words: list[str], request: ChatRequest, receive: Receive, send: Send
    ) -> None:
        assert seq.progress is not None and self.scheduler is not None
        ident = f"chatcmpl-{self.config.engine_label}-{seq.request_id}"
        created = int(time.time())
        model = self.config.model

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            return b"data: " + dumps(payload) + b"\n\n"

        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        gone = asyncio.ensure_future(receive())
        try:
            await send(
                {
                    "type": "http.response.body",
                    "body": chunk({"role": "assistant", "content": ""}, None),
                    "more_body": True,
                }
            )
            sent = 0
            while True:
                got = asyncio.ensure_future(seq.progress.get())
                await asyncio.wait((got, gone), return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    self.scheduler.abort(seq)
                    return
                generated = got.result()
                if generated < 0:
                    break
                piece = " ".join(words[sent:generated])
                if sent:
                    piece = " " + piece
                sent = generated
                await send(
                    {
                        "type": "http.response.body",
                        "body": chunk({"content": piece}, None),
                        "more_body": True,
                    }
                )
            tail = chunk({}, seq.finish_reason)
            if request.include_usage:
                usage = {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": seq.prompt_tokens,
                        "completion_tokens": seq.generated,
                        "total_tokens": seq.prompt_tokens + seq.generated,
                    },
                }
                tail += b"data: " + dumps(usage) + b"\n\n"
            await send(
                {
                    "type": "http.response.body",
                    "body": tail + b"data: [DONE]\n\n",
                    "more_body": False,
                }
            )
        finally:
            gone.cancel()

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._check_client(scope)
        await send_json(
            send,
            200,
            {
                "object": "list",
                "data": [
                    {
                        "id": self.config.model,
                        "object": "model",
                        "created": int(self.started),
                        "owned_by": "quell",
                        "max_model_len": self.config.max_model_len,
                    }
                ],
            },
        )

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A stalled engine still answers its health check, as a hung GPU
        # behind a live API server does: that is what makes stalls hard.
        await send_json(send, 200, {"status": "ok"})

    async def prometheus(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self.metrics.exposition(), content_type=METRICS_CONTENT_TYPE)

    # -- admin -----------------------------------------------------------

    def state(self) -> dict[str, Any]:
        s = self.scheduler
        assert s is not None
        return {
            "config": self.config.public(),
            "slots": s.slots,
            "faults": self.faults.as_dict(),
            "running": s.running_count,
            "waiting": s.waiting_count,
            "kv_usage": round(s.kv_usage(), 4),
            "completed": s.completed,
            "service_rate": round(self.drain.per_second, 3),
            "pid": os.getpid(),
        }

    def _knobs(self) -> dict[str, Any]:
        assert self.scheduler is not None
        return {**self.faults.as_dict(), "slots": self.scheduler.slots}

    def _apply(self, changes: dict[str, Any]) -> None:
        s = self.scheduler
        assert s is not None
        for name, value in changes.items():
            if name == "stalled":
                s.set_stalled(value)
            elif name == "slots":
                s.set_slots(value)
            else:
                setattr(self.faults, name, value)

    async def admin_state(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._check_admin(scope)
        await send_json(send, 200, self.state())

    async def admin_set_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._check_admin(scope)
        body = await self._json_body(scope, receive)
        try:
            changes = validate_changes(body)
        except InvalidFault as error:
            raise HttpError(422, str(error), code="invalid_setting") from None
        before = self._knobs()
        self._apply(changes)
        after = self._knobs()
        log.warning("admin changed %s: %s -> %s", ", ".join(changes), before, after)
        await send_json(send, 200, {"before": before, "after": after})

    async def admin_clear_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._check_admin(scope)
        before = self._knobs()
        defaults = Faults().as_dict()
        self._apply(defaults)
        after = self._knobs()
        log.warning("admin cleared faults: %s -> %s", before, after)
        await send_json(send, 200, {"before": before, "after": after})

    async def admin_crash(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._check_admin(scope)
        log.warning("admin asked for a crash; exiting with status 70")
        await send_json(send, 202, {"crashing": True, "pid": os.getpid()})
        # Let the answer leave before the process dies without cleanup, as a
        # segfaulting engine would.
        asyncio.get_running_loop().call_later(0.05, os._exit, 70)
