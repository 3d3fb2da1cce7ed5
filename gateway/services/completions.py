"""Generation requests: validate, pick an engine, call it, relay and account.

Before the first byte reaches the client, an engine that cannot be reached is marked
down and the request goes to the next candidate (up to ``retries`` times). The first
upstream read happens before the response starts, so a failure there is still an
ordinary HTTP error. After it, the stream is committed: a failure becomes one error
event followed by ``data: [DONE]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import (
    ContextLengthExceeded,
    EngineError,
    EngineUnavailable,
    SluiceError,
)
from gateway.metrics import GatewayMetrics
from gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    _GenerationRequest,
    validate,
)
from gateway.services.engine_pool import EnginePool, EngineState
from gateway.services.relay import SSERelay, Usage

log = logging.getLogger("sluice.completions")

_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    model: type[_GenerationRequest]


CHAT = Endpoint("chat", "/v1/chat/completions", ChatCompletionRequest)
COMPLETIONS = Endpoint("completions", "/v1/completions", CompletionRequest)


@dataclass
class _Call:
    """One request's bookkeeping, from arrival to the end of its answer."""

    endpoint: Endpoint
    model: str
    """The requested model, for routing and logs."""
    label: str
    """The ``model`` label of its metrics: the model, or ``unknown`` when no engine has
    it (client-chosen names must not grow the metrics without bound)."""
    started: float
    engine: str = "none"
    status: str = "200"
    finished: bool = False


@dataclass(frozen=True)
class StartedStream:
    """A stream whose first output is known; ``body`` is started, so closing it
    always runs its cleanup."""

    head: bytes
    body: AsyncGenerator[bytes, None]


class CompletionService:
    """Serves ``/v1/chat/completions`` and ``/v1/completions``."""

    def __init__(self, pool: EnginePool, metrics: GatewayMetrics, *, retries: int) -> None:
        self._pool = pool
        self._metrics = metrics
        self._retries = retries

    async def generate(self, endpoint: Endpoint, body: dict[str, Any],
                       started: float) -> bytes | StartedStream:
        """JSON bytes for a non-streamed request, an SSE byte stream for a streamed one."""
        model = body.get("model")
        model = model if isinstance(model, str) else ""
        call = _Call(endpoint, model, self._pool.model_label(model), started)
        self._metrics.in_flight.labels(call.label).inc()
        try:
            request = validate(endpoint.model, body)
            self._check_budget(request)
            payload = dict(body)
            if request.stream:
                payload["stream_options"] = {**(body.get("stream_options") or {}),
                                             "include_usage": True}
                return await self._open_stream(call, orjson.dumps(payload),
                                               forward_usage=request.wants_usage)
            return await self._complete(call, orjson.dumps(payload))
        except BaseException as exc:
            self._finish(call, exc)
            raise

    def _check_budget(self, request: _GenerationRequest) -> None:
        budget, limit = request.output_budget, self._pool.max_model_len(request.model)
        if budget is not None and limit is not None and budget > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {budget} output tokens.", param="max_tokens")

    async def _complete(self, call: _Call, payload: bytes) -> bytes:
        for engine in self._engines(call):
            with self._pool.lease(engine):
                try:
                    raw = await engine.client.post(call.endpoint.path, payload)
                except EngineUnavailable as exc:
                    self._on_unreachable(call, engine, exc)
                    continue
            usage = orjson.loads(raw).get("usage") if raw.startswith(b"{") else None
            self._finish(call, None, Usage.from_openai(usage or {}))
            return raw
        raise AssertionError("unreachable: _engines raises when candidates run out")

    async def _open_stream(self, call: _Call, payload: bytes,
                           *, forward_usage: bool) -> StartedStream:
        for engine in self._engines(call):
            stack = AsyncExitStack()
            try:
                stack.enter_context(self._pool.lease(engine))
                stream = await stack.enter_async_context(
                    engine.client.stream(call.endpoint.path, payload))
                chunks = stream.chunks()
                first = await anext(chunks, b"")
            except EngineUnavailable as exc:
                await stack.aclose()
                self._on_unreachable(call, engine, exc)
                continue
            except BaseException:
                await stack.aclose()
                raise
            body = self._relay(call, stack, chunks, first, SSERelay(forward_usage=forward_usage))
            return StartedStream(await anext(body), body)
        raise AssertionError("unreachable: _engines raises when candidates run out")

    def _engines(self, call: _Call) -> Iterator[EngineState]:
        candidates = self._pool.candidates(call.model)
        tries = candidates[: self._retries + 1]
        for index, engine in enumerate(tries):
            if index:
                self._metrics.retries.labels(call.label).inc()
            call.engine = engine.name
            yield engine
        raise EngineUnavailable(f"no engine serving '{call.model}' could be reached "
                                f"({len(tries)} tried)")

    def _on_unreachable(self, call: _Call, engine: EngineState, exc: SluiceError) -> None:
        log.warning("engine %s unreachable for %s: %s", engine.name, call.model, exc.message)
        self._pool.mark_failed(engine, exc)

    async def _relay(self, call: _Call, stack: AsyncExitStack, chunks: AsyncIterator[bytes],
                     first: bytes, relay: SSERelay) -> AsyncGenerator[bytes, None]:
        itl = self._metrics.itl.labels(call.label)
        error: BaseException | None = None
        try:
            out = relay.feed(first)
            last = time.perf_counter()
            self._metrics.ttft.labels(call.label).observe(last - call.started)
            yield out  # the head: yielded even when empty, so the generator is started
            async for data in chunks:
                now = time.perf_counter()
                itl.observe(now - last)
                last = now
                out = relay.feed(data)
                if out:
                    yield out
            if not relay.done:
                raise EngineError("engine closed the stream before it finished")
        except SluiceError as exc:
            error = exc
            log.warning("stream from %s failed after first byte: %s", call.engine, exc.message)
            yield exc.sse_event() + _DONE
        except BaseException as exc:  # cancelled by a client disconnect, or closed
            error = exc
            raise
        finally:
            await stack.aclose()
            self._finish(call, error, relay.usage)

    def _finish(self, call: _Call, error: BaseException | None,
                usage: Usage | None = None) -> None:
        if call.finished:
            return
        call.finished = True
        m = self._metrics
        if isinstance(error, SluiceError):
            call.status = str(error.status_code)
        elif error is not None:
            call.status = "499"
            m.client_disconnects.labels(call.label).inc()
        m.in_flight.labels(call.label).dec()
        m.requests.labels(call.label, call.engine, call.endpoint.name, call.status).inc()
        m.e2e.labels(call.label, call.endpoint.name).observe(time.perf_counter() - call.started)
        if usage is not None:
            m.tokens.labels(call.label, "prompt").inc(usage.prompt_tokens)
            m.tokens.labels(call.label, "completion").inc(usage.completion_tokens)
