"""Passthrough routes: the rest of vLLM's OpenAI server, routed by the body's ``model``
(an alias resolved as chat's is: see :mod:`gateway.pipeline.passthrough`); and a
model's card, and the engines' version. Embeddings read the cache headers and answer
with ``x-sluice-cache`` as chat does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.cache import read_directives, serves
from gateway.core.context import Endpoint
from gateway.core.errors import ModelNotFound, SluiceError
from gateway.edge.accounting import director_counts
from gateway.edge.event_stream import EventStreamResponse
from gateway.edge.headers import header
from gateway.edge.routes.openai import CLIENT_CLOSED, generation_headers, new_context
from gateway.edge.streaming import ClientWatch
from gateway.pipeline.director import StartedStream
from gateway.pipeline.passthrough import ENDPOINTS


async def _forward(request: Request, endpoint: Endpoint) -> Response:
    ctx = await new_context(request, endpoint)
    if ctx is None:
        return Response(status_code=CLIENT_CLOSED)
    cached = serves(endpoint)
    if cached:
        read_directives(ctx.cache, header(request.scope, b"cache-control"),
                        header(request.scope, b"x-sluice-cache"))
    watch = ClientWatch(request.receive)
    director_counts(request)
    try:
        result = await request.state.passthrough.forward(ctx)
    except asyncio.CancelledError:
        await watch.close()
        if watch.absorb_cancel():
            return Response(status_code=CLIENT_CLOSED)
        raise
    except SluiceError as exc:
        await watch.close()
        exc.headers.update(generation_headers(ctx, cache=cached))
        raise
    except BaseException:
        await watch.close()
        raise
    headers = generation_headers(ctx, cache=cached)
    if isinstance(result, StartedStream):
        return EventStreamResponse(
            result.body, watch, head=result.head,
            headers=[(k.encode(), v.encode()) for k, v in headers.items()])
    await watch.close()
    return Response(result, media_type="application/json", headers=headers)


def _handler(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def forward(request: Request) -> Response:
        return await _forward(request, endpoint)
    forward.__name__ = forward.__qualname__ = endpoint.name
    return forward


async def model_card(request: Request) -> Response:
    """A served model's card, or a model alias's (when some version of it is served)."""
    model_id = request.path_params["model_id"]
    cards = request.state.pool.models()
    aliases = request.state.versions.cards({card["id"] for card in cards})
    for card in (*aliases, *cards):
        if card["id"] == model_id:
            return Response(orjson.dumps(card), media_type="application/json")
    raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")


async def version(request: Request) -> Response:
    return Response(orjson.dumps(await request.state.passthrough.version()),
                    media_type="application/json")


routes = [
    *(Route(e.path, _handler(e), methods=["POST"]) for e in ENDPOINTS),
    Route("/v1/models/{model_id:path}", model_card, methods=["GET"]),
    Route("/version", version, methods=["GET"]),
]
