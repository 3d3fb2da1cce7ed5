"""The server's WebSocket protocol: uvicorn's, except that a server shutting down leaves
an open session to the gateway's drain.

uvicorn's ``shutdown()`` closes every open WebSocket at once with 1012 (service restart)
as soon as the server stops accepting, cutting the requests in flight on it. Here an
open session goes on: the drain (:mod:`gateway.pipeline.drain`) closes a ``/v1/ws``
socket (1001) once its requests have ended, and a realtime session (1001) at the drain
deadline; uvicorn's graceful-shutdown timeout stays the backstop. A handshake not yet
answered is refused as uvicorn does. It reads two of the protocol's attributes
(``handshake_complete``, ``close_sent``); uvicorn is pinned in ``pyproject.toml``.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class DrainedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, drained by the app (see the module)."""

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent:
            return  # the app closes it when the drain says so
        super().shutdown()

