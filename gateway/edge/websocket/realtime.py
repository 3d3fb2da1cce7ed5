"""``/v1/realtime``: vLLM's realtime WebSocket API, relayed to one engine.

vLLM's realtime API (streaming transcription) is a WebSocket at ``/v1/realtime``: the
engine sends ``session.created``, the client sends ``session.update`` naming the model,
then ``input_audio_buffer.append`` / ``input_audio_buffer.commit`` events, and gets
``transcription.delta`` / ``transcription.done`` (or ``error``) events back.

The gateway needs the model before it can pick an engine:

- ``/v1/realtime?model=<name>``: the engine is picked and its socket opened before the
  client's handshake is answered, so an unknown model is a 404, no healthy engine a
  503, an engine that refuses the socket its own 4xx, all in OpenAI's shape.
- without ``?model=``: the client's socket is accepted and its first message must be
  a ``session.update`` that names the model (``"model"``, as vLLM reads it, or
  ``"session": {"model"}``) within ``realtime_first_message_s``; that message is then
  the first one the engine gets. A problem is an ``error`` event in vLLM's shape
  (``{"type": "error", "error": <text>, "code": <code>}``) and a close. A client that
  waits for ``session.created`` before it sends anything must use ``?model=``.

A model alias is resolved as over HTTP (its policy's split, sticky caller, the
``x-sluice-version`` pin header of the handshake, the fallback chain): the session goes
to the chosen version's engines, ``model`` in the query and in every ``session.update``
naming the alias is rewritten to the name they serve, and a handshake answered after
``?model=`` carries ``x-sluice-version`` (and ``x-sluice-engine``).

A session is one request of the ``realtime`` endpoint through the director's run, like
any other (:meth:`~gateway.pipeline.director.Director.run`): refused while the gateway
drains, its key checked and its model allowed, counted against the key's requests per
minute, admitted under the model's admission limit (it holds its slot while it lasts),
and its finish hooks run when it ends (metrics by model and version, the per-version
tallies of rollouts; a server error when the engine's socket failed). The usage the
engine reports (``transcription.done`` events carry one) is the session's, charged to the
key's tokens per minute when it ends. The engine's socket is opened through the
connector's schedule-and-retry loop (the transport's WebSocket seam).

After that the session is pinned to that engine and every message passes through as it
is, text or binary, both ways; the query string is passed on to the engine. Either
side's close closes the other with the same code (1014, bad gateway, when the engine's
socket failed; 1009 when it sent a message over ``max_message_bytes``). The session
counts as a request in flight on its engine while it lasts, and is drained like a stream:
it goes on while the gateway stops until the drain deadline, when both sockets are closed
(1001, going away; see :mod:`gateway.pipeline.drain`); at most
``max_realtime_sessions`` run at once (past that the handshake is refused with a 429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.types import Scope
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gateway.config.connections import WebSocketSettings
from gateway.core.context import PIN_HEADER_KEY, RequestContext
from gateway.core.endpoints import REALTIME
from gateway.core.errors import EngineError, Overloaded, SluiceError, echo
from gateway.edge.handshake import chosen_subprotocol, refuse
from gateway.edge.headers import header
from gateway.edge.middleware import caller
from gateway.edge.websocket.holds import Holds, holder
from gateway.edge.websocket.realtime_events import (
    count_usage,
    error_event,
    model_of,
    models_named,
    renamed,
)
from gateway.observability.logs import REQUEST_ID
from gateway.pipeline.connector import Connector
from gateway.pipeline.director import Director
from gateway.pipeline.drain import Drain
from gateway.upstream.pool import EnginePool
from gateway.upstream.transport import (
    BAD_GATEWAY,
    GOING_AWAY,
    Closed,
    UpstreamSocket,
    sendable_close_code,
)

log = logging.getLogger("sluice.realtime")

POLICY_VIOLATION = 1008
NORMAL = 1000
TRY_AGAIN_LATER = 1013


class RealtimeRelay:
    """Relays realtime sessions to engines (see the module docstring)."""

    def __init__(self, connector: Connector, pool: EnginePool, director: Director,
                 settings: WebSocketSettings, drain: Drain) -> None:
        self._connector = connector
        self._drain = drain
        self._pool = pool
        self._director = director
        self._settings = settings
        self.sessions = 0
        self._held = Holds(settings.max_realtime_sessions_per_key)
        """Sessions open per caller: its key's principal, or its address without keys."""

    async def serve(self, websocket: WebSocket) -> None:
        """Run one client's session, from its handshake to the last close."""
        scope = websocket.scope
        who = holder(scope)
        refusal = None
        if self.sessions >= self._settings.max_realtime_sessions:
            refusal = Overloaded(f"{self.sessions} realtime sessions are open; retry shortly")
        elif self._held.full(who):
            refusal = Overloaded(f"this caller already holds {self._held.held(who)} realtime "
                                 f"sessions (at most {self._held.most} per key, or per "
                                 "address without keys); close one first")
        if refusal is not None:
            await refuse(refusal, scope, websocket.receive, websocket.send)
            return
        self.sessions += 1
        try:
            with self._held.hold(who):
                await self._serve(websocket)
        finally:
            self.sessions -= 1

    async def _serve(self, websocket: WebSocket) -> None:
        scope = websocket.scope
        model = websocket.query_params.get("model")
        first: str | None = None
        if not model:
            await websocket.accept(subprotocol=chosen_subprotocol(scope))
            opening = await self._first_message(websocket)
            if opening is None:
                return
            first, model = opening
        principal, key = caller(scope)
        ctx = RequestContext.new(f"rt-{uuid.uuid4().hex[:12]}", REALTIME, {"model": model},
                                 principal=principal, key=key,
                                 session_key=header(scope, b"x-session-id"))
        ctx.pinned_version = header(scope, PIN_HEADER_KEY)
        REQUEST_ID.set(ctx.id)  # the session's log lines
        client = scope.get("client")
        ctx.client = client[0] if client else None

        async def answer(ctx: RequestContext) -> None:
            await self._session(websocket, ctx, first)

        try:
            await self._director.run(ctx, answer)
        except SluiceError as exc:
            if websocket.application_state is WebSocketState.CONNECTING:
                exc.headers.update(ctx.route_headers())
                await refuse(exc, scope, websocket.receive, websocket.send)
            elif websocket.application_state is WebSocketState.CONNECTED:
                await self._fail(websocket, exc)

    async def _session(self, websocket: WebSocket, ctx: RequestContext,
                       first: str | None) -> None:
        """The session's answer step: open the engine's socket (answering the handshake
        when it is still open, i.e. ``first`` is None) and relay until one side closes.
        Raises what the session failed with (the client has been told)."""
        upstream = await self._connector.dial(ctx, _query(websocket.scope, ctx))
        try:
            if first is None:
                await websocket.accept(
                    subprotocol=chosen_subprotocol(websocket.scope),
                    headers=[(k.encode(), v.encode()) for k, v in ctx.route_headers().items()])
            with self._pool.lease(upstream.engine):
                log.debug("realtime session for %s on %s", ctx.model, upstream.engine.name)
                if first is not None:
                    await upstream.socket.send(_renamed(first, ctx))
                failed = await self._relay(websocket, upstream.socket, ctx)
        finally:
            await upstream.socket.close()
        if failed is not None:
            raise failed

    async def _first_message(self, websocket: WebSocket) -> tuple[str, str] | None:
        """The first message and the model it names; None (the client told, the socket
        closed) when it names none in time."""
        try:
            async with asyncio.timeout(self._settings.realtime_first_message_s):
                message = await websocket.receive()
        except TimeoutError:
            await self._close(websocket, "no session.update naming the model came in "
                              f"{self._settings.realtime_first_message_s:g} s; send one, "
                              "or connect with ?model=", "model_required")
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        try:
            model = model_of(orjson.loads(text)) if text is not None else None
        except orjson.JSONDecodeError:
            model = None
        if text is None or model is None:
            await self._close(websocket, "the first message must be a session.update "
                              "naming the model (or connect with ?model=)", "model_required")
            return None
        if any(other != model for other in models_named(text) or ()):
            await self._close(websocket, "the session.update names two different models",
                              "model_mismatch")
            return None
        return text, model

    async def _relay(self, websocket: WebSocket, upstream: UpstreamSocket,
                     ctx: RequestContext) -> SluiceError | None:
        """Pass messages both ways until one side closes; then close the other. An
        engine socket that failed is the session's error. At the drain deadline both are
        closed (1001)."""
        to_engine = asyncio.create_task(self._client_to_engine(websocket, upstream, ctx))
        to_client = asyncio.create_task(self._engine_to_client(websocket, upstream, ctx))
        expired: list[bool] = []

        def expire() -> None:  # the drain deadline: both sides are told 1001
            expired.append(True)
            to_engine.cancel()

        token = self._drain.register(expire)
        try:
            done, _ = await asyncio.wait((to_engine, to_client),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._drain.unregister(token)
            for task in (to_engine, to_client):
                task.cancel()
            await asyncio.gather(to_engine, to_client, return_exceptions=True)
        if expired:
            await upstream.close(GOING_AWAY)
            await self._close_client(websocket, GOING_AWAY)
        elif to_engine in done:
            await upstream.close(_outcome(to_engine, GOING_AWAY) or GOING_AWAY)
        elif to_client in done:
            code = _outcome(to_client, BAD_GATEWAY)
            if code is not None:
                await self._close_client(websocket, sendable_close_code(code, BAD_GATEWAY))
            if code == BAD_GATEWAY:
                return EngineError("the engine's realtime socket failed")
        return None

    async def _client_to_engine(self, websocket: WebSocket, upstream: UpstreamSocket,
                                ctx: RequestContext) -> int:
        """Until the client closes: its close code. Every client message is checked
        first: the session's key not revoked since (else an error event, 1008, the
        engine's socket closed), and a ``session.update`` naming no other model than
        the session's (else an error event, and it is not passed on)."""
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return sendable_close_code(message.get("code"), NORMAL)
            if ctx.key is not None and self._director.key_revoked(ctx.key):
                await self._close(websocket, "API key has been revoked", "invalid_api_key")
                return GOING_AWAY
            text = message.get("text")
            if text is None:
                await upstream.send(message.get("bytes") or b"")
                continue
            named = models_named(text)
            other = [m for m in named or () if m not in (ctx.requested_model, ctx.model)]
            if other:
                await websocket.send_text(error_event(
                    f"this session serves '{echo(ctx.requested_model)}'; a session.update "
                    f"may not name another model ({echo(str(other[0]))}): open another "
                    "session for it", "model_mismatch"))
                continue
            await upstream.send(_renamed(text, ctx))

    @staticmethod
    async def _engine_to_client(websocket: WebSocket, upstream: UpstreamSocket,
                                ctx: RequestContext) -> int | None:
        """Until the engine closes: its close code; None when the client is gone."""
        while True:
            item = await upstream.receive()
            if isinstance(item, Closed):
                return item.code
            if isinstance(item, str) and '"usage"' in item:
                count_usage(ctx, item)
            message = {"type": "websocket.send", "text": item} if isinstance(item, str) \
                else {"type": "websocket.send", "bytes": item}
            try:
                await websocket.send(message)
            except (WebSocketDisconnect, OSError, RuntimeError):
                return None

    async def _fail(self, websocket: WebSocket, exc: SluiceError) -> None:
        status = exc.status_code
        code = TRY_AGAIN_LATER if status in (429, 503) else \
            POLICY_VIOLATION if 400 <= status < 500 else BAD_GATEWAY
        await self._close(websocket, exc.message, str(exc.code) if exc.code else None,
                          close_code=code)

    async def _close(self, websocket: WebSocket, message: str, error_code: str | None, *,
                     close_code: int = POLICY_VIOLATION) -> None:
        """Tell the client what went wrong (an ``error`` event), then close."""
        try:
            await websocket.send_text(error_event(message, error_code))
        except (WebSocketDisconnect, OSError, RuntimeError):
            return
        await self._close_client(websocket, close_code)

    @staticmethod
    async def _close_client(websocket: WebSocket, code: int) -> None:
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await websocket.close(code)


def _renamed(text: str, ctx: RequestContext) -> str:
    """A client message as the engine must get it (see :func:`renamed`)."""
    return text if ctx.version is None else renamed(text, ctx.requested_model, ctx.model)


def _query(scope: Scope, ctx: RequestContext) -> str:
    """The client's query string for the engine: ``model`` naming an alias is made to
    name the version's served model; anything else as sent."""
    query = str(scope.get("query_string", b"").decode("latin-1"))
    if ctx.version is None:
        return query
    return urlencode([(k, ctx.model if k == "model" and v == ctx.requested_model else v)
                      for k, v in parse_qsl(query, keep_blank_values=True)])


def _outcome(task: asyncio.Task[int | None], failed: int) -> int | None:
    """A finished pump's close code; ``failed`` when the pump itself failed."""
    if task.cancelled():
        return failed
    error = task.exception()
    if error is not None:
        log.warning("realtime relay ended by an error: %r", error)
        return failed
    return task.result()
