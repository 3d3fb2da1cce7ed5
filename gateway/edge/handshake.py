"""The WebSocket opening handshake: API keys in subprotocols, origins, refusals.

Browsers cannot set an ``Authorization`` header on a WebSocket, so a key may also come
as a subprotocol: ``Sec-WebSocket-Protocol: sluice, bearer.<key>``. The server then
accepts with ``sluice`` (never echoing the key). A refused handshake is an HTTP error
in OpenAI's shape (401, 403, 503, ...) where the server can send one (the ASGI
``websocket.http.response`` extension, which uvicorn has), else a close with 1008.

Without API keys anyone who can reach the gateway may use it, and a WebSocket is not
covered by CORS: any web page could open one to a gateway on the visitor's machine or
network. So without keys a browser's handshake (one with an ``Origin``) is refused
unless the origin is listed in ``websocket.allowed_origins`` or is the gateway's own
address: the scheme matching the socket's (``http`` for ``ws``, ``https`` for ``wss``),
the port the connection came in on, and the host the connection's local IP address (or
``localhost`` on a loopback address). The ``Host`` header is not trusted for this: a
DNS-rebinding page sends its own name in both ``Origin`` and ``Host``.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send

from gateway.core.errors import PermissionDenied, SluiceError
from gateway.edge.handlers import error_response
from gateway.edge.headers import header

SUBPROTOCOL = "sluice"
BEARER_PREFIX = "bearer."
POLICY_VIOLATION = 1008


def subprotocol_key(scope: Scope) -> str | None:
    """The API key offered as a ``bearer.<key>`` subprotocol, if any."""
    for offered in scope.get("subprotocols", ()):
        if offered.startswith(BEARER_PREFIX):
            return str(offered[len(BEARER_PREFIX):])
    return None


def chosen_subprotocol(scope: Scope) -> str | None:
    """``sluice`` when the client offered it, else none (never a key)."""
    return SUBPROTOCOL if SUBPROTOCOL in scope.get("subprotocols", ()) else None


def origin_refusal(scope: Scope, *, keys_set: bool,
                   allowed: list[str]) -> SluiceError | None:
    """Why a browser's handshake from another origin is refused (see the module
    docstring); None when it may go on."""
    origin = header(scope, b"origin")
    if keys_set or origin is None or "*" in allowed or origin.lower() in {
            one.lower() for one in allowed}:
        return None
    if own_origin(origin, scope):
        return None
    return PermissionDenied(
        f"WebSocket connections from origin {origin[:200]!r} are not allowed; list it "
        "in websocket.allowed_origins or configure API keys", code="origin_not_allowed")


_SCHEMES = {"ws": "http", "wss": "https"}


def own_origin(origin: str, scope: Scope) -> bool:
    """Whether ``origin`` is the gateway's own address (see the module docstring)."""
    server = scope.get("server")
    if not server:
        return False
    try:
        parts = urlsplit(origin)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    if parts.scheme != _SCHEMES.get(scope.get("scheme", "ws")) or port != server[1]:
        return False
    try:
        local = ipaddress.ip_address(server[0])
    except ValueError:  # a Unix socket's path: no address to match
        return False
    if host == "localhost":
        return local.is_loopback
    try:
        return ipaddress.ip_address(host) == local
    except ValueError:  # a name: only a configured origin may be one
        return False


async def refuse(error: SluiceError, scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a handshake: the HTTP error when the server can send one, else 1008."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await error_response(error)(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": POLICY_VIOLATION,
                    "reason": error.message[:120]})
