"""OpenAI-compatible routes: every endpoint answered by engines (chat, completions and
the rest of vLLM's OpenAI server, routed by the body's ``model``), the model list and
cards (aliases included), and the engines' version.

One handler serves every POST endpoint (:class:`EngineEndpoint`, the hot path: pure
ASGI, dispatched to by the edge before any router).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.cache import read_directives, serves
from gateway.core.context import PIN_HEADER_KEY, RequestContext
from gateway.core.endpoints import HTTP, Endpoint
from gateway.core.errors import ModelNotFound, SluiceError, echo
from gateway.core.protocol import check_media_type, parse_body
from gateway.edge.accounting import director_counts
from gateway.edge.handlers import error_response
from gateway.edge.headers import header
from gateway.edge.streaming import ClientWatch, SSEStreamResponse
from gateway.pipeline.adapter_registry import AdapterRegistry
from gateway.pipeline.director import StartedStream

CLIENT_CLOSED = 499  # nobody reads it; it is what the access log records

log = logging.getLogger("sluice.errors")


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client left while sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class EngineEndpoint:
    """The handler (pure ASGI) of one endpoint answered by engines: read the body into a
    request context, hand it to :meth:`Director.run
    <gateway.pipeline.director.Director.run>` with the engine answer step, and send the
    result: a JSON response or an event stream. A route the cache serves reads its
    request headers and answers with ``x-sluice-cache``. Errors become OpenAI error
    responses here (the edge dispatches to it before any router)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.cached = serves(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._answer(scope, receive, send)
        except SluiceError as exc:
            await error_response(exc)(scope, receive, send)
        except Exception as exc:
            log.exception("unhandled error on POST %s", scope["path"], exc_info=exc)
            await error_response(SluiceError("internal gateway error"))(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.perf_counter()
        check_media_type(header(scope, b"content-type"))
        raw = await read_body(receive)
        if raw is None:
            await _closed(send)
            return
        state = scope["state"]
        ctx = RequestContext.new(state["request_id"], self.endpoint, parse_body(raw),
                                 arrived=arrived, session_key=header(scope, b"x-session-id"),
                                 principal=state.get("principal"), key=state.get("api_key"))
        ctx.pinned_version = header(scope, PIN_HEADER_KEY)
        client = scope.get("client")
        ctx.client = client[0] if client else None
        state["ctx"] = ctx  # for the access line
        if self.cached:
            read_directives(ctx.cache, header(scope, b"cache-control"),
                            header(scope, b"x-sluice-cache"))
        keepalive_s = state["settings"].streaming.keepalive_s
        ctx.start_early = keepalive_s > 0
        watch = ClientWatch(receive)
        director_counts(scope)
        try:
            result = await state["director"].run(ctx, state["answer"])
        except asyncio.CancelledError:
            await watch.close()
            if watch.absorb_cancel():
                await _closed(send)
                return
            raise
        except SluiceError as exc:
            await watch.close()
            exc.headers.update(generation_headers(ctx, cache=self.cached))
            raise
        except BaseException:
            await watch.close()
            raise
        headers = [(k.encode("latin-1"), v.encode("latin-1"))
                   for k, v in generation_headers(ctx, cache=self.cached).items()]
        if isinstance(result, StartedStream):
            response = SSEStreamResponse(
                result.body, watch, head=result.head, headers=headers,
                keepalive_s=keepalive_s if result.waiting else 0.0,
                framed=not self.endpoint.chunks)
            await response(scope, receive, send)
            return
        await watch.close()
        body = result or b"{}"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})


async def _closed(send: Send) -> None:
    """What the access log records for a client that left: nobody reads it."""
    await send({"type": "http.response.start", "status": CLIENT_CLOSED, "headers": [
        (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def generation_headers(ctx: RequestContext, *, cache: bool = True) -> dict[str, str]:
    """The request's route headers (:meth:`RequestContext.route_headers`) and, for a
    route the cache serves, ``x-sluice-cache`` (hit, miss, coalesced or bypass)."""
    route = ctx.route_headers()
    return {"x-sluice-cache": ctx.cache.result, **route} if cache else route


ENDPOINTS = {e.path: EngineEndpoint(e) for e in HTTP}
"""The handler of every POST endpoint answered by engines, by path (the edge dispatches
to them directly; the router has them too, for its 405 on other methods)."""


def _cards(request: Request) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every served model's card and each registered LoRA adapter's (loaded yet or not,
    ``parent`` its base); and each model alias's (when some version of it is served)."""
    registry: AdapterRegistry = request.state.adapters
    adapters = registry.cards(int(time.time()))
    registered = {card["id"] for card in adapters}
    cards = [c for c in request.state.pool.models() if c["id"] not in registered]
    cards += adapters
    return cards, request.state.versions.cards({card["id"] for card in cards})


async def list_models(request: Request) -> Response:
    cards, aliases = _cards(request)
    return Response(orjson.dumps({"object": "list", "data": [*cards, *aliases]}),
                    media_type="application/json")


async def model_card(request: Request) -> Response:
    """A model alias's card, a served model's, or a registered adapter's."""
    model_id = request.path_params["model_id"]
    cards, aliases = _cards(request)
    for card in (*aliases, *cards):
        if card["id"] == model_id:
            return Response(orjson.dumps(card), media_type="application/json")
    raise ModelNotFound(f"The model '{echo(model_id)}' does not exist.", param="model")


async def version(request: Request) -> Response:
    return Response(orjson.dumps(await request.state.pool.version()),
                    media_type="application/json")


routes = [
    *(Route(path, handler, methods=["POST"]) for path, handler in ENDPOINTS.items()),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", model_card, methods=["GET"]),
    Route("/version", version, methods=["GET"]),
]
