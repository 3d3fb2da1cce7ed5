"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.stores.redis_link import RedisLink
from gateway.upstream.pool import EngineState


async def health(request: Request) -> Response:
    """The gateway process is alive (says nothing about engines)."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    """200 when at least one engine serves a model and the gateway is not stopping,
    else 503, with the status; and, for whoever may see them, which process answered
    (one of several workers) and the engine list.

    A caller with a valid API key sees every engine in full (URL and last error
    included). Without one, the list leaves those two out, and when keys are set and
    ``observability.open`` is off there is neither pid nor list. With Redis configured,
    ``redis`` says whether it is up (and its last error, to key holders); its outage
    does not make the gateway unready: the stores fall back."""
    pool, drain, settings = request.state.pool, request.state.drain, request.state.settings
    ready = pool.ready and not drain.announced
    status = "draining" if drain.announced else "ready" if ready else "not_ready"
    body: dict[str, object] = {"status": status}
    full = getattr(request.state, "authenticated", False)
    if full or not settings.auth_required or settings.observability.open:
        body["pid"] = os.getpid()
        body["engines"] = [_engine(e, full=full) for e in pool.engines]
        redis: RedisLink | None = request.state.redis
        if redis is not None:
            body["redis"] = {"up": redis.up} | ({"last_error": redis.last_error} if full else {})
    return Response(orjson.dumps(body), status_code=200 if ready else 503,
                    media_type="application/json")


def _engine(engine: EngineState, *, full: bool) -> dict[str, object]:
    shown: dict[str, object] = {
        "name": engine.name, "healthy": engine.healthy, "models": sorted(engine.cards),
        "in_flight": engine.in_flight, "load": engine.load,
        "circuit": engine.breaker.state.value}
    if full:
        shown |= {"url": engine.client.base_url, "error": engine.last_error}
    return shown


async def metrics(request: Request) -> Response:
    return Response(await request.state.metrics.scrape(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
