"""Limits that protect the machine a playground runs on, and the middleware that enforces body size.

Up to `max_batch` generations decode together in one continuous batch per model; the rest wait in a
queue (bounded, so a flood of requests gets a quick 429 instead of an ever-growing backlog). Prompt and output lengths are capped
so a single request cannot occupy the CPU for minutes, and request bodies are capped before parsing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass
class Limits:
    max_prompt_tokens: int = 4096  # further capped by each model's context window
    max_output_tokens: int = 1024  # per choice
    default_output_tokens: int = 256  # when a request names no max_tokens
    max_batch: int = 32  # rows (sequences) decoding together per model; a request with n choices takes n
    step_tokens: int = 256  # prompt tokens prefilled per decoding step; longer prompts take several steps
    max_queued: int = 64  # requests waiting for rows; beyond this a request gets 429
    max_body_bytes: int = 1_000_000
    max_n: int = 8  # choices per request
    max_inspect_tokens: int = 64  # tokens shown by the attention and next-token views

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < (0 if name == "max_queued" else 1):
                raise ValueError(f"limit {name}={value} must be positive")


def _error_body(status: int, message: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": f"http_{status}"}}
    ).encode()


class BodySizeLimit:
    """ASGI middleware: answer 413 when a request body exceeds `max_bytes`, before the app reads it all.

    Checks the declared Content-Length; a chunked body (no length) is read and counted here first.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:  # the HTTP server holds the client to its declared length
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._reject(send)
                return
            await self.app(scope, receive, send)
            return
        # A chunked body: read it here, counting, and replay it to the app if it fits.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        body = _error_body(413, f"request body is larger than the server's limit of {self.max_bytes} bytes")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
