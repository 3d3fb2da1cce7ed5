"""Stall and total-time bounds for open engine streams, checked by one task.

A per-read socket timer costs a timer cancel and a new ``call_later`` on every read,
and aiohttp's ``total`` bound a timer context around every read: together about 5 % of
the gateway's CPU when relaying (profiled). Instead each stream notes when it last read
(one clock call), and one task per transport looks at every open stream a few times per
bound, closing a stream that stalled longer than its between-reads bound or outlived its
total bound. Its reader then sees the connection end and reports the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

log = logging.getLogger("sluice.engines")


class Watched(Protocol):
    last_read: float
    deadline: float
    between_reads_s: float

    def expire(self, reason: str) -> None:
        """Close the stream; ``reason`` is ``stall`` or ``total``."""


class Watchdog:
    """Checks the streams it tracks every ``interval_s`` (loop time)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._streams: set[Watched] = set()
        self._task: asyncio.Task[None] | None = None

    def track(self, stream: Watched) -> None:
        self._streams.add(stream)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="stream-watchdog")

    def untrack(self, stream: Watched) -> None:
        self._streams.discard(stream)

    def check(self, now: float) -> None:
        """Expire every stream past one of its bounds at loop time ``now``."""
        for stream in list(self._streams):
            if now >= stream.deadline:
                self._streams.discard(stream)
                stream.expire("total")
            elif now - stream.last_read >= stream.between_reads_s:
                self._streams.discard(stream)
                stream.expire("stall")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.check(loop.time())
            except Exception:  # the watchdog must outlive any one stream's failure
                log.exception("stream watchdog check failed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
