"""Pure-ASGI middleware: request id and access log, API-key auth, body size limit.

Pure ASGI (not BaseHTTPMiddleware) so that streamed responses pass through with one
cheap function call per message and no extra tasks or buffering.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import AuthenticationFailed, RequestTooLarge, SluiceError
from gateway.handlers import error_response
from gateway.headers import header
from gateway.websocket.handshake import refuse, subprotocol_key

access_log = logging.getLogger("sluice.access")

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs"})
"""Never need a key (the API description holds nothing about keys or engines)."""
OBSERVABILITY_PATHS = frozenset({"/ready", "/metrics"})
"""Need a key when keys are set, unless ``observability.open``; ``/ready`` then still
answers its status without one (a load balancer's probe has no key)."""


class RequestContextMiddleware:
    """Gives every request an id (``x-request-id``, kept if the client sent one) and
    writes one access-log line when the response ends."""

    def __init__(self, app: ASGIApp, *, log_requests: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = header(scope, b"x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()),
                                      (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.log_requests:
                access_log.info(
                    "request", extra={
                        "request_id": request_id, "method": scope["method"],
                        "path": scope["path"], "status": status or 500,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    })


class AuthMiddleware:
    """Requires ``Authorization: Bearer <key>`` when keys are configured (a WebSocket
    may send it as a ``bearer.<key>`` subprotocol instead, see
    :mod:`gateway.websocket.handshake`; the exceptions: ``open_paths``, by default
    :data:`OPEN_PATHS`, and :data:`OBSERVABILITY_PATHS`). Records in the request's state
    whether a valid key came (``authenticated``)."""

    def __init__(self, app: ASGIApp, *, api_keys: list[str],
                 observability_open: bool = False,
                 open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.observability_open = observability_open
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["authenticated"] = False
        path = scope["path"]
        if not self.keys or path in self.open_paths:
            await self.app(scope, receive, send)
            return
        sent = header(scope, b"authorization") or ""
        scheme, _, token = sent.partition(" ")
        if not sent and scope["type"] == "websocket":
            offered = subprotocol_key(scope)  # browsers: Sec-WebSocket-Protocol
            if offered is not None:
                sent, scheme, token = "subprotocol", "bearer", offered
        token_bytes = token.strip().encode()
        # Every key is compared (no early exit), so timing says nothing about which.
        matches = [hmac.compare_digest(token_bytes, key) for key in self.keys]
        state["authenticated"] = scheme.lower() == "bearer" and any(matches)
        if state["authenticated"] or path == "/ready" or (
                self.observability_open and path in OBSERVABILITY_PATHS):
            await self.app(scope, receive, send)
            return
        error = AuthenticationFailed(
            "missing API key" if not sent else "invalid API key", key_sent=bool(sent))
        if scope["type"] == "websocket":
            await refuse(error, scope, receive, send)
            return
        await _reject(error, scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, whether or not they declare
    a Content-Length."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _reject(self._too_large(), scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(f"request body is larger than {self.max_bytes} bytes")


async def _reject(error: SluiceError, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(error)(scope, receive, send)
