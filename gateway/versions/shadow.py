"""Shadow mirroring: a copy of some requests sent to another version, off the path.

A policy's ``shadow`` gives a fraction per version: that share of an alias's requests
(chosen by a hash of the request id, so the same on every replica) is also sent, not
streamed, to the version's engines. The copy starts when the request is resolved, runs
beside it, and is compared with it once both have ended: status, completion tokens and
latency (``sluice_shadow_*`` metrics). Its answer never reaches the client and nothing
the client waits for waits on it. At most ``shadow_max_in_flight`` copies run at once
per replica; past that a copy is not made (counted ``dropped``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import SluiceError
from gateway.metrics import GatewayMetrics
from gateway.pipeline.context import RequestContext

if TYPE_CHECKING:  # the engine pool imports the settings, which import this package
    from gateway.services.engine_pool import EnginePool

log = logging.getLogger("sluice.shadow")

SCRATCH = "versions.shadow"
"""The key of a request's mirrors in ``ctx.scratch``."""


@dataclass(slots=True)
class Mirror:
    """One copy of a request and what is known of both sides."""

    alias: str
    version: str
    primary_done: asyncio.Event = field(default_factory=asyncio.Event)
    primary_status: str = ""
    primary_latency_s: float = 0.0
    primary_tokens: int | None = None


class ShadowMirror:
    """Starts mirrors and compares them with the requests they copy."""

    def __init__(self, pool: EnginePool, metrics: GatewayMetrics, *, max_in_flight: int,
                 max_answer_bytes: int, wait_s: float) -> None:
        self._pool = pool
        self._metrics = metrics
        self._max = max_in_flight
        self._max_bytes = max_answer_bytes
        self._wait_s = wait_s
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(self, ctx: RequestContext, alias: str, version: str, served: str) -> None:
        """Send a copy of ``ctx``'s request to ``served`` (unless the bound is reached)."""
        if len(self._tasks) >= self._max:
            self._metrics.shadow_requests.labels(alias, version, "dropped").inc()
            return
        mirror = Mirror(alias, version)
        ctx.scratch.setdefault(SCRATCH, []).append(mirror)
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
            mirror.primary_done.set()

    async def _run(self, mirror: Mirror, path: str, payload: bytes, served: str,
                   request_id: str) -> None:
        labels = (mirror.alias, mirror.version)
        engines = [e for e in self._pool.engines if e.routable and served in e.cards]
        if not engines:
            self._metrics.shadow_requests.labels(*labels, "no_engine").inc()
            return
        engine = min(engines, key=lambda e: e.load)
        began = time.perf_counter()
        status, tokens = "200", None
        try:
            with self._pool.lease(engine):
                async with engine.client.open(path, payload, streamed=False,
                                              headers={"X-Request-Id": request_id + "-shadow"}
                                              ) as response:
                    tokens = _completion_tokens(await response.read(self._max_bytes))
        except SluiceError as exc:
            status = str(exc.status_code)
        except Exception:  # a mirror must never fail anything else: count and log it
            log.exception("shadow request %s failed in the gateway", request_id)
            status = "500"
        latency = time.perf_counter() - began
        self._metrics.shadow_requests.labels(*labels, "ok" if status == "200" else "error").inc()
        try:
            await asyncio.wait_for(mirror.primary_done.wait(), self._wait_s)
        except TimeoutError:
            return
        if mirror.primary_latency_s > 0:
            self._metrics.shadow_latency_ratio.labels(*labels).observe(
                latency / mirror.primary_latency_s)
        if status != mirror.primary_status or tokens != mirror.primary_tokens:
            self._metrics.shadow_divergence.labels(*labels).inc()

    async def aclose(self) -> None:
        """Cancel the mirrors still running (at shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _completion_tokens(raw: bytes) -> int | None:
    try:
        answer: Any = orjson.loads(raw)
        tokens = answer["usage"]["completion_tokens"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return tokens if type(tokens) is int else None
