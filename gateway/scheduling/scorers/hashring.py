"""Consistent hashing with bounded loads, for session and prefix affinity.

Plain consistent hashing keeps a key on the same engine, which is what affinity wants,
but a hot key (one long session, one popular system prompt) can then bury one engine.
Bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2016; used by Google Cloud, HAProxy
and Envoy) cap every node at ``ceil(load_factor * (total + 1) / nodes)`` in-flight
requests: a key whose node is full walks on clockwise to the next node with room, so
affinity holds while it is cheap and gives way when it would overload an engine.

Hashes come from blake2b, not Python's salted ``hash``, so every process and every
gateway replica places the same key on the same engine.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

_CACHED_RINGS = 8


def stable_hash(text: str) -> int:
    """64-bit hash of `text` that is the same in every process."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True, slots=True)
class _Ring:
    points: list[int]
    """Sorted point hashes."""
    owners: list[str]
    """owners[i] is the node that placed points[i]."""


class BoundedLoadRing:
    """Maps keys to nodes; the node set is whatever the caller passes to :meth:`pick`.

    Rings are built per node set and kept for the last few sets, so a fleet that changes
    rarely pays the build once while memory stays bounded.
    """

    __slots__ = ("_rings", "points_per_node")

    def __init__(self, points_per_node: int = 128) -> None:
        if points_per_node < 1:
            raise ValueError("points_per_node must be >= 1")
        self.points_per_node = points_per_node
        self._rings: OrderedDict[frozenset[str], _Ring] = OrderedDict()

    def pick(self, key: str, loads: Mapping[str, int], load_factor: float) -> str | None:
        """The first node clockwise from `key` whose load stays within capacity.

        `loads` maps each candidate node to its in-flight requests; None when it is empty.
        With ``load_factor >= 1`` some node always has room (they cannot all be full), so a
        node is always returned.
        """
        if load_factor < 1.0:
            raise ValueError("load_factor must be >= 1")
        if not loads:
            return None
        capacity = math.ceil(load_factor * (sum(loads.values()) + 1) / len(loads))
        ring = self._ring(frozenset(loads))
        points, owners = ring.points, ring.owners
        start = bisect.bisect_left(points, stable_hash(key))
        count = len(points)
        seen: set[str] = set()
        for offset in range(count):
            node = owners[(start + offset) % count]
            if node in seen:
                continue
            if loads[node] + 1 <= capacity:
                return node
            seen.add(node)
            if len(seen) == len(loads):
                break
        # Unreachable for load_factor >= 1 and non-negative loads; stay total anyway.
        return min(loads, key=lambda name: (loads[name], name))

    def _ring(self, nodes: frozenset[str]) -> _Ring:
        ring = self._rings.get(nodes)
        if ring is not None:
            self._rings.move_to_end(nodes)
            return ring
        placed = sorted(
            (stable_hash(f"{node}#{replica}"), node)
            for node in nodes
            for replica in range(self.points_per_node)
        )
        ring = _Ring(points=[point for point, _ in placed], owners=[node for _, node in placed])
        self._rings[nodes] = ring
        if len(self._rings) > _CACHED_RINGS:
            self._rings.popitem(last=False)
        return ring
