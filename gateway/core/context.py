"""The one object a generation request carries through every step of the pipeline.

Each step of the director reads and writes a :class:`RequestContext`; none reaches into
another step's locals. It replaces per-step bookkeeping objects: what was asked for
(endpoint, body, requested model), who asked (principal), where it was resolved to
(model, adapter), where it went (tried engines, attempts, engine), when things happened
(timings), what came back (usage) and how it ended (outcome).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adapters import AdapterSpec
from gateway.core.endpoints import Endpoint
from gateway.core.keys import ApiKey
from gateway.core.protocol import RequestBody

if TYPE_CHECKING:
    from gateway.cache.flights import Flight


PIN_HEADER = "x-sluice-version"
"""Request header naming the version of a model alias to use (and the response header
naming the one that served)."""
PIN_HEADER_KEY = PIN_HEADER.encode()
"""The same, as an ASGI scope's header name."""


@dataclass(slots=True)
class Usage:
    """Token counts as the engines report them (OpenAI ``usage``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: object) -> Usage | None:
        """The counts of a ``usage`` object; None when it is not a valid one (missing,
        negative or non-integer counts are an engine fault, not zero)."""
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        if not (type(prompt) is int and type(completion) is int) or prompt < 0 or completion < 0:
            return None
        return cls(prompt, completion)


@dataclass(slots=True)
class Timings:
    """``time.perf_counter()`` readings of one request's phases (None: not reached)."""

    arrived: float = field(default_factory=time.perf_counter)
    admitted: float | None = None
    scheduled: float | None = None
    """The engine of the first attempt was picked."""
    adapted: float | None = None
    """The request's LoRA adapter was on that engine (loaded, a slot waited for)."""
    connected: float | None = None
    """The first attempt's engine answered with its response headers."""
    first_byte: float | None = None
    """The first output bytes arrived from an engine."""
    finished: float | None = None

    def server_timing(self) -> str:
        """The phases before the first byte as a ``Server-Timing`` value, each from the
        end of the one before, in milliseconds (``admit;dur=0.1, sched;dur=0.2, ...``):
        ``admit`` (arrival to admitted), ``sched`` (to the engine picked), ``adapter`` (to
        its LoRA adapter loaded there; only for a request naming one), ``connect`` (to
        the engine's response headers), ``ttfb`` (to its first output bytes). Phases not
        reached yet are left out."""
        parts: list[str] = []
        start = self.arrived
        for name, end in (("admit", self.admitted), ("sched", self.scheduled),
                          ("adapter", self.adapted), ("connect", self.connected),
                          ("ttfb", self.first_byte)):
            if end is None:
                if name == "adapter":
                    continue
                break
            parts.append(f"{name};dur={(end - start) * 1000:.1f}")
            start = end
        return ", ".join(parts)


@dataclass(slots=True)
class Outcome:
    """How the request ended: the status its metrics and logs record.

    The exception that ended it is not kept: its traceback's frames hold the request
    (its body included), so a reference from here would make a cycle that only a full
    garbage collection frees, which an idle gateway never runs."""

    status: str = "200"
    client_left: bool = False


@dataclass(slots=True)
class CacheUse:
    """What the response cache did with the request (see :mod:`gateway.cache`)."""

    no_store: bool = False
    """``Cache-Control: no-store``: neither answered from the cache nor stored."""
    no_cache: bool = False
    """``Cache-Control: no-cache``: not answered from the cache; a fresh answer is
    stored (it refreshes the entry)."""
    allow: bool = False
    """``x-sluice-cache: allow``: cacheable even when not deterministic."""
    key: str | None = None
    """The cache key; None when the request is not cacheable."""
    result: str = "bypass"
    """``hit``, ``miss``, ``coalesced`` (served by an identical request in flight), or
    ``bypass`` (the policy kept it away from the cache)."""
    flight: Flight | None = None
    """This request leads a flight: its answer goes to followers and to the store."""
    locked: bool = False
    """It holds the replicas' shared lease on its key (it leads for all of them)."""
    answer: bytes | None = None
    """A non-streamed answer, kept for the store."""
    complete: bool = False
    """The answer ended well: every choice finished (and a stream's ``[DONE]`` came)."""
    usage_event: bytes | None = None
    """A stream's usage chunk, kept apart: replayed only to those who ask for it."""


@dataclass(slots=True)
class RequestContext:
    """Everything known about one generation request, from arrival to its last byte."""

    id: str
    endpoint: Endpoint
    body: dict[str, Any]
    """The request body as the client sent it (decoded JSON object), but for the fields
    the director resolves: a left-out ``model`` filled in, integral float budgets
    (``3.0``) written as integers."""
    principal: str | None = None
    """Who sent it: an API key's id (``static-<n>`` for the static keys), or None when
    the gateway runs without keys."""
    key: ApiKey | None = None
    """The managed key it came with (models allowed, limits); None for a static key."""
    client: str | None = None
    """The client's address (host), when the server gave one."""
    lora: AdapterSpec | None = None
    """The registered LoRA adapter ``model`` names (loaded on demand)."""
    session_key: str | None = None
    """Session affinity key (``x-session-id`` header, else the body's ``user``)."""
    requested_model: str = ""
    model: str = ""
    """The model the engines are asked for, once resolved (an alias's version's)."""
    adapter: str | None = None
    version: str | None = None
    """The version of an alias that serves the request (None: not an alias)."""
    pinned_version: str | None = None
    """The version the client asked for (``x-sluice-version`` header), if any."""
    fallback_from: str | None = None
    """The version chosen first, when none of its engines was up and another answers."""
    label: str = "unknown"
    """The ``model`` label of its metrics: ``unknown`` when no engine has the model, so
    client-chosen names cannot grow the metrics without bound."""
    gauged: tuple[str, str] | None = None
    """The (model, version) labels the in-flight gauge was raised under; it is lowered
    under the same ones when the request ends (None: not counted in flight)."""
    request: RequestBody | None = None
    """The validated view of ``body`` (fields the gateway acts on)."""
    tried: set[str] = field(default_factory=set)
    """Engines this request was sent to: a retry or a continuation goes elsewhere."""
    attempts: int = 0
    continuations: int = 0
    engine: str = "none"
    """The engine of the latest attempt."""
    timings: Timings = field(default_factory=Timings)
    usage: Usage | None = None
    streamed_tokens: int = 0
    """Output events a stream delivered (one token each as vLLM streams): what a stream
    cut before its usage event is charged."""
    outcome: Outcome = field(default_factory=Outcome)
    admitted: bool = False
    finished: bool = False
    start_early: bool = False
    """A stream's response starts once the request is admitted, before the engine's
    first event (SSE keep-alive); a failure before that event then ends the stream with
    an error event instead of an HTTP error status."""
    cache: CacheUse = field(default_factory=CacheUse)
    keep_text: int = 0
    """Characters of choice 0's answer text to keep in ``answer_text`` (0: none; a shadow
    mirror that compares texts asks for them)."""
    answer_text: str | None = None
    """The start of choice 0's text as the client got it, when ``keep_text`` asked for it
    and the engines answered (None otherwise: a cached answer keeps none)."""
    on_finish: list[Callable[[], None]] = field(default_factory=list)
    """Called when its books close (a WebSocket dial's adapter use, released)."""
    scratch: dict[str, Any] = field(default_factory=dict)
    """Per-request data that plugins compute once and share (e.g. prompt block hashes),
    keyed by the plugin's name."""

    @classmethod
    def new(cls, request_id: str, endpoint: Endpoint, body: dict[str, Any], *,
            session_key: str | None = None, principal: str | None = None,
            key: ApiKey | None = None, arrived: float | None = None) -> RequestContext:
        model = body.get("model")
        user = body.get("user")
        ctx = cls(request_id, endpoint, body, principal=principal, key=key,
                  session_key=session_key or (user if isinstance(user, str) else None))
        ctx.requested_model = ctx.model = model if isinstance(model, str) else ""
        if arrived is not None:
            ctx.timings.arrived = arrived
        return ctx

    @property
    def caller(self) -> str:
        """Who a per-caller bound counts it against: its key's principal, else its
        address."""
        return self.principal or f"address:{self.client or ''}"

    def route_headers(self) -> dict[str, str]:
        """What an answer says of the request's route: ``Server-Timing`` (the phases
        before the first byte, as far as they went), ``x-sluice-engine`` (the engine that
        answered, once one was picked), and for an alias ``x-sluice-version`` (its
        version that served) and ``x-sluice-fallback-from`` (the version chosen first,
        when it was down and the fallback chain answered)."""
        headers: dict[str, str] = {}
        timing = self.timings.server_timing()
        if timing:
            headers["server-timing"] = timing
        if self.engine != "none":
            headers["x-sluice-engine"] = self.engine
        if self.version is not None:
            headers[PIN_HEADER] = self.version
        if self.fallback_from is not None:
            headers["x-sluice-fallback-from"] = self.fallback_from
        return headers

    @property
    def tokens(self) -> int:
        """Tokens this request used: its usage, or what a cut stream delivered."""
        if self.usage is not None:
            return self.usage.prompt_tokens + self.usage.completion_tokens
        return self.streamed_tokens

    @property
    def version_label(self) -> str:
        """The ``version`` label of its metrics: the alias's version that serves it,
        ``none`` for a model that is not an alias (or before the version is known)."""
        return self.version or "none"

    @property
    def stream(self) -> bool:
        """The answer is an event stream: asked for, on an endpoint that streams."""
        return self.endpoint.streams and self.request is not None and bool(self.request.stream)
