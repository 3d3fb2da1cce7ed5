"""WebSocket routes: ``/v1/ws`` (multiplexed generation requests) and ``/v1/realtime``
(vLLM's realtime API, relayed to one engine)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.config.settings import Settings
from gateway.core.context import PIN_HEADER_KEY
from gateway.core.errors import Overloaded
from gateway.edge.handshake import (
    POLICY_VIOLATION,
    chosen_subprotocol,
    origin_refusal,
    refuse,
)
from gateway.edge.headers import header
from gateway.edge.middleware import caller
from gateway.edge.websocket.holds import Holds, holder
from gateway.edge.websocket.mux import KeyRevoked, Multiplexer, SocketClosed
from gateway.edge.websocket.realtime import RealtimeRelay
from gateway.pipeline.drain import Drain
from gateway.upstream.transport import GOING_AWAY


async def _admitted(websocket: WebSocket, settings: Settings) -> bool:
    """Refuse a browser handshake from a foreign origin (see the handshake module)."""
    refusal = origin_refusal(websocket.scope, keys_set=settings.auth_required,
                             allowed=settings.websocket.allowed_origins)
    if refusal is None:
        return True
    await refuse(refusal, websocket.scope, websocket.receive, websocket.send)
    return False


async def requests_socket(websocket: WebSocket) -> None:
    settings: Settings = websocket.state.settings
    if not await _admitted(websocket, settings):
        return
    sockets: Holds = websocket.state.sockets
    who = holder(websocket.scope)
    if sockets.full(who):
        await refuse(Overloaded(
            f"this caller already holds {sockets.held(who)} /v1/ws sockets (at most "
            f"{sockets.most} per key, or per address without keys); close one first"),
            websocket.scope, websocket.receive, websocket.send)
        return
    with sockets.hold(who):
        await _serve_requests(websocket, settings)


async def _serve_requests(websocket: WebSocket, settings: Settings) -> None:
    await websocket.accept(subprotocol=chosen_subprotocol(websocket.scope))

    async def send(message: bytes) -> None:
        try:
            await websocket.send({"type": "websocket.send", "text": message.decode()})
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            raise SocketClosed from exc

    principal, key = caller(websocket.scope)
    mux = Multiplexer(websocket.state.director, websocket.state.answer, send,
                      socket_id=uuid.uuid4().hex[:12],
                      max_requests=settings.websocket.max_requests_per_socket,
                      session_key=header(websocket.scope, b"x-session-id"),
                      principal=principal, key=key,
                      pinned_version=header(websocket.scope, PIN_HEADER_KEY),
                      client=websocket.client.host if websocket.client else None)
    closing: list[asyncio.Task[None]] = []

    def going_away() -> None:  # the drain began and nothing is in flight on this socket
        if not closing:
            closing.append(asyncio.create_task(_close_quietly(websocket, GOING_AWAY)))

    drain: Drain = websocket.state.drain
    token = drain.on_begin(lambda: mux.end_when_idle(going_away))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await mux.text(message["text"])
            else:
                await mux.binary()
    except KeyRevoked:
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await websocket.close(POLICY_VIOLATION)
    except SocketClosed:
        return
    finally:
        drain.unregister(token)
        await mux.close()
        for task in closing:
            await task


async def _close_quietly(websocket: WebSocket, code: int) -> None:
    with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
        await websocket.close(code)


async def realtime_socket(websocket: WebSocket) -> None:
    if not await _admitted(websocket, websocket.state.settings):
        return
    relay: RealtimeRelay = websocket.state.realtime
    await relay.serve(websocket)


routes = [
    WebSocketRoute("/v1/ws", requests_socket),
    WebSocketRoute("/v1/realtime", realtime_socket),
]
