"""A scripted engine for what the simulator never does: answer a given 4xx, end a
stream without ``data: [DONE]``, or send bytes no vLLM would (:func:`raw_reply`). It
serves ``/health``, ``/v1/models`` (or ``models_body``, verbatim) and an empty
``/metrics`` like a vLLM server, and records every generation request it receives
(body and headers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

Reply = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeEngine:
    def __init__(self, reply: Reply, model: str = "sim-model",
                 paths: tuple[str, ...] = (), gets: dict[str, Handler] | None = None
                 ) -> None:
        self.reply = reply
        self.model = model
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        """The headers (names in lower case) of each generation request received, in order."""
        self.models_body: bytes | None = None
        """When set, ``/v1/models`` answers these bytes instead of a model list."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/completions", self._generate)
        for path in paths:  # other POST endpoints answered by ``reply`` alike
            app.router.add_post(path, self._generate)
        for path, handler in (gets or {}).items():  # other GET endpoints (``/version``)
            app.router.add_get(path, handler)
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
        if self.models_body is not None:
            return web.Response(body=self.models_body, content_type="application/json")
        card = {"id": self.model, "object": "model", "owned_by": "vllm", "root": self.model,
                "parent": None, "max_model_len": 2048}
        return web.json_response({"object": "list", "data": [card]})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="text/plain")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
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


def raw_reply(*writes: bytes, status: int = 200, content_type: str = "text/event-stream",
              gap_s: float = 0.0, cut: bool = False) -> Reply:
    """Answer with ``status`` and exactly ``writes``, one write each (``gap_s`` apart,
    so that they tend to arrive as separate reads), then end the body cleanly, or with
    ``cut`` drop the connection without ending it."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        await response.prepare(request)
        for i, data in enumerate(writes):
            if i and gap_s:
                await asyncio.sleep(gap_s)
            await response.write(data)
        if cut:
            assert request.transport is not None
            request.transport.close()
        else:
            await response.write_eof()
        return response
    return reply
