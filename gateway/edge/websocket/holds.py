"""Sockets held open per caller, so one caller cannot hold every connection slot: the
``/v1/ws`` sockets and the ``/v1/realtime`` sessions each count their own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import Scope

from gateway.edge.middleware import caller


def holder(scope: Scope) -> str:
    """Who holds a socket: its key's principal, or its client address without keys."""
    address = scope.get("client") or ("",)
    return caller(scope)[0] or f"address:{address[0]}"


class Holds:
    """How many sockets each holder has open, at most ``most`` each."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._held: dict[str, int] = {}

    def held(self, who: str) -> int:
        return self._held.get(who, 0)

    def full(self, who: str) -> bool:
        return self.held(who) >= self.most

    @contextmanager
    def hold(self, who: str) -> Iterator[None]:
        """One more socket of ``who`` while the block runs (the caller checks
        :meth:`full` first)."""
        self._held[who] = self.held(who) + 1
        try:
            yield
        finally:
            if self._held[who] <= 1:
                del self._held[who]
            else:
                self._held[who] -= 1
