"""WebSockets to engines (vLLM's ``/v1/realtime``), over aiohttp: the production
transport's :meth:`~gateway.upstream.aiohttp_transport.AiohttpTransport.connect`.

The one place aiohttp's WebSocket errors become gateway errors: an engine that cannot
be reached is ``EngineUnavailable``, a handshake it refuses with a 4xx is
``UpstreamRejected`` (its status passed on), a 5xx or a handshake slower than
``connect_s`` an ``EngineError`` / ``EngineTimeout``. Messages are bounded by
``max_message_bytes``; the engine is pinged every ``heartbeat_s`` and the socket closed
when it stops answering.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from gateway.core.errors import EngineError, EngineTimeout, EngineUnavailable, UpstreamRejected
from gateway.upstream.transport import (
    BAD_GATEWAY,
    GOING_AWAY,
    MESSAGE_TOO_BIG,
    NO_HEADERS,
    Closed,
    EngineHeaders,
    sendable_close_code,
)


class EngineSocket:
    """One open WebSocket to an engine."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def receive(self) -> str | bytes | Closed:
        """The next message, or :class:`Closed` once the socket is closed (a message
        over the size limit closes it with 1009; a failure with 1014)."""
        message = await self._ws.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            return str(message.data)
        if message.type is aiohttp.WSMsgType.BINARY:
            return bytes(message.data)
        if message.type is aiohttp.WSMsgType.ERROR:
            code = getattr(message.data, "code", None)
            return Closed(MESSAGE_TOO_BIG if code == MESSAGE_TOO_BIG else BAD_GATEWAY)
        return Closed(self._ws.close_code if self._ws.close_code is not None
                      else BAD_GATEWAY)

    async def send(self, data: str | bytes) -> None:
        """Send one message; a socket already closed drops it (its close is coming)."""
        try:
            if isinstance(data, str):
                await self._ws.send_str(data)
            else:
                await self._ws.send_bytes(data)
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass

    async def close(self, code: int = GOING_AWAY) -> None:
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, RuntimeError):
            await self._ws.close(code=sendable_close_code(code, GOING_AWAY))


class WebSocketDialer:
    """Opens engine WebSockets from one aiohttp session (``max_sockets`` at most)."""

    def __init__(self, *, connect_s: float, max_message_bytes: int, heartbeat_s: float,
                 max_sockets: int) -> None:
        self._connect_s = connect_s
        self._max_message_bytes = max_message_bytes
        self._heartbeat_s = heartbeat_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_sockets),
            # The handshake is bounded by connect_s below; an open socket by heartbeats.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s))

    async def connect(self, url: str, engine: EngineHeaders = NO_HEADERS) -> EngineSocket:
        """Open a WebSocket to ``url`` (``ws://`` or ``http://``) with the engine's own
        headers (its API key)."""
        try:
            async with asyncio.timeout(self._connect_s):
                ws = await self._session.ws_connect(
                    url, max_msg_size=self._max_message_bytes, heartbeat=self._heartbeat_s,
                    autoping=True, headers=dict(engine.items))
        except TimeoutError as exc:
            raise EngineTimeout("engine did not accept the WebSocket in time") from exc
        except aiohttp.WSServerHandshakeError as exc:
            if 400 <= exc.status < 500:
                raise UpstreamRejected(
                    f"the engine refused the WebSocket (HTTP {exc.status})",
                    status=exc.status) from exc
            raise EngineError(f"engine error (HTTP {exc.status})") from exc
        except aiohttp.ClientError as exc:
            raise EngineUnavailable(f"engine unreachable: {type(exc).__name__}") from exc
        return EngineSocket(ws)

    async def aclose(self) -> None:
        await self._session.close()
