"""A scripted engine for what the simulator never does: answer a given 4xx, or end a
stream without ``data: [DONE]``. It serves ``/health``, ``/v1/models`` and an empty
``/metrics`` like a vLLM server, and records every generation request it receives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

Reply = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


class FakeEngine:
    def __init__(self, reply: Reply, model: str = "sim-model") -> None:
        self.reply = reply
        self.model = model
        self.received: list[dict[str, Any]] = []
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/completions", self._generate)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        self.url = ""

    async def start(self) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": self.model, "object": "model", "owned_by": "vllm", "root": self.model,
                "parent": None, "max_model_len": 2048}
        return web.json_response({"object": "list", "data": [card]})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="text/plain")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append(body)
        return await self.reply(request, body)


def error_reply(status: int, error: dict[str, Any]) -> Reply:
    """Answer every request with ``status`` and ``{"error": error}``."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"error": error}, status=status)
    return reply


def chat_chunk(stream_id: str, content: str | None, finish_reason: str | None = None,
               role: bool = False) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if content is not None:
        delta["content"] = content
    chunk = {"id": stream_id, "object": "chat.completion.chunk", "created": 1,
             "model": "sim-model",
             "choices": [{"index": 0, "delta": delta, "logprobs": None,
                          "finish_reason": finish_reason}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def send_events(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    """Stream ``events`` (SSE bytes), then end the response cleanly, whatever they were."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event in events:
        await response.write(event)
    await response.write_eof()
    return response
