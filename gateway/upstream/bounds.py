"""A time bound that a saturated event loop cannot trip by itself.

A timer on the gateway's own loop fires as soon as the loop gets to it, and a loop runs
its due timers before it polls sockets. When the loop is saturated (a thousand requests
arriving together on a loaded 2-core machine made single turns of 1.2 to 2.2 s), a plain
timer fired before the loop had seen the answers that had already arrived: connections
the engines had accepted at once were counted as connect timeouts, and health checks
the engines had answered as failed ones (marking a healthy engine down). A
:class:`TurnsBound` expires only once its deadline has passed *and* the loop has since
turned :data:`GRACE_TURNS` more times without the awaited work finishing; with an idle
loop the extra turns take microseconds, so an engine that does not answer still fails
at about the bound.
"""

from __future__ import annotations

import asyncio

GRACE_TURNS = 8
"""Event loop turns awaited work still gets once its bound has passed. Measured: a
connect the engine had accepted finished within 3 more turns on uvloop, 1 on asyncio's
own loop."""


class TurnsBound:
    """Expires ``timeout`` (an ``asyncio.timeout(None)``) once the loop time
    ``deadline`` has passed and the event loop has then turned ``turns`` more times
    (each turn polls the sockets and runs what was ready). Cancel it when the awaited
    work ends."""

    __slots__ = ("_handle", "_loop", "_timeout", "_turns_left")

    def __init__(self, timeout: asyncio.Timeout, deadline: float,
                 turns: int = GRACE_TURNS) -> None:
        self._timeout = timeout
        self._turns_left = turns
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.Handle = self._loop.call_at(deadline, self._turn)

    def _turn(self) -> None:
        if self._turns_left:
            self._turns_left -= 1
            self._handle = self._loop.call_soon(self._turn)
        else:
            self._timeout.reschedule(self._loop.time())

    def cancel(self) -> None:
        self._handle.cancel()
