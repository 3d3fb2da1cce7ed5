"""The ``/v1/ws`` message protocol: reading client frames, writing server messages.

Client → server (text frames, one JSON object each)::

    {"id": "r1", "type": "chat.completions", "body": {...OpenAI request...}}
    {"id": "r2", "type": "completions", "body": {...}, "version": "v2"}
    {"id": "r1", "type": "cancel"}

``version`` pins a request to a model alias's version, as the ``x-sluice-version``
header does over HTTP (the socket's handshake may carry that header too: it pins every
request of the socket that names no version of its own).

Server → client::

    {"id": "r1", "type": "chunk", "data": <the chunk object SSE would carry>}
    {"id": "r1", "type": "done", "usage": {...}}        # usage when the engine sent it
    {"id": "r1", "type": "done", "version": "v2"}       # an alias: the version that served
    {"id": "r1", "type": "error", "error": {OpenAI error object}}
    {"id": "r1", "type": "cancelled"}
    {"id": null, "type": "error", "error": {...}}       # a frame that started nothing

Every request ends with exactly one of ``done``, ``error`` or ``cancelled``. An error
tagged with an id ends that id's request (or refuses it); an error with ``"id": null``
answers a frame that could not start a request (not JSON, binary, unknown type, a bad
or in-flight id). Chunks are passed on as the engine's bytes, never re-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.core.endpoints import CHAT, COMPLETIONS, Endpoint
from gateway.core.errors import InvalidRequest, SluiceError
from gateway.core.protocol import parse_body

ENDPOINTS = {"chat.completions": CHAT, "completions": COMPLETIONS}
"""Request types and the pipeline endpoint each runs as."""
MAX_ID_CHARS = 128


class FrameError(InvalidRequest):
    """A client frame that cannot be acted on. ``request_id`` is the id the error is
    tagged with: the refused request's, or None when the frame started nothing."""

    def __init__(self, message: str, *, request_id: str | None = None,
                 param: str | None = None, code: str = "invalid_message") -> None:
        super().__init__(message, param=param, code=code)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Start:
    """Start request ``id`` on ``endpoint`` with ``body`` (streaming forced on),
    pinned to ``version`` of an alias when it names one."""

    id: str
    endpoint: Endpoint
    body: dict[str, Any]
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    id: str


def read_frame(text: str) -> Start | Cancel:
    """The action of one text frame; :class:`FrameError` when there is none. Whether
    the id is already in flight is the caller's to check."""
    try:
        envelope = parse_body(text.encode())
    except SluiceError as exc:
        raise FrameError(f"the message is not a usable JSON object: {exc.message}",
                         param=exc.param) from exc
    request_id = envelope.get("id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_CHARS:
        raise FrameError(f"'id' must be a string of 1 to {MAX_ID_CHARS} characters",
                         param="id")
    kind = envelope.get("type")
    if kind == "cancel":
        return Cancel(request_id)
    endpoint = ENDPOINTS.get(kind) if isinstance(kind, str) else None
    if endpoint is None:
        raise FrameError("'type' must be one of chat.completions, completions, cancel",
                         param="type", code="unknown_type")
    body = envelope.get("body")
    if not isinstance(body, dict):
        raise FrameError("'body' must be a JSON object (the OpenAI request)",
                         request_id=request_id, param="body")
    version = envelope.get("version")
    if version is not None and (not isinstance(version, str) or not version):
        raise FrameError("'version' must be a non-empty string (a version of the alias "
                         "the body names)", request_id=request_id, param="version")
    return Start(request_id, endpoint, {**body, "stream": True}, version)


class Tagged:
    """The messages of one request, with its id encoded once."""

    def __init__(self, request_id: str | None) -> None:
        self._head = b'{"id":' + orjson.dumps(request_id) + b',"type":'

    def chunk(self, payload: bytes) -> bytes:
        return self._head + b'"chunk","data":' + payload + b"}"

    def done(self, usage: dict[str, int] | None, cache: str | None = None, *,
             version: str | None = None, fallback_from: str | None = None) -> bytes:
        """The request's last message: its usage when known, what the response cache
        did (``hit``, ``miss`` or ``coalesced``) when the request was cacheable, and for
        a model alias the version that served (and ``fallback_from``, the version chosen
        first when it was down)."""
        tail = b"" if usage is None else b',"usage":' + orjson.dumps(usage)
        for name, value in (("cache", cache), ("version", version),
                            ("fallback_from", fallback_from)):
            if value is not None:
                tail += b',"' + name.encode() + b'":' + orjson.dumps(value)
        return self._head + b'"done"' + tail + b"}"

    def error(self, error: SluiceError) -> bytes:
        return self.error_payload(error.to_json())

    def error_payload(self, payload: bytes) -> bytes:
        """An error from its ``{"error": {...}}`` JSON (the stream session's error event)."""
        return self._head + b'"error",' + payload[1:]

    def cancelled(self) -> bytes:
        return self._head + b'"cancelled"}'


def is_error_event(payload: bytes) -> bool:
    """Whether a streamed payload is the gateway's error event (which ends a stream):
    the stream session writes it as ``{"error": ...}``, and engine events carrying an
    error are never passed on."""
    return payload.startswith(b'{"error":')
