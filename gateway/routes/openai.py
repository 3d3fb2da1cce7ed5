"""OpenAI-compatible routes: chat completions, completions, models."""

from __future__ import annotations

import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.protocol import parse_body
from gateway.services.completions import CHAT, COMPLETIONS, Endpoint, StartedStream
from gateway.streaming import SSEStreamResponse


async def _generate(request: Request, endpoint: Endpoint) -> Response:
    started = time.perf_counter()
    body = parse_body(await request.body())
    result = await request.state.completions.generate(endpoint, body, started)
    if isinstance(result, StartedStream):
        return SSEStreamResponse(result.body, head=result.head)
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
