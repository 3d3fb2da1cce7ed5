"""Backing off a client address that keeps sending wrong admin tokens.

After ``free`` failures in a row from one address, every admin request from it is
refused 429 (``Retry-After``) without the token being looked at, for 1 s, then 2 s,
4 s ... up to ``max_s`` after each further failure; a right token clears the address.
Per replica (a caller spread over ``n`` replicas gets ``n`` times the attempts, still
bounded). At most ``max_addresses`` addresses are remembered (the oldest-seen go first),
and one quiet for ``forget_s`` is forgotten.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.core.errors import TooManyFailures


@dataclass(slots=True)
class _Address:
    failures: int = 0
    blocked_until: float = 0.0
    last: float = 0.0


class FailedAttempts:
    """Failures per client address, and the wait each one is held to."""

    def __init__(self, *, free: int = 5, base_s: float = 1.0, max_s: float = 60.0,
                 forget_s: float = 600.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._free, self._base_s, self._max_s = free, base_s, max_s
        self._forget_s, self._max_addresses = forget_s, max_addresses
        self._clock = clock
        self._addresses: OrderedDict[str, _Address] = OrderedDict()

    def check(self, address: str) -> None:
        """Raise :class:`TooManyFailures` while ``address`` is held back."""
        entry = self._addresses.get(address)
        if entry is None:
            return
        now = self._clock()
        if now - entry.last > self._forget_s:
            del self._addresses[address]
            return
        if now < entry.blocked_until:
            raise TooManyFailures(
                f"too many failed admin attempts from this address; retry in "
                f"{math.ceil(entry.blocked_until - now)} s",
                retry_after_s=math.ceil(entry.blocked_until - now))

    def failed(self, address: str) -> None:
        now = self._clock()
        entry = self._addresses.pop(address, None) or _Address()
        entry.failures += 1
        entry.last = now
        if entry.failures >= self._free:
            wait = min(self._max_s, self._base_s * 2.0 ** (entry.failures - self._free))
            entry.blocked_until = now + wait
        self._addresses[address] = entry
        while len(self._addresses) > self._max_addresses:
            self._addresses.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._addresses.pop(address, None)
