"""In-process backends of the store protocols: the embedded default (one gateway)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from adapters import AdapterSpec
from gateway.core.policy import RETENTION_S, VersionPolicy
from gateway.stores.protocols import (
    CachedResponse,
    Held,
    RolloutRecord,
    Stores,
)
from gateway.stores.windows import Seconds, Window

if TYPE_CHECKING:
    from gateway.config.state import CacheSettings


class MemoryCounters:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    async def acquire(self, key: str, limit: int) -> bool:
        count = self._counts.get(key, 0)
        if count >= limit:
            return False
        self._counts[key] = count + 1
        return True

    async def release(self, key: str) -> None:
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    async def value(self, key: str) -> int:
        return self._counts.get(key, 0)


class MemoryCache:
    """LRU with per-entry expiry, bounded by entries and by bytes."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CachedResponse, int]] = OrderedDict()
        self._bytes = 0

    async def get(self, key: str) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value, _ = entry
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: CachedResponse, ttl_s: float) -> None:
        size = value.size
        if size > self.max_bytes or ttl_s <= 0:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, _, size = self._entries.pop(key)
        self._bytes -= size


class MemoryLocks:
    """Leases in one process: what replicas sharing this object would agree on (tests
    run several gateways' directors over one)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held: dict[str, tuple[str, float]] = {}

    async def acquire(self, key: str, owner: str, ttl_s: float) -> bool:
        if await self.held(key):
            return False
        self._held[key] = (owner, self._clock() + ttl_s)
        return True

    async def release(self, key: str, owner: str) -> None:
        if self._held.get(key, ("", 0.0))[0] == owner:
            del self._held[key]

    async def held(self, key: str) -> bool:
        lease = self._held.get(key)
        if lease is not None and self._clock() >= lease[1]:
            del self._held[key]
            lease = None
        return lease is not None


class MemoryAdapterPlacement:
    def __init__(self) -> None:
        self._engines: dict[str, set[str]] = {}

    async def engines_with(self, adapter: str) -> frozenset[str]:
        return frozenset(self._engines.get(adapter, ()))

    async def placed(self, adapter: str, engine: str) -> None:
        self._engines.setdefault(adapter, set()).add(engine)

    async def removed(self, adapter: str, engine: str) -> None:
        engines = self._engines.get(adapter)
        if engines is not None:
            engines.discard(engine)
            if not engines:
                del self._engines[adapter]

    async def forget_engine(self, engine: str) -> None:
        for adapter in list(self._engines):
            await self.removed(adapter, engine)


class MemoryAdapterRegistrations:
    """Registered adapters in one process."""

    def __init__(self) -> None:
        self._specs: dict[str, AdapterSpec] = {}

    async def all(self) -> list[AdapterSpec]:
        return list(self._specs.values())

    async def put(self, spec: AdapterSpec) -> None:
        self._specs[spec.name] = spec

    async def remove(self, name: str) -> bool:
        return self._specs.pop(name, None) is not None


class MemoryVersionPolicies:
    def __init__(self, history_size: int = 20) -> None:
        self._current: dict[str, VersionPolicy] = {}
        self._history: dict[str, deque[VersionPolicy]] = {}
        self._size = history_size

    async def get(self, alias: str) -> VersionPolicy | None:
        return self._current.get(alias)

    async def set(self, alias: str, policy: VersionPolicy) -> None:
        old = self._current.get(alias)
        if old is not None:
            self._history.setdefault(alias, deque(maxlen=self._size)).appendleft(old)
        self._current[alias] = policy

    async def history(self, alias: str) -> list[VersionPolicy]:
        return list(self._history.get(alias, ()))

    async def rollback(self, alias: str) -> VersionPolicy | None:
        history = self._history.get(alias)
        if not history:
            return None
        self._current[alias] = previous = history.popleft()
        return previous


class MemoryMeasurements:
    """Per-second measurements of this process's requests."""

    def __init__(self, retention_s: float = RETENTION_S) -> None:
        self.retention_s = retention_s
        self._seconds = Seconds(retention_s)

    def record(self, alias: str, version: str, *, at: float, error: bool,
               ttft_s: float | None) -> None:
        self._seconds.count(alias, version, at, error, ttft_s)

    async def window(self, alias: str, version: str, since: int, until: int) -> Window:
        return self._seconds.window(alias, version, since, until)


class MemoryRollouts:
    """Rollout records and their leases in one process (tests run several replicas'
    rollouts over one)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, RolloutRecord] = {}
        self._leases: dict[str, tuple[str, float]] = {}

    def _holder(self, alias: str) -> str | None:
        lease = self._leases.get(alias)
        if lease is not None and self._clock() >= lease[1]:
            del self._leases[alias]
            lease = None
        return None if lease is None else lease[0]

    def _running(self, alias: str) -> RolloutRecord | None:
        record = self._records.get(alias)
        return record if record is not None and record.state == "running" else None

    async def get(self, alias: str) -> RolloutRecord | None:
        return self._records.get(alias)

    async def start(self, record: RolloutRecord, owner: str, lease_s: float) -> bool:
        if self._running(record.alias) is not None:
            return False
        self._records[record.alias] = replace(record, state="running")
        self._leases[record.alias] = (owner, self._clock() + lease_s)
        return True

    async def update(self, record: RolloutRecord, owner: str, lease_s: float,
                     decisions: Sequence[dict[str, Any]] = ()) -> Held:
        alias, holder = record.alias, self._holder(record.alias)
        if holder is not None and holder != owner:
            return "lost"
        current = self._running(alias)
        if current is None:
            return "stopped"
        self._records[alias] = replace(record, decisions=(*current.decisions, *decisions))
        if record.state == "running":
            self._leases[alias] = (owner, self._clock() + lease_s)
        else:
            self._leases.pop(alias, None)
        return "held"

    async def cancel(self, alias: str, decision: dict[str, Any]) -> bool:
        current = self._running(alias)
        if current is None:
            return False
        self._records[alias] = replace(current, state="cancelled",
                                       decisions=(*current.decisions, decision))
        self._leases.pop(alias, None)
        return True

    async def take(self, alias: str, owner: str, lease_s: float) -> bool:
        if self._running(alias) is None or self._holder(alias) is not None:
            return False
        self._leases[alias] = (owner, self._clock() + lease_s)
        return True

    async def release(self, alias: str, owner: str) -> None:
        if self._holder(alias) == owner:
            del self._leases[alias]


def memory_stores(cache: CacheSettings | None = None, *,
                  measure_retention_s: float = RETENTION_S) -> Stores:
    """Fresh in-memory stores (one set per app); ``cache`` bounds the response cache."""
    store = MemoryCache() if cache is None else MemoryCache(cache.max_entries, cache.max_bytes)
    return Stores(MemoryCounters(), store, MemoryAdapterPlacement(),
                  MemoryVersionPolicies(), MemoryMeasurements(measure_retention_s),
                  MemoryRollouts(), registrations=MemoryAdapterRegistrations())
