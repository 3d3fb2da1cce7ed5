"""One app's Redis connection: the bounded pool, the health probe, the outage state.

Every Redis store calls Redis through :meth:`RedisLink.call`, the one place where
redis-py's errors become :class:`StoreUnavailable`. A connection error or a timeout
marks Redis down at once, so the requests that follow take their fallback without
waiting on a dead socket; the probe (a PING every ``probe_interval_s``) marks it up
again and then runs the stores' beats (the admission lease, resynchronisation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from gateway.config.state import RedisSettings
from gateway.observability.metrics import GatewayMetrics
from gateway.stores.protocols import StoreUnavailable
from gateway.stores.redis_sentinel import is_sentinel, sentinel_client

log = logging.getLogger("sluice.redis")

T = TypeVar("T")
Beat = Callable[[], Awaitable[None]]
"""Runs after every successful probe (while Redis is up)."""

_OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
"""Errors that say Redis is unreachable, as opposed to a refused command."""


def as_bytes(value: bytes | str) -> bytes:
    """A reply as bytes (the client does not decode replies; typed as either)."""
    return value.encode() if isinstance(value, str) else value


class RedisLink:
    """The pooled client and whether Redis is up. Built in the lifespan, closed with it."""

    def __init__(self, settings: RedisSettings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self._metrics = metrics
        # No retries inside redis-py: a failed call falls back at once and the probe
        # decides when Redis is back. The pool waits at most one command timeout.
        connection = {"max_connections": settings.max_connections,
                      "timeout": settings.command_timeout_s,
                      "socket_timeout": settings.command_timeout_s,
                      "socket_connect_timeout": settings.connect_timeout_s,
                      "retry": Retry(NoBackoff(), 0)}
        self.client: Redis
        if is_sentinel(settings.url):  # the primary that the sentinels name, followed
            self.client = sentinel_client(settings.url, **connection)
        else:
            self.client = Redis.from_pool(
                BlockingConnectionPool.from_url(settings.url, **connection))
        self.up = False
        self.last_error = "not probed yet"
        self._beats: list[Beat] = []
        self._closing = False
        self.bound_s = settings.connect_timeout_s + 2 * settings.command_timeout_s
        self.retry_after = {"Retry-After": str(max(1, math.ceil(settings.probe_interval_s)))}
        """The ``Retry-After`` of every :class:`StoreUnavailable` raised here (the next
        probe may find Redis back): a store that refuses on it passes it on."""

    def key(self, *parts: str) -> str:
        """A key under the configured prefix."""
        return self.settings.key_prefix + ":".join(parts)

    def on_beat(self, beat: Beat) -> None:
        self._beats.append(beat)

    async def call(self, op: str, command: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation (``op`` names it in metrics). Raises
        :class:`StoreUnavailable` at once while Redis is down, and when it fails."""
        if not self.up:
            raise StoreUnavailable(f"redis is down ({self.last_error})",
                                   headers=dict(self.retry_after))
        try:
            async with asyncio.timeout(self.bound_s):
                return await command()
        except (RedisError, *_OUTAGE) as exc:
            self.failed(op, exc)
            raise StoreUnavailable(f"redis {op} failed: {exc}",
                                   headers=dict(self.retry_after)) from exc

    def failed(self, op: str, exc: BaseException) -> None:
        """Count a failure; an unreachable Redis is marked down until the next probe."""
        self._metrics.redis_errors.labels(op).inc()
        self.last_error = f"{op}: {type(exc).__name__}: {exc}"[:300]
        if isinstance(exc, _OUTAGE) and self.up:
            log.warning("redis down (%s): stores fall back until it answers again",
                        self.last_error)
            self._set_up(False)

    async def probe(self) -> bool:
        """PING Redis; when it answers, mark it up and run the beats.

        While Redis is down the idle pooled connections are closed first: they may lead
        to a Redis that has since restarted, and redis-py (with its maintenance
        notifications on, the default) hands out a connection closed by the server
        without checking it, so that each would fail one command after the recovery."""
        try:
            async with asyncio.timeout(self.bound_s):
                if not self.up:
                    await self.client.connection_pool.disconnect(inuse_connections=False)
                await self.client.ping()
        except (RedisError, *_OUTAGE) as exc:
            self.failed("ping", exc)
            self._set_up(False)
            return False
        if not self.up:
            log.info("redis up")
            self._set_up(True)
        for beat in self._beats:
            with contextlib.suppress(StoreUnavailable):  # counted; the next beat retries
                await beat()
        return self.up

    async def run_probes(self) -> None:
        """Probe every ``probe_interval_s`` until :meth:`aclose` (a lifespan task).

        The loop also checks a flag: redis-py can swallow a cancellation that lands
        inside a command, and a cancelled probe task must still end."""
        while not self._closing:
            await self.probe()
            await asyncio.sleep(self.settings.probe_interval_s)

    def stop_probes(self) -> None:
        self._closing = True

    async def aclose(self) -> None:
        self._closing = True
        async with asyncio.timeout(self.bound_s):
            await self.client.aclose()

    def _set_up(self, up: bool) -> None:
        self.up = up
        self._metrics.redis_up.set(1 if up else 0)


OnMessage = Callable[[str | None], Awaitable[None]]
"""Called with each message published on a channel, or None after each (re)subscription
(messages published while unsubscribed are lost: read everything again)."""


async def watch_channel(link: RedisLink, channel: str, on_message: OnMessage, *, op: str,
                        poll_s: float = 1.0) -> None:
    """Call ``on_message`` for every message published on ``channel``, forever (a
    lifespan task). A broken subscription is counted under ``op`` and opened again after
    a probe interval."""
    while True:
        pubsub = link.client.pubsub()
        try:
            await pubsub.subscribe(channel)
            await on_message(None)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=poll_s)
                if message is not None and message.get("type") == "message":
                    data = message["data"]
                    await on_message(data.decode() if isinstance(data, bytes) else str(data))
        except (RedisError, *_OUTAGE) as exc:
            link.failed(op, exc)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        await asyncio.sleep(link.settings.probe_interval_s)
