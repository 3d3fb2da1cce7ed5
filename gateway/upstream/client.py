"""Client for one engine's OpenAI-compatible HTTP API (vLLM's server, or the simulator).

The client speaks the engine protocol over a :class:`~gateway.upstream.transport.Transport`
and turns engine answers into the gateway's terms: a 4xx becomes ``UpstreamRejected``
(status, message, ``param`` and ``code`` passed on unchanged), a 5xx an ``EngineError``
whose message never carries the engine's body (it may be an HTML page with internals),
a malformed control answer an ``EngineError`` for that engine alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from gateway.config.settings import TimeoutSettings
from gateway.core.errors import EngineError, SluiceError, UpstreamRejected
from gateway.upstream.load import EngineLoad, parse_load
from gateway.upstream.transport import (
    NO_HEADERS,
    EngineHeaders,
    StreamTimeouts,
    Transport,
    UpstreamResponse,
    UpstreamSocket,
)

log = logging.getLogger("sluice.engines")

_JSON = {"Content-Type": "application/json"}
_ERROR_BODY_LIMIT = 64 * 1024
_MESSAGE_LIMIT = 1000


_EXCERPT_CHARS = 300
_SECRETS = re.compile(
    r"(?i)(bearer\s+|authorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?"
    r"|(?:api[_-]?key|token|secret|password|passwd)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
    r"|\bsk-[A-Za-z0-9_-]{6,}")


def excerpt(raw: bytes) -> str:
    """What a log line may say of an engine's error body: its start, with anything that
    looks like a credential (a bearer token, ``api_key=...``, ``sk-...``) redacted. An
    error page may echo a request's headers or the engine's own configuration."""
    text = raw[:_EXCERPT_CHARS * 2].decode("utf-8", "replace")
    text = _SECRETS.sub(lambda m: (m.group(1) or "") + "[redacted]", text)
    return repr(text[:_EXCERPT_CHARS])


def upstream_error(status: int, raw: bytes) -> SluiceError:
    """Translate an engine's error response (vLLM or OpenAI shape) into the tree."""
    if not 400 <= status < 500:
        return EngineError(f"engine error (HTTP {status})")
    message = f"the engine rejected the request (HTTP {status})"
    param: str | None = None
    code: str | int | None = None
    error_type: str | None = None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        nested = body.get("error")
        err: dict[str, Any] = nested if isinstance(nested, dict) else body
        if isinstance(err.get("message"), str) and err["message"]:
            message = err["message"][:_MESSAGE_LIMIT]
        param = err.get("param") if isinstance(err.get("param"), str) else None
        code = err.get("code")
        if not isinstance(code, (str, int)) or isinstance(code, bool):
            code = None
        if isinstance(err.get("type"), str) and err["type"]:
            error_type = err["type"][:100]
    return UpstreamRejected(message, status=status, param=param, code=code,
                            error_type=error_type)


class EngineClient:
    """Talks to one engine."""

    def __init__(self, name: str, base_url: str, transport: Transport,
                 timeouts: TimeoutSettings, *, max_answer_bytes: int = 64 * 1024 * 1024,
                 headers: EngineHeaders = NO_HEADERS) -> None:
        self.name = name
        self._headers = headers
        self.base_url = base_url.rstrip("/")
        self._transport = transport
        self._timeouts = StreamTimeouts(timeouts.connect_s, timeouts.first_token_s,
                                        timeouts.between_tokens_s, timeouts.total_s)
        self.max_answer_bytes = max_answer_bytes

    @asynccontextmanager
    async def open(self, path: str, payload: bytes, *, streamed: bool,
                   headers: dict[str, str] | None = None) -> AsyncIterator[UpstreamResponse]:
        """POST ``payload``; yields a 200 response, raises for any other status. The
        response is closed when the block ends (aborted upstream if unfinished)."""
        response = await self._transport.post(
            self.base_url + path, payload, {**_JSON, **(headers or {})}, self._timeouts,
            streamed=streamed, engine=self._headers)
        try:
            if response.status != 200:
                raw = await response.read(_ERROR_BODY_LIMIT)
                if response.status >= 500:
                    log.warning("engine %s answered HTTP %d: %s", self.name, response.status,
                                excerpt(raw))
                raise upstream_error(response.status, raw)
            yield response
        finally:
            response.close()

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter (``/v1/load_lora_adapter``). One the engine already holds
        (a 400 saying so: another gateway loaded it) counts as loaded."""
        payload = orjson.dumps({"lora_name": name, "lora_path": path})
        try:
            async with self.open("/v1/load_lora_adapter", payload, streamed=False) as answer:
                await answer.read(_ERROR_BODY_LIMIT)
        except UpstreamRejected as exc:
            if not (exc.status_code == 400 and "already been loaded" in exc.message):
                raise

    async def unload_adapter(self, name: str) -> bool:
        """Unload a LoRA adapter (``/v1/unload_lora_adapter``): True when it did, False
        when the engine did not hold it (404)."""
        payload = orjson.dumps({"lora_name": name})
        try:
            async with self.open("/v1/unload_lora_adapter", payload, streamed=False) as answer:
                await answer.read(_ERROR_BODY_LIMIT)
        except UpstreamRejected as exc:
            if exc.status_code != 404:
                raise
            return False
        return True

    async def websocket(self, path: str, query: str = "") -> UpstreamSocket:
        """A WebSocket to the engine's ``path`` (``query`` passed on as it is)."""
        url = self.base_url.replace("http", "ws", 1) + path
        return await self._transport.connect(url + (f"?{query}" if query else ""),
                                             self._headers)

    async def _get(self, path: str) -> bytes:
        status, raw = await self._transport.get(self.base_url + path, self._headers)
        if status != 200:
            raise upstream_error(status, raw)
        return raw

    async def health(self) -> bool:
        """True when ``/health`` answers 200."""
        status, _ = await self._transport.get(self.base_url + "/health", self._headers)
        return status == 200

    async def get_object(self, path: str) -> dict[str, Any]:
        """A control ``GET`` (e.g. ``/version``) whose answer must be a JSON object."""
        raw = await self._get(path)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise EngineError(f"engine's {path} is not JSON") from exc
        if not isinstance(body, dict):
            raise EngineError(f"engine's {path} is not a JSON object")
        return body

    async def models(self) -> list[dict[str, Any]]:
        """The model cards of ``/v1/models`` (base model and loaded LoRA adapters)."""
        raw = await self._get("/v1/models")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise EngineError("engine's /v1/models is not JSON") from exc
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise EngineError("engine's /v1/models has no 'data' list")
        return [card for card in data
                if isinstance(card, dict) and isinstance(card.get("id"), str)]

    async def load(self) -> EngineLoad:
        """The engine's queue, KV usage and prefix-cache counters from ``/metrics``."""
        return parse_load(await self._get("/metrics"))
