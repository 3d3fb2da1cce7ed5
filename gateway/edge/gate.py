"""The gateway's ASGI entry: one pure-ASGI pass at the edge, then the handler.

Every HTTP request and WebSocket handshake goes through :class:`Edge` once:

1. a request id (``x-request-id``, kept if the client sent a short printable one, else
   made up; every log line of the request carries it, :mod:`gateway.observability.logs`),
   and the access-log line when the response ends (for a generation request also its
   model, version, engine, tokens, time to first token and outcome; probes at debug);
2. CORS: a preflight answered here, an allowed origin's response given its headers
   (:mod:`gateway.edge.cors`);
3. the API key (:mod:`gateway.edge.middleware`): a refusal is a 401 (a WebSocket
   handshake's is an HTTP refusal or a close, :mod:`gateway.edge.handshake`);
4. the body size: a declared ``Content-Length`` over ``max_body_bytes`` is a 413 at once,
   a body that grows past it while read is one too;
5. dispatch: a POST to an endpoint answered by engines goes straight to its handler
   (:mod:`gateway.edge.routes.openai`); everything else to the Starlette router (admin,
   models, health, docs, playground, WebSockets), which maps the exception tree to
   responses (:mod:`gateway.edge.handlers`);
6. a POST to such an endpoint that the director never took (refused above, not JSON, a
   client gone while sending) is counted in ``sluice_requests_total`` here.

One pass, not a chain of middleware: each wrapper layer (its call, its ``send`` wrapper,
its task switches) was measured as per-request CPU, and the endpoints answered by
engines are the hot path. A streamed body's chunks skip the ``send`` wrapper
altogether: once the response has started they go to the server's own ``send``
(:data:`~gateway.edge.streaming.SERVER_SEND`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.context import RequestContext
from gateway.core.endpoints import Endpoint
from gateway.core.errors import RequestTooLarge, SluiceError
from gateway.edge.accounting import counted_by_director
from gateway.edge.cors import Cors
from gateway.edge.handlers import error_response
from gateway.edge.handshake import refuse
from gateway.edge.headers import header
from gateway.edge.middleware import Auth
from gateway.edge.streaming import SERVER_SEND
from gateway.observability.logs import REQUEST_ID
from gateway.observability.metrics import GatewayMetrics

access_log = logging.getLogger("sluice.access")
PROBES = frozenset({"/health", "/ready", "/metrics"})
"""Paths polled by orchestrators and scrapers: their access lines are at debug."""


MAX_REQUEST_ID = 128
"""The longest ``X-Request-Id`` kept from a client (vLLM's own are shorter)."""
_ID_CHARS = frozenset(range(0x21, 0x7F))
"""Printable ASCII, no space: what an id may hold to be echoed, logged and sent on."""


def client_request_id(scope: Scope) -> str | None:
    """The client's ``X-Request-Id`` when it is 1 to :data:`MAX_REQUEST_ID` printable
    ASCII characters; None otherwise (one is made up): an id is echoed to the client,
    written to logs and sent to the engine, which refuses long ones."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            raw = bytes(value)
            if 0 < len(raw) <= MAX_REQUEST_ID and _ID_CHARS.issuperset(raw):
                return raw.decode("ascii")
            return None
    return None


class Edge:
    """The app a server runs (see the module docstring). ``router`` serves what is not
    dispatched here, and runs the lifespan; ``hot`` maps an engine-answered endpoint's
    path to its handler and endpoint."""

    def __init__(self, router: Starlette, *, hot: Mapping[str, tuple[ASGIApp, Endpoint]],
                 auth: Auth, cors: Cors, metrics: GatewayMetrics, max_body_bytes: int,
                 log_requests: bool = True) -> None:
        self.router = router
        self.hot = dict(hot)
        self.auth = auth
        self.cors = cors
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.log_requests = log_requests

    @property
    def routes(self) -> list[BaseRoute]:
        """Every route the app serves (the hot endpoints are among the router's)."""
        return self.router.routes

    @property
    def state(self) -> State:
        """The router's app state (``state.drain``: what a server calls on SIGTERM)."""
        return self.router.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            scope.setdefault("state", {})
            refusal = await self.auth.check(scope)
            if refusal is not None:
                await refuse(refusal, scope, receive, send)
                return
            await self.router(scope, receive, send)
        else:
            await self.router(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SERVER_SEND] = send
        state = scope.setdefault("state", {})
        request_id = client_request_id(scope) or os.urandom(16).hex()
        state["request_id"] = request_id
        REQUEST_ID.set(request_id)  # this request's task and those it starts
        added = [(b"x-request-id", request_id.encode("latin-1"))]
        started = time.perf_counter()
        status = 0
        origin = header(scope, b"origin")
        method = scope["method"]
        if origin is not None:
            if method == "OPTIONS" and header(scope, b"access-control-request-method"):
                await self.cors.preflight(origin, scope, receive, send)
                return
            if self.cors.allows(origin):
                added += self.cors.response_headers(origin)

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        hot = self.hot.get(scope["path"]) if method == "POST" else None
        try:
            refusal = await self.auth.check(scope)
            if refusal is None:
                refusal = self._declared_too_large(scope)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send_with_headers)
                return
            limited = self._limited(receive)
            if hot is not None:
                await hot[0](scope, limited, send_with_headers)
            else:
                await self.router(scope, limited, send_with_headers)
        finally:
            if hot is not None and not counted_by_director(scope):
                self.metrics.requests.labels("unknown", "none", "none", hot[1].name,
                                             str(status or 500)).inc()
            if self.log_requests:
                level = logging.DEBUG if scope["path"] in PROBES else logging.INFO
                if access_log.isEnabledFor(level):
                    access_log.log(level, "request", extra=_access_fields(
                        request_id, method, scope["path"], status or 500,
                        time.perf_counter() - started, state))

    def _declared_too_large(self, scope: Scope) -> SluiceError | None:
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large()
        return None

    def _limited(self, receive: Receive) -> Receive:
        """``receive``, raising :class:`RequestTooLarge` once the body read passes the
        bound (a body that declared no length, or lied about it)."""
        received = 0
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large()
            return message

        return limited_receive

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(f"request body is larger than {self.max_body_bytes} bytes")


def _access_fields(request_id: str, method: str, path: str, status: int, took_s: float,
                   state: dict[str, object]) -> dict[str, object]:
    """The access line's fields; a generation request's (its context in ``state``) also
    say where it went and how it ended."""
    fields: dict[str, object] = {
        "request_id": request_id, "method": method, "path": path, "status": status,
        "duration_ms": round(took_s * 1000, 2), "key_id": state.get("principal")}
    ctx = state.get("ctx")
    if isinstance(ctx, RequestContext):
        timings = ctx.timings
        fields.update({
            "model": ctx.requested_model or None, "version": ctx.version,
            "engine": None if ctx.engine == "none" else ctx.engine, "tokens": ctx.tokens,
            "ttft_ms": None if timings.first_byte is None
            else round((timings.first_byte - timings.arrived) * 1000, 2),
            "outcome": "client_left" if ctx.outcome.client_left else ctx.outcome.status,
            "cache": ctx.cache.result if ctx.cache.key is not None else None})
    return fields
