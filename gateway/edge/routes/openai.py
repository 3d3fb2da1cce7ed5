"""OpenAI-compatible routes: every endpoint answered by engines (chat, completions and
the rest of vLLM's OpenAI server, routed by the body's ``model``), the model list and
cards (aliases included), and the engines' version.

One handler serves every POST endpoint: it reads the body into a request context, hands
it to :meth:`Director.run <gateway.pipeline.director.Director.run>` with the engine
answer step, and maps the result to a JSON response or an event stream. Routes the
cache serves read its request headers and answer with ``x-sluice-cache``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.cache import read_directives, serves
from gateway.core.context import PIN_HEADER_KEY, RequestContext
from gateway.core.endpoints import HTTP, Endpoint
from gateway.core.errors import ModelNotFound, SluiceError
from gateway.core.protocol import check_media_type, parse_body
from gateway.edge.accounting import director_counts
from gateway.edge.headers import header
from gateway.edge.middleware import caller
from gateway.edge.streaming import ClientWatch, SSEStreamResponse
from gateway.pipeline.director import StartedStream

CLIENT_CLOSED = 499  # nobody reads it; it is what the access log records


async def new_context(request: Request, endpoint: Endpoint) -> RequestContext | None:
    """The context of a request to ``endpoint`` once its JSON body is read (with the
    version it pins, ``x-sluice-version``); None when the client left while sending it."""
    arrived = time.perf_counter()
    check_media_type(header(request.scope, b"content-type"))
    try:
        raw = await request.body()
    except ClientDisconnect:
        return None
    principal, key = caller(request.scope)
    ctx = RequestContext.new(request.state.request_id, endpoint, parse_body(raw),
                             arrived=arrived, session_key=header(request.scope, b"x-session-id"),
                             principal=principal, key=key)
    ctx.pinned_version = header(request.scope, PIN_HEADER_KEY)
    return ctx


async def answer(request: Request, endpoint: Endpoint) -> Response:
    """One request to ``endpoint``, through the director, as an HTTP response."""
    ctx = await new_context(request, endpoint)
    if ctx is None:
        return Response(status_code=CLIENT_CLOSED)
    cached = serves(endpoint)
    if cached:
        read_directives(ctx.cache, header(request.scope, b"cache-control"),
                        header(request.scope, b"x-sluice-cache"))
    state = request.state
    keepalive_s = state.settings.streaming.keepalive_s
    ctx.start_early = keepalive_s > 0
    watch = ClientWatch(request.receive)
    director_counts(request)
    try:
        result = await state.director.run(ctx, state.answer)
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
        return SSEStreamResponse(
            result.body, watch, head=result.head,
            headers=[(k.encode(), v.encode()) for k, v in headers.items()],
            keepalive_s=keepalive_s if result.waiting else 0.0, framed=not endpoint.chunks)
    await watch.close()
    return Response(result, media_type="application/json", headers=headers)


def generation_headers(ctx: RequestContext, *, cache: bool = True) -> dict[str, str]:
    """The request's route headers (:meth:`RequestContext.route_headers`) and, for a
    route the cache serves, ``x-sluice-cache`` (hit, miss, coalesced or bypass)."""
    route = ctx.route_headers()
    return {"x-sluice-cache": ctx.cache.result, **route} if cache else route


def _handler(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        return await answer(request, endpoint)
    handle.__name__ = handle.__qualname__ = endpoint.name
    return handle


async def list_models(request: Request) -> Response:
    cards = request.state.pool.models()
    cards += request.state.versions.cards({card["id"] for card in cards})
    return Response(orjson.dumps({"object": "list", "data": cards}),
                    media_type="application/json")


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
    return Response(orjson.dumps(await request.state.pool.version()),
                    media_type="application/json")


routes = [
    *(Route(e.path, _handler(e), methods=["POST"]) for e in HTTP),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", model_card, methods=["GET"]),
    Route("/version", version, methods=["GET"]),
]
