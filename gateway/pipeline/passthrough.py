"""The rest of vLLM's OpenAI server, routed by ``model`` through the same pipeline.

Responses, embeddings, tokenization, scoring, reranking and pooling requests are
forwarded as sent (the gateway reads only ``model`` and, for ``/v1/responses``,
``stream``) with what chat and completions get: the director's resolve of a model alias
(the version chosen by the alias's policy; the body's ``model`` becomes the name its
engines serve), drain check, admission and finish hooks (``sluice_requests_total
{endpoint,version}``, durations, token counts, the per-version tallies of rollouts), and
the connector's scheduling, breaker accounting and retries before the first byte.
Embeddings also go through the director's cache step (:meth:`Director.from_cache`): a
stored answer or an identical request in flight answers them before admission, and a
leader's answer is stored by the same finish hook as chat's (see :mod:`gateway.cache`).

    check open -> resolve the model (an alias: one of its versions) -> limit ->
    cache lookup (-> replay; embeddings only) -> admit -> schedule + open upstream ->
    answer (whole JSON, or a relayed event stream) -> finish hooks

A missing ``model`` is the one base model the fleet serves, if it serves exactly one.
An engine that answers 404 for the path itself (not for a model) does not have the
endpoint: the client gets 404 ``unsupported_endpoint``, and the engine is not blamed.
A streamed response is relayed event by event (:mod:`.event_relay`); a break after the
first byte ends it with an error event: it is not continued on another engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from gateway.cache import keep_answer
from gateway.core.context import Endpoint, RequestContext, Usage
from gateway.core.errors import (
    EngineError,
    InvalidField,
    NoHealthyEngine,
    SluiceError,
    UnsupportedEndpoint,
    UpstreamRejected,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.connector import Attempt, Connector
from gateway.pipeline.director import Director, StartedStream
from gateway.pipeline.event_relay import EventRelay, responses_usage
from gateway.upstream.pool import EnginePool

log = logging.getLogger("sluice.passthrough")

RESPONSES = Endpoint("responses", "/v1/responses")
EMBEDDINGS = Endpoint("embeddings", "/v1/embeddings")
TOKENIZE = Endpoint("tokenize", "/tokenize")
DETOKENIZE = Endpoint("detokenize", "/detokenize")
POOLING = Endpoint("pooling", "/pooling")
CLASSIFY = Endpoint("classify", "/classify")
SCORE = (Endpoint("score", "/score"), Endpoint("score", "/v1/score"))
RERANK = (Endpoint("rerank", "/rerank"), Endpoint("rerank", "/v1/rerank"),
          Endpoint("rerank", "/v2/rerank"))
ENDPOINTS = (RESPONSES, EMBEDDINGS, TOKENIZE, DETOKENIZE, POOLING, CLASSIFY, *SCORE, *RERANK)
"""Every passthrough endpoint; each is served at the engine path of the same name."""
STREAMABLE = frozenset({RESPONSES.path})
"""Endpoints whose ``"stream": true`` gets an event stream (the others' never does)."""

_ROUTE_MISSING = frozenset({"not found", "the engine rejected the request (http 404)"})
"""A 404's message when the path is unknown: vLLM's (FastAPI's ``Not Found``), or a
body that is no OpenAI error at all. A missing model's 404 names the model."""


def endpoint_missing(error: UpstreamRejected) -> bool:
    """Whether an engine's 4xx says it has no such path (rather than no such model)."""
    return error.status_code == 404 and (
        error.message.strip().lower().removeprefix("404: ") in _ROUTE_MISSING
        or error.error_type == "Not Found")


class Passthrough:
    """Forwards passthrough requests; the director keeps the books."""

    def __init__(self, pool: EnginePool, connector: Connector, director: Director,
                 metrics: GatewayMetrics, *, max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self._pool = pool
        self._connector = connector
        self._director = director
        self._metrics = metrics
        self._max_event_bytes = max_event_bytes

    async def forward(self, ctx: RequestContext) -> bytes | StartedStream:
        """The engine's JSON answer, or a started event stream (see the module doc)."""
        invalid: SluiceError | None = None
        try:
            self.resolve(ctx)
        except SluiceError as exc:
            invalid = exc
        self._director.begin(ctx)
        self._director.enter(ctx)
        try:
            if invalid is not None:
                raise invalid
            self._director.check_open()
            self._director.authenticate(ctx)
            await self._director.limit(ctx)
            replayed = await self._director.from_cache(ctx)
            if replayed is not None:
                return replayed
            await self._director.admit(ctx)
            if self.streamed(ctx):
                body = self._stream(ctx)
                return StartedStream(await anext(body), body)
            return await self._complete(ctx)
        except BaseException as exc:
            await self._director.finish(ctx, exc)
            raise

    async def version(self) -> dict[str, Any]:
        """``/version`` of the first healthy engine that answers it."""
        last: SluiceError = NoHealthyEngine("no engine is up yet; retry shortly")
        for engine in self._pool.engines:
            if engine.healthy:
                try:
                    return await engine.client.get_object("/version")
                except SluiceError as exc:
                    log.warning("engine %s answered no /version: %s", engine.name,
                                exc.message)
                    last = exc
        if isinstance(last, UpstreamRejected):
            raise UnsupportedEndpoint("the engines do not support /version") from last
        raise last

    def resolve(self, ctx: RequestContext) -> None:
        """The model the request goes to: the body's, or the only one served; an alias
        is resolved to one of its versions as chat's is (the body's ``model`` rewritten
        to the name the engines serve). Raises a 400 naming ``model`` (or ``stream``)
        for a value of the wrong type, or the pin header for a version the alias lacks."""
        model = ctx.body.get("model")
        if model is None:
            bases = sorted({card["id"] for card in self._pool.models()
                            if card.get("parent") is None})
            if len(bases) != 1:
                served = f"one of {', '.join(bases)}" if bases else "none is served yet"
                raise InvalidField(f"model: Field required ({served})", param="model")
            model = ctx.body["model"] = bases[0]
        if not isinstance(model, str) or not model:
            raise InvalidField("model: Input should be a non-empty string", param="model")
        ctx.requested_model = model
        if not isinstance(ctx.body.get("stream", False), bool):
            raise InvalidField("stream: Input should be a valid boolean", param="stream")
        self._director.resolve_model(ctx)

    def streamed(self, ctx: RequestContext) -> bool:
        return ctx.endpoint.path in STREAMABLE and ctx.body.get("stream") is True

    async def _open(self, ctx: RequestContext, *, streamed: bool) -> Attempt:
        try:
            return await self._connector.open(ctx, orjson.dumps(ctx.body), streamed=streamed)
        except UpstreamRejected as exc:
            if not endpoint_missing(exc):
                raise
            raise UnsupportedEndpoint(
                f"the engines serving '{ctx.model}' do not support {ctx.endpoint.path}"
            ) from exc

    async def _complete(self, ctx: RequestContext) -> bytes:
        attempt = await self._open(ctx, streamed=False)
        try:
            raw = attempt.first
            ctx.timings.first_byte = time.perf_counter()
            try:
                answer = orjson.loads(raw)
            except orjson.JSONDecodeError:
                answer = None
            if not isinstance(answer, dict):
                raise self._fault(attempt, "engine answered with a body that is not a JSON "
                                           "object")
            usage = answer.get("usage")
            if usage is not None:
                ctx.usage = (responses_usage(usage) if ctx.endpoint is RESPONSES
                             else Usage.from_openai(usage))
                if ctx.usage is None:
                    raise self._fault(attempt, "engine answered with invalid usage counts")
            keep_answer(ctx, raw, answer)
        finally:
            await attempt.stack.aclose()
        await self._director.finish(ctx, None)
        return raw

    def _fault(self, attempt: Attempt, message: str) -> EngineError:
        error = EngineError(message)
        self._connector.engine_failed(attempt.engine, error)
        return error

    async def _stream(self, ctx: RequestContext) -> AsyncGenerator[list[bytes], None]:
        """Yields the head (the first whole events), then the rest as it comes; the
        finish hooks run when it ends, however it ends."""
        relay = EventRelay(self._max_event_bytes)
        attempt = await self._open(ctx, streamed=True)
        try:
            head = await self._head(attempt, relay)
        except BaseException:
            await attempt.stack.aclose()
            raise
        error: BaseException | None = None
        try:
            last = ctx.timings.first_byte = time.perf_counter()
            version = ctx.version_label
            self._metrics.ttft.labels(ctx.label, version).observe(last - ctx.timings.arrived)
            yield head
            itl = self._metrics.itl.labels(ctx.label, version)
            if relay.fault is None:  # (the head's read may have ended on a bad event)
                async for data in attempt.chunks:
                    now = time.perf_counter()
                    itl.observe(now - last)
                    last = now
                    out = relay.feed(data)
                    if out:
                        yield out
                    if relay.fault is not None:
                        break
            if relay.fault is not None:
                raise relay.fault
            if not relay.done:
                raise EngineError("engine closed the stream before it finished")
        except SluiceError as exc:
            error = exc
            log.warning("responses stream from %s broke after the first byte: %s",
                        attempt.engine.name, exc.message)
            self._connector.engine_failed(attempt.engine, exc)
            yield [relay.error_event(exc)]
        except (asyncio.CancelledError, GeneratorExit) as exc:
            error = None if relay.done else exc  # gone after the end is not a disconnect
            raise
        except BaseException as exc:
            error = exc
            log.exception("responses stream of %s failed in the gateway", ctx.model)
            raise
        finally:
            await attempt.stack.aclose()
            ctx.usage = relay.usage
            await self._director.finish(ctx, error)

    async def _head(self, attempt: Attempt, relay: EventRelay) -> list[bytes]:
        """The first events, read until one is whole: a stream that breaks before it is
        an ordinary HTTP error (502), charged to the engine."""
        try:
            head = relay.feed(attempt.first)
            while not head and relay.fault is None:
                data = await anext(attempt.chunks, None)
                if data is None:
                    raise EngineError("engine closed the stream before its first event")
                head = relay.feed(data)
            if relay.fault is not None and not head:
                raise relay.fault
        except SluiceError as exc:
            self._connector.engine_failed(attempt.engine, exc)
            raise
        return head
