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

from gateway.core.errors import AuthenticationFailed, RequestTooLarge, SluiceError
from gateway.edge.handlers import error_response
from gateway.edge.handshake import refuse, subprotocol_key
from gateway.edge.headers import header
from gateway.keys import ApiKey, KeyService

access_log = logging.getLogger("sluice.access")

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs"})
"""Never need a key (the API description holds nothing about keys or engines)."""
OBSERVABILITY_PATHS = frozenset({"/ready", "/metrics"})
"""Need a key when keys are set, unless ``observability.open``; ``/ready`` then still
answers its status without one (a load balancer's probe has no key)."""
ADMIN_PREFIX = "/admin/"
"""The admin API checks its own token (see :mod:`gateway.edge.routes.admin`); API keys do
not open it."""


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
                        "key_id": scope["state"].get("principal"),
                    })


class AuthMiddleware:
    """Requires ``Authorization: Bearer <key>`` when keys are configured (a WebSocket
    may send it as a ``bearer.<key>`` subprotocol instead, see
    :mod:`gateway.edge.handshake`; the exceptions: ``open_paths``, by default
    :data:`OPEN_PATHS`, :data:`OBSERVABILITY_PATHS` and the admin API).

    A key is one of the static ``api_keys`` (principal ``static-<index>``) or a managed
    key of the key service in the lifespan state (``keys``; principal: its id; a revoked
    one is refused). Records in the request's state whether a valid key came
    (``authenticated``), its ``principal`` and, for a managed key, its record
    (``api_key``)."""

    def __init__(self, app: ASGIApp, *, api_keys: list[str], managed_keys: bool = False,
                 observability_open: bool = False,
                 open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.required = bool(api_keys) or managed_keys
        self.managed = managed_keys
        self.observability_open = observability_open
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["authenticated"] = False
        state["principal"] = state["api_key"] = None
        path = scope["path"]
        if not self.required or path in self.open_paths or path.startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        sent = header(scope, b"authorization") or ""
        scheme, _, token = sent.partition(" ")
        if not sent and scope["type"] == "websocket":
            offered = subprotocol_key(scope)  # browsers: Sec-WebSocket-Protocol
            if offered is not None:
                sent, scheme, token = "subprotocol", "bearer", offered
        token = token.strip()
        refusal = "missing API key" if not sent else "invalid API key"
        if scheme.lower() == "bearer" and token:
            try:
                principal, key = await self._identify(token, state.get("keys"))
            except SluiceError as exc:  # the key store is down: 503, never a 500
                if scope["type"] == "websocket":
                    await refuse(exc, scope, receive, send)
                else:
                    await _reject(exc, scope, receive, send)
                return
            if key is not None and key.revoked:
                refusal = "API key has been revoked"
            elif principal is not None:
                state.update(authenticated=True, principal=principal, api_key=key)
        if state["authenticated"] or path == "/ready" or (
                self.observability_open and path in OBSERVABILITY_PATHS):
            await self.app(scope, receive, send)
            return
        error = AuthenticationFailed(refusal, key_sent=bool(sent))
        if scope["type"] == "websocket":
            await refuse(error, scope, receive, send)
            return
        await _reject(error, scope, receive, send)

    async def _identify(self, token: str,
                        service: KeyService | None) -> tuple[str | None, ApiKey | None]:
        """The principal a token is, and its managed record (None for a static key)."""
        token_bytes = token.encode()
        # Every static key is compared (no early exit), so timing says nothing about which.
        matches = [hmac.compare_digest(token_bytes, key) for key in self.keys]
        if any(matches):
            return f"static-{matches.index(True)}", None
        if self.managed and service is not None:
            key = await service.identify(token)
            if key is not None:
                return key.id, key
        return None, None


def caller(scope: Scope) -> tuple[str | None, ApiKey | None]:
    """The principal and managed key :class:`AuthMiddleware` found for a request."""
    state = scope.get("state", {})
    return state.get("principal"), state.get("api_key")


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
