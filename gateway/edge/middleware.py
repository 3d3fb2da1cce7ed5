"""Who is calling: API keys checked at the edge, for HTTP requests and WebSocket
handshakes alike (:mod:`gateway.edge.gate` runs the check once per request).

A key is one of the static ``api_keys`` (principal ``static-<index>``) or a managed key of
the key service in the lifespan state (``keys``; principal: its id; a revoked one is
refused). The request's state records whether a valid key came (``authenticated``), its
``principal`` and, for a managed key, its record (``api_key``).
"""

from __future__ import annotations

import hmac

from starlette.types import Scope

from gateway.core.errors import AuthenticationFailed, SluiceError
from gateway.core.keys import ApiKey
from gateway.edge.handshake import subprotocol_key
from gateway.edge.headers import header
from gateway.keys import KeyService

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs"})
"""Never need a key (the API description holds nothing about keys or engines)."""
OBSERVABILITY_PATHS = frozenset({"/ready", "/metrics"})
"""Need a key when keys are set, unless ``observability.open``; ``/ready`` then still
answers its status without one (a load balancer's probe has no key)."""
ADMIN_PREFIX = "/admin/"
"""The admin API checks its own token (see :mod:`gateway.edge.routes.admin`); API keys do
not open it."""


class Auth:
    """Requires ``Authorization: Bearer <key>`` when keys are configured (a WebSocket
    may send it as a ``bearer.<key>`` subprotocol instead, see
    :mod:`gateway.edge.handshake`; the exceptions: ``open_paths``, by default
    :data:`OPEN_PATHS`, :data:`OBSERVABILITY_PATHS` and the admin API)."""

    def __init__(self, *, api_keys: list[str], managed_keys: bool = False,
                 observability_open: bool = False,
                 open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.keys = [k.encode() for k in api_keys]
        self.required = bool(api_keys) or managed_keys
        self.managed = managed_keys
        self.observability_open = observability_open
        self.open_paths = open_paths

    async def check(self, scope: Scope) -> SluiceError | None:
        """Identify the caller into the scope's state; the refusal when it may not go on
        (a missing, invalid or revoked key; a 503 when the key store is down)."""
        state = scope["state"]
        state["authenticated"] = False
        state["principal"] = state["api_key"] = None
        path = scope["path"]
        if not self.required or path in self.open_paths or path.startswith(ADMIN_PREFIX):
            return None
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
                return exc
            if key is not None and key.revoked:
                refusal = "API key has been revoked"
            elif principal is not None:
                state.update(authenticated=True, principal=principal, api_key=key)
        if state["authenticated"] or path == "/ready" or (
                self.observability_open and path in OBSERVABILITY_PATHS):
            return None
        return AuthenticationFailed(refusal, key_sent=bool(sent))

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
    """The principal and managed key :class:`Auth` found for a request."""
    state = scope.get("state", {})
    return state.get("principal"), state.get("api_key")
