"""One server's connection slots: who may open a connection, and what it may ask.

A connection takes one of ``max_connections`` slots, unless its client address already
holds ``max_connections_per_address`` connections, or every slot is taken and none of
their connections is waiting for a request head (the oldest such is closed to make
room). Then it takes one of ``reserved_connections`` reserved slots, which answer a
single ``GET`` or ``HEAD`` of ``/health`` or ``/ready`` (:func:`is_probe`); when those
are all taken too, by connections still waiting for their head, the oldest of them makes
room, else the connection is refused. Probes answer quickly and a reserved connection
closes after one, so a full server still tells its load balancer it is alive.

The count of slots taken is the server's (uvicorn's set of connections, WebSockets
included); the count per address is of HTTP connections, kept here: a connection
upgraded to a WebSocket leaves it (``/v1/ws`` caps its sockets per key instead).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.config.connections import ConnectionLimits

PROBE_PATHS = frozenset({b"/health", b"/ready"})
PROBE_METHODS = frozenset({b"GET", b"HEAD"})

C = TypeVar("C", bound=Hashable)


def is_probe(method: bytes, url: bytes) -> bool:
    """Whether a request may use a reserved slot: GET or HEAD of a probe path (any
    query string; the origin form only)."""
    return method in PROBE_METHODS and url.partition(b"?")[0] in PROBE_PATHS


@dataclass(frozen=True)
class Admission(Generic[C]):
    """What a new connection may do. ``refusal``: why it must be closed at once (else
    it is in); ``evict``: a connection waiting for its head, to close for room;
    ``probes_only``: why it holds a reserved slot (a probe is all it may ask)."""

    refusal: str | None = None
    evict: C | None = None
    probes_only: str | None = None


class Slots(Generic[C]):
    """The slots of one server (see the module docstring)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.waiting: OrderedDict[C, None] = OrderedDict()
        """Connections waiting for a request head, the longest waiting first."""
        self.reserved: OrderedDict[C, None] = OrderedDict()
        """Connections in a reserved slot, the oldest first."""
        self.per_address: dict[str, int] = {}
        self._address: dict[C, str] = {}

    def open(self, conn: C, address: str | None, connections: int) -> Admission[C]:
        """Admit ``conn`` from ``address`` (None: a Unix socket's), with ``connections``
        open on the server, itself included."""
        if address is not None:
            held = self.per_address.get(address, 0)
            self.per_address[address] = held + 1
            self._address[conn] = address
            most = self.limits.max_connections_per_address
            if held >= most:
                return self._reserve(conn, f"this client address holds {held} connections "
                                           f"(at most {most}); retry shortly")
        if connections - len(self.reserved) <= self.limits.max_connections:
            return Admission()
        if self.waiting:
            oldest, _ = self.waiting.popitem(last=False)
            if oldest in self.reserved:  # its reserved slot passes on
                del self.reserved[oldest]
                self.reserved[conn] = None
                return Admission(evict=oldest, probes_only="every connection holds a "
                                                           "request in progress")
            return Admission(evict=oldest)
        return self._reserve(conn, "every connection holds a request in progress; "
                                   "retry shortly")

    def _reserve(self, conn: C, why: str) -> Admission[C]:
        if len(self.reserved) < self.limits.reserved_connections:
            self.reserved[conn] = None
            return Admission(probes_only=why)
        idle = next((c for c in self.reserved if c in self.waiting), None)
        if idle is None:
            return Admission(refusal=why)
        del self.reserved[idle], self.waiting[idle]
        self.reserved[conn] = None
        return Admission(evict=idle, probes_only=why)

    def close(self, conn: C) -> None:
        """``conn`` is gone, or no longer an HTTP connection (upgraded)."""
        self.waiting.pop(conn, None)
        self.reserved.pop(conn, None)
        address = self._address.pop(conn, None)
        if address is not None:
            held = self.per_address[address] - 1
            if held:
                self.per_address[address] = held
            else:
                del self.per_address[address]
