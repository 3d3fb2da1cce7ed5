"""Generation requests: admit, validate, route, call an engine, relay and account.

The first upstream read happens before the response starts, so any failure up to then
is an ordinary HTTP error, and may be retried on another engine (:mod:`.upstream`).
After it the stream is committed: when its engine breaks, the stream is continued on
another engine from the text already sent (:mod:`.failover`); when that is impossible,
the client gets one error event followed by ``data: [DONE]``. (An engine sends a
non-streamed answer only when it is complete, so its failures are all "before the first
byte" and retried like any other.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.drain import Drain
from gateway.errors import (
    ContextLengthExceeded,
    EngineError,
    Overloaded,
    ShuttingDown,
    SluiceError,
)
from gateway.fleet_settings import ResilienceSettings
from gateway.metrics import GatewayMetrics
from gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    validate,
)
from gateway.routing.router import Router
from gateway.services.admission import Admission
from gateway.services.engine_pool import EnginePool
from gateway.services.failover import continuation, first_id, read_transcript
from gateway.services.relay import SSERelay, Usage
from gateway.services.upstream import Attempt, Connector, Target

log = logging.getLogger("sluice.completions")

_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    model: type[GenerationRequest]


CHAT = Endpoint("chat", "/v1/chat/completions", ChatCompletionRequest)
COMPLETIONS = Endpoint("completions", "/v1/completions", CompletionRequest)


@dataclass
class _Call:
    """One request's bookkeeping, from arrival to the end of its answer."""

    endpoint: Endpoint
    target: Target
    started: float
    status: str = "200"
    admitted: bool = False
    finished: bool = False
    tried: set[str] = field(default_factory=set)
    """Engines this request was sent to (a retry or a continuation goes elsewhere)."""

    @property
    def label(self) -> str:
        """The ``model`` label of its metrics: the model, or ``unknown`` when no engine
        has it (client-chosen names must not grow the metrics without bound)."""
        return self.target.label


@dataclass(frozen=True)
class StartedStream:
    """A stream whose first output is known; ``body`` is started, so closing it
    always runs its cleanup."""

    head: bytes
    body: AsyncGenerator[bytes, None]


class CompletionService:
    """Serves ``/v1/chat/completions`` and ``/v1/completions``."""

    def __init__(self, pool: EnginePool, router: Router, admission: Admission, drain: Drain,
                 metrics: GatewayMetrics, settings: ResilienceSettings) -> None:
        self._pool = pool
        self._router = router
        self._admission = admission
        self._drain = drain
        self._metrics = metrics
        self._settings = settings
        self._upstream = Connector(pool, router, drain, metrics, settings)

    async def generate(self, endpoint: Endpoint, body: dict[str, Any], started: float,
                       session_key: str | None = None) -> bytes | StartedStream:
        """JSON bytes for a non-streamed request, an SSE byte stream for a streamed one."""
        model = body.get("model")
        model = model if isinstance(model, str) else ""
        user = body.get("user")
        key = session_key or (user if isinstance(user, str) else None)
        route = self._router.request(model, body, key)
        call = _Call(endpoint, Target(model, self._pool.model_label(model), endpoint.path,
                                      route), started)
        self._metrics.in_flight.labels(call.label).inc()
        try:
            if self._drain.draining:
                raise ShuttingDown()
            request = validate(endpoint.model, body)
            self._check_budget(request)
            self._admission.enter(model, self._pool.healthy_count(model))
            call.admitted = True
            payload = dict(body)
            if request.stream:
                payload["stream_options"] = {**(body.get("stream_options") or {}),
                                             "include_usage": True}
                return await self._open_stream(call, payload, forward_usage=request.wants_usage)
            return await self._complete(call, orjson.dumps(payload))
        except BaseException as exc:
            if isinstance(exc, Overloaded):
                self._metrics.admission_rejections.labels(call.label).inc()
            self._finish(call, exc)
            raise

    def _check_budget(self, request: GenerationRequest) -> None:
        budget, limit = request.output_budget, self._pool.max_model_len(request.model)
        if budget is not None and limit is not None and budget > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {budget} output tokens.", param="max_tokens")

    async def _complete(self, call: _Call, payload: bytes) -> bytes:
        attempt = await self._upstream.open(call.target, payload, call.tried)
        try:
            raw = b"".join([attempt.first, *[data async for data in attempt.chunks]])
        except SluiceError as exc:
            self._upstream.engine_failed(attempt.engine, exc)
            raise
        finally:
            await attempt.stack.aclose()
        usage = orjson.loads(raw).get("usage") if raw.startswith(b"{") else None
        self._finish(call, None, Usage.from_openai(usage or {}))
        return raw

    async def _open_stream(self, call: _Call, payload: dict[str, Any],
                           *, forward_usage: bool) -> StartedStream:
        attempt = await self._upstream.open(call.target, orjson.dumps(payload), call.tried)
        relay = SSERelay(forward_usage=forward_usage, keep=self._settings.failover)
        body = self._relay(call, payload, attempt, relay)
        return StartedStream(await anext(body), body)

    async def _relay(self, call: _Call, payload: dict[str, Any], attempt: Attempt,
                     relay: SSERelay) -> AsyncGenerator[bytes, None]:
        itl = self._metrics.itl.labels(call.label)
        error: BaseException | None = None
        rewrite: tuple[bytes, bytes] | None = None
        continued = 0
        try:
            out = relay.feed(attempt.first)
            last = time.perf_counter()
            self._metrics.ttft.labels(call.label).observe(last - call.started)
            yield out  # the head: yielded even when empty, so the generator is started
            while True:
                try:
                    async for data in attempt.chunks:
                        now = time.perf_counter()
                        itl.observe(now - last)
                        last = now
                        out = relay.feed(_rewritten(data, rewrite))
                        if out:
                            yield out
                    if not relay.done:
                        raise EngineError("engine closed the stream before it finished")
                    return
                except SluiceError as exc:
                    if self._drain.expired:
                        raise ShuttingDown("the gateway shut down before the answer "
                                           "finished") from exc
                    log.warning("stream from %s broke after the first byte: %s",
                                attempt.engine.name, exc.message)
                    self._upstream.engine_failed(attempt.engine, exc)
                    await attempt.stack.aclose()
                    follow = await self._continue(call, payload, relay, continued, exc)
                    if isinstance(follow, bytes):  # the answer was complete after all
                        yield follow
                        return
                    attempt, rewrite = follow
                    continued += 1
                    out = relay.feed(_rewritten(attempt.first, rewrite))
                    if out:
                        yield out
        except SluiceError as exc:
            error = exc
            yield exc.sse_event() + _DONE
        except BaseException as exc:  # cancelled by a client disconnect, or closed
            error = exc
            raise
        finally:
            await attempt.stack.aclose()
            self._finish(call, error, relay.usage)

    async def _continue(self, call: _Call, payload: dict[str, Any], relay: SSERelay,
                        continued: int, cause: SluiceError
                        ) -> tuple[Attempt, tuple[bytes, bytes] | None] | bytes:
        """A new attempt that continues the broken stream (and the id rewrite that makes
        its chunks look like the first stream's), ``[DONE]`` when nothing was missing
        but the end, or raise ``cause`` when it cannot be continued."""
        transcript = read_transcript(relay.kept or (), chat=call.endpoint is CHAT)
        if transcript.finished and transcript.obstacle is None:
            self._metrics.failovers.labels(call.label, "completed").inc()
            return _DONE
        follow: dict[str, Any] | str = "failover is off"
        if self._settings.failover and continued < self._settings.max_failovers:
            follow = continuation(payload, transcript, chat=call.endpoint is CHAT)
        if isinstance(follow, str):
            log.warning("cannot continue the stream of %s: %s", call.target.model, follow)
            self._metrics.failovers.labels(call.label, "error_event").inc()
            raise cause
        try:
            attempt = await self._upstream.open(call.target, orjson.dumps(follow), call.tried)
        except SluiceError as exc:
            self._metrics.failovers.labels(call.label, "error_event").inc()
            raise cause from exc
        relay.restart()
        relay.usage_shift = transcript.tokens
        self._metrics.failovers.labels(call.label, "continued").inc()
        new_id, old_id = first_id(attempt.first), transcript.stream_id
        rewrite = None
        if new_id and old_id and new_id != old_id:
            rewrite = (b'"id":"' + new_id + b'"', b'"id":"' + old_id + b'"')
        log.info("stream of %s continued on %s after %d tokens", call.target.model,
                 attempt.engine.name, transcript.tokens)
        return attempt, rewrite

    def _finish(self, call: _Call, error: BaseException | None,
                usage: Usage | None = None) -> None:
        if call.finished:
            return
        call.finished = True
        if call.admitted:
            self._admission.leave(call.target.model)
        m = self._metrics
        if isinstance(error, SluiceError):
            call.status = str(error.status_code)
        elif error is not None:
            call.status = "499"
            m.client_disconnects.labels(call.label).inc()
        m.in_flight.labels(call.label).dec()
        m.requests.labels(call.label, call.target.engine, call.endpoint.name, call.status).inc()
        m.e2e.labels(call.label, call.endpoint.name).observe(time.perf_counter() - call.started)
        if usage is not None:
            m.tokens.labels(call.label, "prompt").inc(usage.prompt_tokens)
            m.tokens.labels(call.label, "completion").inc(usage.completion_tokens)


def _rewritten(data: bytes, rewrite: tuple[bytes, bytes] | None) -> bytes:
    """A continued stream's bytes with its chunk id replaced by the first stream's."""
    return data if rewrite is None else data.replace(*rewrite)
