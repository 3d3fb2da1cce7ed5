"""The answer step of every HTTP endpoint (and of each ``/v1/ws`` request): the
engine's answer, whole or streamed.

    schedule + open upstream (the connector, with its retries) -> read the whole JSON
    answer | stream it (the stream session: relay, transcript, failover)

What differs between endpoints is read from the :class:`~gateway.core.endpoints.Endpoint`:
chat and completions streams are OpenAI chunks (their usage asked of the engine always,
continued on another engine when one breaks); a ``/v1/responses`` stream is named events,
relayed as the engine framed them and not continued; the other passthrough endpoints are
answered with the engine's JSON as it is.
"""

from __future__ import annotations

import time

import orjson

from gateway.cache import keep_answer
from gateway.config.fleet import ResilienceSettings
from gateway.core.context import RequestContext, Usage
from gateway.core.endpoints import RESPONSES
from gateway.core.errors import EngineError
from gateway.core.protocol import choice_text
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.connector import Attempt, Connector
from gateway.pipeline.director import StartedStream
from gateway.pipeline.drain import Drain
from gateway.pipeline.event_relay import EventRelay, responses_usage
from gateway.pipeline.relay import Relay
from gateway.pipeline.session import OnEnd, StreamRelay, StreamSession


class Answer:
    """The engine's answer to an admitted request (see the module docstring). ``finish``
    is the director's: a stream runs it when it ends."""

    def __init__(self, connector: Connector, drain: Drain, metrics: GatewayMetrics,
                 settings: ResilienceSettings, finish: OnEnd, *,
                 max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self._connector = connector
        self._drain = drain
        self._metrics = metrics
        self._settings = settings
        self._finish = finish
        self._max_event_bytes = max_event_bytes

    async def __call__(self, ctx: RequestContext) -> bytes | StartedStream:
        if ctx.stream:
            return await self.stream(ctx)
        return await self.complete(ctx)

    async def complete(self, ctx: RequestContext) -> bytes:
        """The engine's whole JSON answer, judged (a JSON object, valid usage)."""
        attempt = await self._connector.open(ctx, orjson.dumps(ctx.body), streamed=False)
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
            if ctx.keep_text:
                ctx.answer_text = choice_text(answer, chat=ctx.endpoint.chat)[:ctx.keep_text]
        finally:
            await attempt.stack.aclose()
        return raw

    async def stream(self, ctx: RequestContext) -> StartedStream:
        """A started stream: its head once the engine's first events are in (or at once
        when the request starts early), the rest as it comes."""
        request = ctx.request
        assert request is not None
        payload = ctx.body
        relay: StreamRelay
        tap = ctx.cache.flight
        if ctx.endpoint.chunks:  # the usage is always asked for: the key is charged by it
            payload = dict(ctx.body)
            payload["stream_options"] = {**(ctx.body.get("stream_options") or {}),
                                         "include_usage": True}
            relay = Relay(chat=ctx.endpoint.chat,
                          forward_usage=request.wants_usage and tap is None,
                          max_event_bytes=self._max_event_bytes)
        else:
            relay = EventRelay(self._max_event_bytes)
        # With no engine up there is no wait to keep alive: the 503 comes at once.
        ctx.start_early = ctx.start_early and ctx.admitted
        session = StreamSession(ctx, payload, relay, self._connector, self._drain,
                                self._metrics, self._settings, self._finish,
                                usage_last=request.wants_usage, tap=tap)
        body = session.run()
        return StartedStream(await anext(body), body, waiting=ctx.start_early)

    def _fault(self, attempt: Attempt, message: str) -> EngineError:
        error = EngineError(message)
        self._connector.engine_failed(attempt.engine, error)
        return error
