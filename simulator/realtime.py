"""A minimal stand-in for vLLM's realtime WebSocket API (``/v1/realtime``).

The shape follows vLLM's: on connect the engine sends ``session.created``; the client
sends ``session.update`` with ``model``, ``input_audio_buffer.append`` events with
base64 audio and ``input_audio_buffer.commit``; a commit (not ``final``) answers with
one ``transcription.delta`` per chunk appended since the last commit (``" chunk<n>"``,
echoing nothing of the audio but its count) and a ``transcription.done`` with the whole
text and usage. On shutdown every open session is closed with 1012 (service restart),
as uvicorn closes vLLM's. Mistakes are ``{"type": "error", "error": <text>, "code": <code>}``
events, as vLLM sends them. ``vllm:websocket_connections_active`` counts open sockets,
as vLLM's metric of that name does, so tests can see a session end on the engine.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass, field

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CollectorRegistry, Gauge

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(eq=False)
class RealtimeState:
    model: str
    active: Gauge
    sockets: set[web.WebSocketResponse] = field(default_factory=set)


REALTIME_STATE = web.AppKey("realtime_state", RealtimeState)


def add_realtime(app: web.Application, model: str, registry: CollectorRegistry) -> None:
    """Serve ``/v1/realtime`` on ``app`` for ``model``; count sockets in ``registry``."""
    active = Gauge("vllm:websocket_connections_active",
                   "Number of currently active WebSocket connections.", registry=registry)
    app[REALTIME_STATE] = RealtimeState(model, active)
    app.router.add_get("/v1/realtime", realtime)
    app.on_shutdown.append(_close_all)


async def _close_all(app: web.Application) -> None:
    for ws in list(app[REALTIME_STATE].sockets):
        await ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"shutting down")


async def realtime(request: web.Request) -> web.WebSocketResponse:
    """``GET /v1/realtime``: one realtime session (see the module docstring)."""
    state = request.app[REALTIME_STATE]
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    state.active.inc()
    state.sockets.add(ws)
    try:
        await _send(ws, {"type": "session.created", "id": f"sess-{uuid.uuid4().hex}",
                         "created": int(time.time())})
        session = _Session(state.model)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                for event in session.handle(message.data):
                    await _send(ws, event)
            elif message.type is WSMsgType.BINARY:
                await _send(ws, _error("Invalid JSON", "invalid_json"))
    finally:
        state.sockets.discard(ws)
        state.active.dec()
    return ws


class _Session:
    def __init__(self, model: str) -> None:
        self._model = model
        self._validated = False
        self._chunks: list[int] = []
        self._audio_bytes = 0

    def handle(self, text: str) -> list[dict[str, object]]:
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [_error("Invalid JSON", "invalid_json")]
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "session.update":
            if event.get("model") != self._model:
                return [_error(f"The model `{event.get('model')}` does not exist.",
                               "model_not_found")]
            self._validated = True
            return []
        if kind == "input_audio_buffer.append":
            try:
                audio = base64.b64decode(str(event.get("audio", "")), validate=True)
            except (binascii.Error, ValueError):
                audio = b""
            if not audio:
                return [_error("Invalid audio data", "invalid_audio")]
            self._chunks.append(len(audio))
            self._audio_bytes += len(audio)
            return []
        if kind == "input_audio_buffer.commit":
            if not self._validated:
                return [_error("Model not validated. Make sure to validate the model by "
                               "sending a session.update event.", "model_not_validated")]
            return [] if event.get("final") else self._transcribe()
        return [_error(f"Unknown event type: {kind}", "unknown_event")]

    def _transcribe(self) -> list[dict[str, object]]:
        deltas = [f" chunk{n}" for n in range(1, len(self._chunks) + 1)]
        prompt = self._audio_bytes // 2
        self._chunks, self._audio_bytes = [], 0
        usage = {"prompt_tokens": prompt, "completion_tokens": len(deltas),
                 "total_tokens": prompt + len(deltas)}
        events: list[dict[str, object]] = [
            {"type": "transcription.delta", "delta": delta} for delta in deltas]
        events.append({"type": "transcription.done", "text": "".join(deltas), "usage": usage})
        return events


def _error(message: str, code: str) -> dict[str, object]:
    return {"type": "error", "error": message, "code": code}


async def _send(ws: web.WebSocketResponse, event: dict[str, object]) -> None:
    await ws.send_str(orjson.dumps(event).decode())
