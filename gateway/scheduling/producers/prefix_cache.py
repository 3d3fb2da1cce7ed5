"""The gateway's picture of each engine's prefix cache, fed by opened attempts.

A request's prompt is cut into chained block hashes once (kept in the request's
``scratch``, so a retry does not hash again). When an attempt opens on an engine, its
blocks are recorded for that engine, and only then: a request that failed on one engine
before being served by another is attributed to the second alone. An engine that
restarts is forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from gateway.config.fleet import PrefixIndexSettings
from gateway.core.context import RequestContext
from gateway.scheduling.framework.interfaces import Candidate
from gateway.scheduling.producers.prefix_index import PrefixIndex, block_hashes, prompt_text

SCRATCH_KEY = "prefix"
"""Where a request's prompt block hashes are kept in ``RequestContext.scratch``."""


class PrefixCacheIndexer:
    """Owns the prefix index; scorers read it through :meth:`match`."""

    def __init__(self, settings: PrefixIndexSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.block_chars = settings.block_chars
        self.index = PrefixIndex(settings.capacity_blocks, settings.ttl_s, clock)

    def hashes(self, ctx: RequestContext) -> list[int]:
        """The chained block hashes of ``ctx``'s prompt, rooted at its model."""
        cached: list[int] | None = ctx.scratch.get(SCRATCH_KEY)
        if cached is None:
            cached = block_hashes(prompt_text(ctx.body), self.block_chars, ctx.model)
            ctx.scratch[SCRATCH_KEY] = cached
        return cached

    def match(self, ctx: RequestContext, engines: Iterable[str]) -> dict[str, int]:
        """For each engine, how many of the prompt's leading blocks it is believed to hold."""
        return self.index.match(self.hashes(ctx), engines)

    def attempt_opened(self, ctx: RequestContext, engine: Candidate) -> None:
        """The engine took the request: it now holds the prompt's blocks."""
        hashes = self.hashes(ctx)
        if hashes:
            self.index.record(engine.name, hashes)

    def engine_restarted(self, name: str) -> None:
        """The engine came back with an empty cache."""
        self.index.forget(name)
