"""Bounded keep-alive connections per engine, for :mod:`gateway.upstream.http1`.

Every open connection holds a slot, whether in use, idle or still connecting: at most
``max_total`` in all and ``max_per_engine`` per engine. A request reuses the engine's most
recently idle connection, or opens one while there is room (closing another engine's
idle connection when only the total stands in the way), or waits its turn in one queue
(first come, first served among the waiters that could go), bounded by the connect
timeout like the connect itself (the connect's bound also counts loop turns: see
:class:`~gateway.upstream.bounds.TurnsBound`). Idle connections are at most
``max_idle`` per engine and are closed after ``idle_s``; one the engine closes while idle
leaves the pool at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from gateway.core.errors import EngineTimeout
from gateway.upstream.bounds import TurnsBound

Key = tuple[str, int, bool]
"""An engine's host, port and whether it speaks TLS."""

POOL_FULL = "no connection to the engine came free in time (connection limit)"


class Pooled(Protocol):
    key: Key
    idle_since: float

    @property
    def alive(self) -> bool: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Pooled)
Waiter = tuple[Key, "asyncio.Future[C | None]"]


class ConnectionPool(Generic[C]):
    """Connections made by ``open(key)``; callers :meth:`acquire` and :meth:`release`
    each one exactly once, and a connection lost while idle is reported to :meth:`lost`."""

    def __init__(self, open: Callable[[Key], Awaitable[C]], *, max_total: int,
                 max_per_engine: int, max_idle: int = 256, idle_s: float = 30.0) -> None:
        self._open = open
        self._max_total = max_total
        self._max_per_engine = max_per_engine
        self._max_idle = max_idle
        self._idle_s = idle_s
        self._idle: dict[Key, deque[C]] = {}
        self._slots: dict[Key, int] = {}
        self._total = 0
        self._connections: set[C] = set()
        self._waiters: deque[Waiter[C]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def acquire(self, key: Key, timeout_s: float) -> C:
        """A connection to ``key``: an idle one, or a new one within ``timeout_s``
        (waiting for a slot and connecting together). Raises ``EngineTimeout`` when no
        slot came free in time, and what ``open`` raises (a connect's ``TimeoutError``)."""
        connection = self._take(key)
        if connection is not None:
            return connection
        if self._closed:
            raise ConnectionAbortedError("the transport is closed")
        deadline = asyncio.get_running_loop().time() + timeout_s
        if not self._reserve(key):
            connection = await self._wait(key, deadline)
            if connection is not None:
                return connection
        try:
            async with asyncio.timeout(None) as bound:
                grace = TurnsBound(bound, deadline)
                try:
                    connection = await self._open(key)
                finally:
                    grace.cancel()
        except BaseException:
            self._free(key)
            self._wake()
            raise
        if self._closed:  # the pool closed while it connected
            self._drop(connection)
            raise ConnectionAbortedError("the transport is closed")
        self._connections.add(connection)
        return connection

    def release(self, connection: C, *, reuse: bool) -> None:
        """Keep ``connection`` for the next request to its engine, or close it."""
        idle = self._idle.get(connection.key)
        if (not reuse or self._closed or not connection.alive
                or (idle is not None and len(idle) >= self._max_idle)):
            self._drop(connection)
        else:
            connection.idle_since = asyncio.get_running_loop().time()
            if idle is None:
                idle = self._idle[connection.key] = deque()
            idle.append(connection)
            if self._sweep is None:
                self._schedule_sweep(connection.idle_since + self._idle_s)
        self._wake()

    def lost(self, connection: C) -> None:
        """The engine closed ``connection``; it leaves the pool if it was idle."""
        idle = self._idle.get(connection.key)
        if idle is not None and connection in idle:
            idle.remove(connection)
            self._drop(connection)
            self._wake()

    def drop_idle(self, key: Key) -> None:
        """Close the idle connections to ``key`` (one turned out dead: those idle as
        long or longer likely are too)."""
        idle = self._idle.pop(key, None)
        while idle:
            self._drop(idle.pop())
        self._wake()

    async def aclose(self) -> None:
        """Close every connection, idle or in use, and turn the waiters away."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle.clear()
        for connection in list(self._connections):
            connection.close()
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(ConnectionAbortedError("the transport is closed"))

    def _take(self, key: Key) -> C | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely closed
            if connection.alive:
                return connection
            self._drop(connection)
        return None

    def _reserve(self, key: Key) -> bool:
        """Take a slot for a new connection to ``key`` if there is room."""
        held = self._slots.get(key, 0)
        if held >= self._max_per_engine or self._closed:
            return False
        if self._total >= self._max_total and not self._close_idle_elsewhere(key):
            return False
        self._slots[key] = held + 1
        self._total += 1
        return True

    def _close_idle_elsewhere(self, key: Key) -> bool:
        for other, idle in self._idle.items():
            if other != key and idle:
                self._drop(idle.popleft())
                return True
        return False

    def _drop(self, connection: C) -> None:
        connection.close()
        self._connections.discard(connection)
        self._free(connection.key)

    def _free(self, key: Key) -> None:
        """Give a slot back; the caller then wakes the waiters (never from inside
        :meth:`_wake`)."""
        held = self._slots[key] - 1
        if held:
            self._slots[key] = held
        else:
            del self._slots[key]
        self._total -= 1

    async def _wait(self, key: Key, deadline: float) -> C | None:
        """An idle connection handed over, or None: a slot reserved for this caller."""
        future: asyncio.Future[C | None] = asyncio.get_running_loop().create_future()
        waiter: Waiter[C] = (key, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await future
        except BaseException as exc:
            if future.cancelled() or not future.done():
                future.cancel()
                if waiter in self._waiters:  # not if aclose turned it away
                    self._waiters.remove(waiter)
            elif future.exception() is None:  # handed over just too late: give it back
                handed = future.result()
                if handed is None:
                    self._free(key)
                    self._wake()
                else:
                    self.release(handed, reuse=True)
            if isinstance(exc, TimeoutError):
                raise EngineTimeout(POOL_FULL, blames_engine=False) from exc
            raise

    def _wake(self) -> None:
        """Hand what is free now to the waiters that can use it, oldest first."""
        if not self._waiters:
            return
        for waiter in list(self._waiters):
            key, future = waiter
            if future.done():  # cancelled; its owner takes it out of the queue
                continue
            connection = self._take(key)
            if connection is None and not self._reserve(key):
                continue
            self._waiters.remove(waiter)
            future.set_result(connection)

    def _schedule_sweep(self, when: float) -> None:
        self._sweep = asyncio.get_running_loop().call_at(when, self._close_expired)

    def _close_expired(self) -> None:
        self._sweep = None
        cutoff = asyncio.get_running_loop().time() - self._idle_s
        for key, idle in list(self._idle.items()):
            while idle and idle[0].idle_since <= cutoff:
                self._drop(idle.popleft())
            if not idle:
                del self._idle[key]
        if self._idle:
            self._schedule_sweep(min(idle[0].idle_since for idle in self._idle.values())
                                 + self._idle_s)
        self._wake()
