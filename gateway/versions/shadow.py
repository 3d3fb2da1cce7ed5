"""Shadow mirroring: a copy of some requests sent to another version, off the path.

A policy's ``shadow`` gives a fraction per version: that share of an alias's requests
(chosen by a hash of the request id, so the same on every replica) is also sent, not
streamed, to the version's engines. The copy starts when the request is resolved, runs
beside it, and is compared with it once both have ended: status, completion tokens,
the text of choice 0, and latency (``sluice_shadow_*`` metrics). Its answer never reaches
the client and nothing the client waits for waits on it. At most
``shadow_max_in_flight`` copies run at once per replica; past that a copy is not made
(counted ``dropped``).

A copy whose status differs diverges for that ``reason`` alone (an error has no tokens
or text to compare). When both answered 200, the completion tokens and the texts are
compared apart: each that differs counts once under its reason (``tokens``, ``text``;
tokens only when the client's are known: an answer from the cache has no usage).
Texts are compared on their first ``shadow_text_chars`` characters (the client's as the
relay delivered it, streamed or not; the copy's from its JSON) by
:func:`~gateway.versions.similarity.similarity`, observed in
``sluice_shadow_text_similarity``; below ``shadow_text_threshold`` it is a ``text``
divergence. A request answered from the response cache keeps no text: only its status
and tokens are compared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.core.context import RequestContext
from gateway.core.errors import SluiceError
from gateway.core.protocol import choice_text
from gateway.observability.metrics import GatewayMetrics
from gateway.versions.similarity import similarity

if TYPE_CHECKING:  # the engine pool imports the settings, which import this package
    from gateway.upstream.pool import EnginePool

log = logging.getLogger("sluice.shadow")

SCRATCH = "versions.shadow"
"""The key of a request's mirrors in ``ctx.scratch``."""


@dataclass(slots=True)
class Mirror:
    """One copy of a request and what is known of both sides."""

    alias: str
    version: str
    chat: bool
    primary_done: asyncio.Event = field(default_factory=asyncio.Event)
    primary_status: str = ""
    primary_latency_s: float = 0.0
    primary_tokens: int | None = None
    primary_text: str | None = None
    """The start of the text the client got (None: not known, not compared)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a mirrored request got back."""

    status: str = "200"
    tokens: int | None = None
    text: str = ""


class ShadowMirror:
    """Starts mirrors and compares them with the requests they copy."""

    def __init__(self, pool: EnginePool, metrics: GatewayMetrics, *, max_in_flight: int,
                 max_answer_bytes: int, wait_s: float, text_chars: int = 16384,
                 text_threshold: float = 0.9) -> None:
        self._pool = pool
        self._metrics = metrics
        self._max = max_in_flight
        self._max_bytes = max_answer_bytes
        self._wait_s = wait_s
        self._text_chars = text_chars
        self._text_threshold = text_threshold
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(self, ctx: RequestContext, alias: str, version: str, served: str) -> None:
        """Send a copy of ``ctx``'s request to ``served`` (unless the bound is reached)."""
        if len(self._tasks) >= self._max:
            self._metrics.shadow_requests.labels(alias, version, "dropped").inc()
            return
        mirror = Mirror(alias, version, ctx.endpoint.chat)
        ctx.scratch.setdefault(SCRATCH, []).append(mirror)
        ctx.keep_text = max(ctx.keep_text, self._text_chars)
        payload = {k: v for k, v in ctx.body.items() if k != "stream_options"}
        payload.update(model=served, stream=False)
        task = asyncio.get_running_loop().create_task(
            self._run(mirror, ctx.endpoint.path, orjson.dumps(payload), served, ctx.id),
            name=f"shadow-{ctx.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finished(self, ctx: RequestContext) -> None:
        """The finish hook: the request's side of its mirrors' comparisons."""
        for mirror in ctx.scratch.get(SCRATCH, ()):
            mirror.primary_status = ctx.outcome.status
            end = ctx.timings.finished or time.perf_counter()
            mirror.primary_latency_s = end - ctx.timings.arrived
            mirror.primary_tokens = None if ctx.usage is None else ctx.usage.completion_tokens
            mirror.primary_text = ctx.answer_text
            mirror.primary_done.set()

    async def _run(self, mirror: Mirror, path: str, payload: bytes, served: str,
                   request_id: str) -> None:
        labels = (mirror.alias, mirror.version)
        engines = self._pool.routable_for(served)
        if not engines:
            self._metrics.shadow_requests.labels(*labels, "no_engine").inc()
            return
        engine = min(engines, key=lambda e: e.load)
        began = time.perf_counter()
        try:
            with self._pool.lease(engine):
                async with engine.client.open(path, payload, streamed=False,
                                              headers={"X-Request-Id": request_id + "-shadow"}
                                              ) as response:
                    answer = self._read(await response.read(self._max_bytes), mirror.chat)
        except SluiceError as exc:
            answer = Answer(str(exc.status_code))
        except Exception:  # a mirror must never fail anything else: count and log it
            log.exception("shadow request %s failed in the gateway", request_id)
            answer = Answer("500")
        latency = time.perf_counter() - began
        outcome = "ok" if answer.status == "200" else "error"
        self._metrics.shadow_requests.labels(*labels, outcome).inc()
        try:
            await asyncio.wait_for(mirror.primary_done.wait(), self._wait_s)
        except TimeoutError:
            return
        if mirror.primary_latency_s > 0:
            self._metrics.shadow_latency_ratio.labels(*labels).observe(
                latency / mirror.primary_latency_s)
        reasons, alike = compare(mirror, answer, self._text_threshold)
        if alike is not None:
            self._metrics.shadow_text_similarity.labels(*labels).observe(alike)
        for reason in reasons:
            self._metrics.shadow_divergence.labels(*labels, reason).inc()

    def _read(self, raw: bytes, chat: bool) -> Answer:
        """A mirrored request's completion tokens and the start of its text."""
        try:
            answer: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Answer()
        return Answer(tokens=_completion_tokens(answer),
                      text=choice_text(answer, chat=chat)[:self._text_chars])

    async def aclose(self) -> None:
        """Cancel the mirrors still running (at shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def compare(mirror: Mirror, answer: Answer, threshold: float
            ) -> tuple[list[str], float | None]:
    """Why the copy's ``answer`` diverges from the request it copies (see the module
    doc), and how alike their texts are (None: not compared)."""
    if answer.status != mirror.primary_status:
        return ["status"], None
    known = mirror.primary_tokens is not None  # an answer from the cache has no usage
    reasons = ["tokens"] if known and answer.tokens != mirror.primary_tokens else []
    if answer.status != "200" or mirror.primary_text is None:
        return reasons, None
    alike = similarity(mirror.primary_text, answer.text)
    if alike < threshold:
        reasons.append("text")
    return reasons, alike


def _completion_tokens(answer: Any) -> int | None:
    try:
        tokens = answer["usage"]["completion_tokens"]
    except (KeyError, TypeError, IndexError):
        return None
    return tokens if type(tokens) is int else None
