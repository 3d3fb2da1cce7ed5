"""CORS: browsers on other origins may call the gateway, as far as the settings allow.

The edge (:mod:`gateway.edge.gate`) answers a preflight (``OPTIONS`` with
``Access-Control-Request-Method``) before authentication and routing (a browser sends it
without the key): 204 with what may be sent, or 403 for an origin not allowed. Other
requests from an allowed origin go on as usual and their response start gets
``Access-Control-Allow-Origin`` and ``Access-Control-Expose-Headers`` (the gateway's own
response headers a page may read). A request without ``Origin`` (SDKs, curl) costs one
header lookup.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from gateway.core.errors import PermissionDenied
from gateway.edge.handlers import error_response
from gateway.edge.headers import header

ALLOWED_METHODS = b"GET, POST, OPTIONS"
EXPOSED_HEADERS = (b"x-request-id, retry-after, server-timing, x-sluice-engine, x-sluice-cache, "
                   b"x-sluice-version, x-sluice-fallback-from")
"""Readable by a page: the request id, when to come back (429, 503), the gateway's
phases before the first byte, and the engine that answered."""


class Cors:
    """``allowed_origins``: exact origins (``https://app.example``), or ``*`` for any.
    ``allowed_headers``: request headers a page may send; one ending in ``*`` allows every
    header starting with the rest (``x-stainless-*``: the OpenAI SDKs' own headers)."""

    def __init__(self, *, allowed_origins: list[str], allowed_headers: list[str],
                 max_age_s: int) -> None:
        self.any_origin = "*" in allowed_origins
        self.origins = frozenset(allowed_origins)
        self.headers = ", ".join(h.lower() for h in allowed_headers if not h.endswith("*"))
        self.prefixes = tuple(h[:-1].lower() for h in allowed_headers if h.endswith("*"))
        self.max_age = str(max_age_s).encode()

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def response_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        """What an allowed origin's response start gets. Timing-Allow-Origin: the page's
        Resource Timing entries get Server-Timing too."""
        allow = self._allow(origin)
        return [*allow, (b"access-control-expose-headers", EXPOSED_HEADERS),
                (b"timing-allow-origin", allow[0][1])]

    def _allow(self, origin: str) -> list[tuple[bytes, bytes]]:
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin")]

    async def preflight(self, origin: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a preflight: 204 with what may be sent, or 403 for an origin not
        allowed."""
        if not self.allows(origin):
            refusal = PermissionDenied(f"origin {origin[:200]!r} may not call this gateway",
                                       code="cors_origin_not_allowed")
            await error_response(refusal)(scope, receive, send)
            return
        allow_headers = self.headers
        requested = header(scope, b"access-control-request-headers")
        if requested and self.prefixes:
            extra = [name for name in (h.strip().lower() for h in requested.split(","))
                     if name.startswith(self.prefixes)]
            allow_headers = ", ".join([allow_headers, *extra]) if extra else allow_headers
        await send({"type": "http.response.start", "status": 204, "headers": [
            *self._allow(origin),
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-allow-headers", allow_headers.encode("latin-1")),
            (b"access-control-max-age", self.max_age),
        ]})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
