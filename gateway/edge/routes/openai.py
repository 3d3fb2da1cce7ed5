"""OpenAI-compatible routes: chat completions, completions, models (aliases included)."""

from __future__ import annotations

import asyncio
import time

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.cache import read_directives
from gateway.core.context import CHAT, COMPLETIONS, PIN_HEADER_KEY, Endpoint, RequestContext
from gateway.core.errors import SluiceError
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


async def _generate(request: Request, endpoint: Endpoint) -> Response:
    ctx = await new_context(request, endpoint)
    if ctx is None:
        return Response(status_code=CLIENT_CLOSED)
    read_directives(ctx.cache, header(request.scope, b"cache-control"),
                    header(request.scope, b"x-sluice-cache"))
    keepalive_s = request.state.settings.streaming.keepalive_s
    ctx.start_early = keepalive_s > 0
    watch = ClientWatch(request.receive)
    director_counts(request)
    try:
        result = await request.state.director.generate(ctx)
    except asyncio.CancelledError:
        await watch.close()
        if watch.absorb_cancel():
            return Response(status_code=CLIENT_CLOSED)
        raise
    except SluiceError as exc:
        await watch.close()
        exc.headers.update(generation_headers(ctx))
        raise
    except BaseException:
        await watch.close()
        raise
    headers = generation_headers(ctx)
    if isinstance(result, StartedStream):
        return SSEStreamResponse(
            result.body, watch, head=result.head,
            headers=[(k.encode(), v.encode()) for k, v in headers.items()],
            keepalive_s=keepalive_s if result.waiting else 0.0)
    await watch.close()
    return Response(result, media_type="application/json", headers=headers)


def generation_headers(ctx: RequestContext, *, cache: bool = True) -> dict[str, str]:
    """The request's route headers (:meth:`RequestContext.route_headers`) and, for a
    route the cache serves, ``x-sluice-cache`` (hit, miss, coalesced or bypass)."""
    route = ctx.route_headers()
    return {"x-sluice-cache": ctx.cache.result, **route} if cache else route


async def chat_completions(request: Request) -> Response:
    return await _generate(request, CHAT)


async def completions(request: Request) -> Response:
    return await _generate(request, COMPLETIONS)


async def list_models(request: Request) -> Response:
    cards = request.state.pool.models()
    cards += request.state.versions.cards({card["id"] for card in cards})
    return Response(orjson.dumps({"object": "list", "data": cards}),
                    media_type="application/json")


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
