"""The director: every request's steps, in one order, written once.

    begin -> check_open -> authenticate -> resolve -> enter -> limit -> cache lookup
    (-> replay) -> admit -> answer -> finish hooks

Every endpoint runs :meth:`Director.run` (chat, completions, the passthrough routes,
each ``/v1/ws`` request, ``/v1/realtime`` sessions); each supplies only its *answer*
step: the engine's answer whole or streamed (:class:`~gateway.pipeline.answer.Answer`),
or a relayed WebSocket session (:mod:`gateway.edge.websocket.realtime`). Each step reads
and writes the request's :class:`RequestContext` and is small enough to test alone.
Resolve validates what the gateway acts on (the endpoint's request model) and maps a
model alias to one of its versions (any other name is served as it is: see
:mod:`gateway.versions`). The cache step (:mod:`gateway.cache`) finds a stored answer to
replay, or an identical request in flight to follow; a request that finds neither leads
a flight, and its answer is stored by a finish hook. The other finish hooks are metrics,
a key's token charge and a debug log line; later features fill these steps in rather
than adding branches around them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.cache import Flight, FlightFailed, ResponseCaching
from gateway.core.context import RequestContext
from gateway.core.errors import (
    AuthenticationFailed,
    ContextLengthExceeded,
    EngineError,
    InvalidField,
    Overloaded,
    PermissionDenied,
    ShuttingDown,
    SluiceError,
    echo,
)
from gateway.core.keys import ApiKey
from gateway.core.protocol import validate
from gateway.keys import KeyService
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.adapter_registry import AdapterRegistry
from gateway.pipeline.admission import Admission
from gateway.pipeline.drain import Drain
from gateway.stores import CachedResponse
from gateway.upstream.pool import EnginePool
from gateway.versions import VersionRouter

log = logging.getLogger("sluice.director")

_BUDGETS = ("max_tokens", "max_completion_tokens")

FinishHook = Callable[[RequestContext], Awaitable[None]]
"""Runs once when a request has ended, with its context complete (outcome, usage)."""


@dataclass(frozen=True, slots=True)
class StartedStream:
    """A stream whose head (first events) is known; ``body`` yields the rest, and
    closing it always runs its cleanup (the request's finish hooks included)."""

    head: list[bytes]
    body: AsyncGenerator[list[bytes], None]
    waiting: bool = False
    """The head is not known yet (the request started early, see
    :attr:`RequestContext.start_early`): the body's next events are the head."""


Answered = bytes | StartedStream | None
"""What an answer step gives: a whole JSON answer, a started stream, or nothing (it
answered the client itself, as a relayed WebSocket session does)."""
AnswerStep = Callable[[RequestContext], Awaitable[Answered]]
"""An endpoint's own step: called once the request is admitted."""


class Director:
    """Runs every request through the pipeline's steps (see the module docstring)."""

    def __init__(self, pool: EnginePool, admission: Admission, cache: ResponseCaching | None,
                 drain: Drain, metrics: GatewayMetrics, *, keys: KeyService | None = None,
                 hooks: Sequence[FinishHook] = (), versions: VersionRouter | None = None,
                 adapters: AdapterRegistry | None = None) -> None:
        self._pool = pool
        self._admission = admission
        self._cache = cache
        self._drain = drain
        self._metrics = metrics
        self._keys = keys
        self._versions = versions
        self._adapters = adapters
        stored = () if cache is None else (cache.stored,)
        self._hooks = (*stored, self._record_metrics, self._account_key, self._log, *hooks)

    async def run(self, ctx: RequestContext, answer: AnswerStep) -> Answered:
        """Run one request through every step, in order; ``answer`` is the endpoint's
        own step. A stream (:class:`StartedStream`) closes the request's books when it
        ends; any other answer has them closed here."""
        self.begin(ctx)
        try:
            self.check_open()
            self.authenticate(ctx)
            self.resolve(ctx)
            self.enter(ctx)
            await self.limit(ctx)
            replayed = await self.from_cache(ctx)
            if replayed is not None:
                return replayed
            await self.admit(ctx)
            answered = await answer(ctx)
        except BaseException as exc:
            await self.finish(ctx, exc)
            raise
        if not isinstance(answered, StartedStream):
            await self.finish(ctx, None)
        return answered

    def begin(self, ctx: RequestContext) -> None:
        """Fill in a left-out model (:meth:`default_model`) and give the request its
        ``model`` metrics label."""
        self.default_model(ctx)
        ctx.label = self.model_label(ctx.requested_model)

    def enter(self, ctx: RequestContext) -> None:
        """Count the request in flight, under its model and (once resolved) version
        labels; :meth:`finish` lowers the gauge under the same labels."""
        ctx.gauged = (ctx.label, ctx.version_label)
        self._metrics.version(*ctx.gauged).in_flight.inc()

    def model_label(self, requested: str) -> str:
        """The ``model`` label of a request's metrics: an alias's name, a served model's,
        else ``unknown``."""
        alias = self._versions.label(requested) if self._versions is not None else None
        if alias is None and self._adapters is not None and self._adapters.get(requested):
            return requested  # a registered adapter: named by the operator, so bounded
        return alias or self._pool.model_label(requested)

    def check_open(self) -> None:
        if self._drain.draining:
            raise ShuttingDown()

    def default_model(self, ctx: RequestContext) -> None:
        """A request without a model is for the one model served, when there is exactly
        one (as vLLM serves its only model); the engines are asked for it by name."""
        if ctx.body.get("model") in (None, ""):
            served = self._pool.base_models()
            if len(served) == 1:
                ctx.requested_model = ctx.model = ctx.body["model"] = served.pop()

    def authenticate(self, ctx: RequestContext) -> None:
        """Who may ask for what. The API-key middleware has already identified the
        principal; a managed key may be limited to some models (the names clients send,
        aliases included): any other is a 403 naming it."""
        key = ctx.key
        if key is not None and self.key_revoked(key):
            raise AuthenticationFailed("API key has been revoked", key_sent=True)
        if key is not None and not key.allows(ctx.requested_model):
            raise PermissionDenied(
                f"key {key.id} may not use model '{echo(ctx.requested_model)}'", param="model",
                code="model_not_allowed")

    def key_revoked(self, key: ApiKey) -> bool:
        """Whether ``key`` was revoked after it was checked (a socket opened with it is
        still open): from what this replica knows, no I/O."""
        return self._keys is not None and self._keys.revoked(key)

    async def limit(self, ctx: RequestContext) -> None:
        """Count the request against its key's requests and tokens per minute (429
        with ``Retry-After`` when either is spent)."""
        if ctx.key is not None and self._keys is not None:
            await self._keys.admit(ctx.key)

    def resolve(self, ctx: RequestContext) -> None:
        """Validate what the gateway acts on, and map the requested name to the model
        the engines serve: an alias's version by its policy (:mod:`gateway.versions`),
        any other name unchanged."""
        ctx.request = validate(ctx.endpoint.model, ctx.body)
        if not ctx.request.model:
            bases = sorted(self._pool.base_models())
            served = f"they serve {', '.join(bases)}" if bases else "none is served yet"
            raise InvalidField("you must provide a model parameter (it may be left out only "
                               f"when the engines serve exactly one model; {served})",
                               param="model", code="missing_required_parameter")
        self.resolve_model(ctx, mirror=ctx.endpoint.chunks)
        for name in _BUDGETS:  # acted on as integers: continuations shrink them
            if type(ctx.body.get(name)) is float:
                ctx.body[name] = getattr(ctx.request, name)
        budget, limit = ctx.request.output_budget, self._pool.max_model_len(ctx.model)
        if budget is not None and limit is not None and budget > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {budget} output tokens.", param="max_tokens")

    def resolve_model(self, ctx: RequestContext, *, mirror: bool = False) -> None:
        """Map the requested name to the model the engines serve: an alias to one of its
        versions by its policy (split, sticky caller, pin, fallback chain: see
        :mod:`gateway.versions`), any other name unchanged. ``mirror``: start the
        policy's shadow copies (chat and completions only)."""
        ctx.model = ctx.requested_model
        if self._versions is not None:
            self._versions.resolve(ctx, mirror=mirror)
        if self._adapters is not None:
            ctx.lora = self._adapters.get(ctx.model)

    async def from_cache(self, ctx: RequestContext) -> bytes | StartedStream | None:
        """The cache step of every route the cache serves (chat, completions, and the
        passthrough's embeddings): :meth:`lookup`, then :meth:`replay` what it found.
        None: the request goes to an engine (leading a flight when it is cacheable)."""
        found = await self.lookup(ctx)
        return None if found is None else await self.replay(ctx, found)

    async def lookup(self, ctx: RequestContext) -> CachedResponse | Flight | None:
        """A stored answer, or an identical request in flight, when the request may be
        answered by one (see :mod:`gateway.cache`)."""
        return None if self._cache is None else await self._cache.lookup(ctx)

    async def replay(self, ctx: RequestContext, found: CachedResponse | Flight
                     ) -> bytes | StartedStream | None:
        """A stored answer, or the answer of the request in flight that this one
        follows, in the shape the request asked for. None when the flight failed (or
        took too long) before this request had anything: it then makes its own call."""
        if isinstance(found, Flight):
            return await self._follow(ctx, found)
        if not ctx.stream:
            await self.finish(ctx, None)
            return found.body or b"{}"
        events = list(found.events)
        if found.usage is not None and self._wants_usage(ctx):
            events.append(found.usage)
        return StartedStream([], self._replaying(ctx, events))

    async def _follow(self, ctx: RequestContext, flight: Flight | None
                      ) -> bytes | StartedStream | None:
        assert self._cache is not None
        waits = self._cache.waits
        for retry in (True, False):  # a follower follows at most two leaders
            if flight is None:
                return None
            try:
                if not ctx.stream:
                    answer = await flight.answer(waits.total_s)
                    await self.finish(ctx, None)
                    return answer.body or b"{}"
                head = await flight.head(waits.first_token_s)
            except (FlightFailed, TimeoutError):
                flight = self._cache.fall_back(ctx, follow=retry)
                continue
            ctx.timings.first_byte = time.perf_counter()
            return StartedStream(head, self._following(ctx, flight))
        return None

    async def _following(self, ctx: RequestContext, flight: Flight
                         ) -> AsyncGenerator[list[bytes], None]:
        """The leader's batches after its head, then its usage chunk if asked for."""
        assert self._cache is not None
        error: BaseException | None = None
        try:
            try:
                async for batch in flight.rest(self._cache.waits.between_tokens_s):
                    yield batch
            except (FlightFailed, TimeoutError) as exc:
                error = EngineError("the answer this request shared with an identical one "
                                    "was cut")
                error.__cause__ = exc
                yield [error.to_json()]
                return
            usage = flight.result.usage if flight.result is not None else None
            if usage is not None and self._wants_usage(ctx):
                yield [usage]
        except BaseException as exc:
            error = exc
            raise
        finally:
            await self.finish(ctx, error)

    async def _replaying(self, ctx: RequestContext, events: list[bytes]
                         ) -> AsyncGenerator[list[bytes], None]:
        """A stored stream's events in one batch; the request's books close after."""
        error: BaseException | None = None
        try:
            yield events
        except BaseException as exc:
            error = exc
            raise
        finally:
            await self.finish(ctx, error)

    @staticmethod
    def _wants_usage(ctx: RequestContext) -> bool:
        return ctx.request is not None and ctx.request.wants_usage

    async def admit(self, ctx: RequestContext) -> None:
        try:
            ctx.admitted = await self._admission.enter(
                ctx.model, self._pool.healthy_count(ctx.model))
        except Overloaded:
            self._metrics.admission_rejections.labels(ctx.label, ctx.version_label).inc()
            raise
        ctx.timings.admitted = time.perf_counter()

    async def finish(self, ctx: RequestContext, error: BaseException | None) -> None:
        """Close the request's books once: release admission, record the outcome, run
        the finish hooks (each isolated: a failing release or hook never skips the
        others, nor fails the request)."""
        if ctx.finished:
            return
        ctx.finished = True
        ctx.timings.finished = time.perf_counter()
        if isinstance(error, SluiceError):
            ctx.outcome.status = str(error.status_code)
        elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            ctx.outcome.status, ctx.outcome.client_left = "499", True
        elif error is not None:
            ctx.outcome.status = "500"
        for release in ctx.on_finish:
            release()
        ctx.on_finish.clear()
        if ctx.admitted:
            try:
                await self._admission.leave(ctx.model)
            except Exception:  # a store outage must not fail an answer already made
                log.exception("request %s: admission of %s not released", ctx.id, ctx.model)
        for hook in self._hooks:
            try:
                await hook(ctx)
            except Exception:  # a broken hook must not break the request's accounting
                log.exception("finish hook %s failed", getattr(hook, "__name__", hook))

    async def _record_metrics(self, ctx: RequestContext) -> None:
        m, label, version = self._metrics, ctx.label, ctx.version_label
        if ctx.gauged is not None:
            m.version(*ctx.gauged).in_flight.dec()
        if ctx.outcome.client_left:
            m.client_disconnects.labels(label, version).inc()
        per = m.version(label, version)
        per.requests(ctx.engine, ctx.endpoint.name, ctx.outcome.status).inc()
        assert ctx.timings.finished is not None
        per.e2e(ctx.endpoint.name).observe(ctx.timings.finished - ctx.timings.arrived)
        if ctx.usage is not None:
            per.tokens("prompt").inc(ctx.usage.prompt_tokens)
            per.tokens("completion").inc(ctx.usage.completion_tokens)

    async def _account_key(self, ctx: RequestContext) -> None:
        """Per-key metrics, and the tokens streamed charged to the key's TPM window."""
        if ctx.principal is None:
            return
        tokens, labels = ctx.tokens, (ctx.principal, ctx.label, ctx.version_label)
        self._metrics.key_requests.labels(*labels, ctx.outcome.status).inc()
        if tokens:
            self._metrics.key_tokens.labels(*labels).inc(tokens)
        if ctx.key is not None and self._keys is not None:
            await self._keys.charge(ctx.key, tokens)

    async def _log(self, ctx: RequestContext) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s %s key=%s model=%s version=%s engine=%s attempts=%d "
                      "continuations=%d status=%s", ctx.id, ctx.endpoint.name,
                      ctx.principal, ctx.model, ctx.version, ctx.engine, ctx.attempts,
                      ctx.continuations, ctx.outcome.status)
