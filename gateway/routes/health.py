"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def health(request: Request) -> Response:
    """The gateway process is alive (says nothing about engines)."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    """200 when at least one engine serves a model and the gateway is not draining,
    else 503; lists every engine, and says which process answered (one of several
    workers)."""
    pool = request.state.pool
    engines = [
        {"name": e.name, "url": e.client.base_url, "healthy": e.healthy,
         "models": sorted(e.cards), "in_flight": e.in_flight, "load": e.load,
         "circuit": e.breaker.state.value, "error": e.last_error}
        for e in pool.engines
    ]
    ready = pool.ready and not request.state.drain.draining
    status = "draining" if request.state.drain.draining else "ready" if ready else "not_ready"
    body = {"status": status, "pid": os.getpid(), "engines": engines}
    return Response(orjson.dumps(body), status_code=200 if ready else 503,
                    media_type="application/json")


async def metrics(request: Request) -> Response:
    return Response(request.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
