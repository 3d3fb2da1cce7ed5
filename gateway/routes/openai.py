"""OpenAI-compatible routes: chat completions, completions, models."""

from __future__ import annotations

import asyncio
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.protocol import parse_body
from gateway.services.completions import CHAT, COMPLETIONS, Endpoint, StartedStream
from gateway.streaming import ClientWatch, SSEStreamResponse

CLIENT_CLOSED = 499  # nobody reads it; it is what the access log records


async def _generate(request: Request, endpoint: Endpoint) -> Response:
    started = time.perf_counter()
    body = parse_body(await request.body())
    watch = ClientWatch(request.receive)
    try:
        result = await request.state.completions.generate(
            endpoint, body, started, request.headers.get("x-session-id"))
    except asyncio.CancelledError:
        await watch.close()
        if watch.absorb_cancel():
            return Response(status_code=CLIENT_CLOSED)
        raise
    except BaseException:
        await watch.close()
        raise
    if isinstance(result, StartedStream):
        return SSEStreamResponse(result.body, watch, head=result.head)
    await watch.close()
    return Response(result, media_type="application/json")


async def chat_completions(request: Request) -> Response:
    return await _generate(request, CHAT)


async def completions(request: Request) -> Response:
    return await _generate(request, COMPLETIONS)


async def list_models(request: Request) -> Response:
    cards = request.state.pool.models()
    return Response(orjson.dumps({"object": "list", "data": cards}),
                    media_type="application/json")


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
