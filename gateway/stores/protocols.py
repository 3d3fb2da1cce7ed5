"""The store protocols: counters, response cache, adapter placement, version policies,
per-version measurements and guarded rollouts.

They are async because a shared backend answers over the network; nothing on the
per-token path calls them (a request touches them on arrival and when it ends; the
measurements of a finished request are counted locally and shared in batches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from adapters import AdapterSpec
from gateway.core.errors import SluiceError
from gateway.core.policy import VersionPolicy
from gateway.stores.windows import Window


class Counters(Protocol):
    """Named counters with a ceiling: admission slots now, rate limits later."""

    async def acquire(self, key: str, limit: int) -> bool:
        """Add one to ``key`` if it is below ``limit``; False (and nothing added) if not.
        :class:`StoreUnavailable` when the count cannot be kept (a shared store that is
        down, configured to fail closed)."""
        ...

    async def release(self, key: str) -> None:
        """Take one away (never below zero)."""
        ...

    async def value(self, key: str) -> int: ...


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A finished answer kept for identical requests: the non-streamed JSON body, or
    the streamed event payloads in order and, apart, the stream's usage chunk (sent
    only to a client that asks for usage)."""

    body: bytes | None = None
    events: tuple[bytes, ...] = ()
    usage: bytes | None = None

    @property
    def size(self) -> int:
        """Bytes of payload it holds."""
        return len(self.body or b"") + sum(map(len, self.events)) + len(self.usage or b"")


class ResponseCache(Protocol):
    async def get(self, key: str) -> CachedResponse | None: ...

    async def put(self, key: str, value: CachedResponse, ttl_s: float) -> None: ...


class Locks(Protocol):
    """Leases on names, shared by every replica: which one leads an identical request
    (see :mod:`gateway.cache`). A lease ends when its owner releases it or after its
    ``ttl_s`` (its owner crashed)."""

    async def acquire(self, key: str, owner: str, ttl_s: float) -> bool:
        """Take ``key`` for ``owner`` if nobody holds it; False when somebody does."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Give ``key`` back, if ``owner`` still holds it."""
        ...

    async def held(self, key: str) -> bool: ...


class AdapterPlacement(Protocol):
    """Which engines hold which LoRA adapters (loaded, or being loaded)."""

    async def engines_with(self, adapter: str) -> frozenset[str]: ...

    async def placed(self, adapter: str, engine: str) -> None: ...

    async def removed(self, adapter: str, engine: str) -> None: ...

    async def forget_engine(self, engine: str) -> None:
        """The engine restarted: it holds no adapter now."""
        ...


class AdapterRegistrations(Protocol):
    """LoRA adapters registered through the admin API (beside the configured ones),
    shared by every replica. A change is told to the other replicas (``changed``)."""

    async def all(self) -> list[AdapterSpec]: ...

    async def put(self, spec: AdapterSpec) -> None:
        """Register ``spec``, replacing one of the same name."""
        ...

    async def remove(self, name: str) -> bool:
        """Unregister ``name``; False when it was not registered."""
        ...


class VersionPolicies(Protocol):
    async def get(self, alias: str) -> VersionPolicy | None: ...

    async def set(self, alias: str, policy: VersionPolicy) -> None:
        """Replace the alias's policy in one step, keeping the old one in its history."""
        ...

    async def history(self, alias: str) -> list[VersionPolicy]:
        """Earlier policies, newest first (bounded)."""
        ...

    async def rollback(self, alias: str) -> VersionPolicy | None:
        """Restore the previous policy; None when there is none."""
        ...


class VersionMeasurements(Protocol):
    """Requests, server errors and a TTFT histogram per (alias, version) and whole
    second (see :mod:`gateway.stores.windows`), kept ``retention_s``: what a guarded
    rollout judges a version by. Every replica's requests count, whichever judges."""

    retention_s: float

    def record(self, alias: str, version: str, *, at: float, error: bool,
               ttft_s: float | None) -> None:
        """Count one request that ended at ``at`` (epoch seconds); ``ttft_s`` is None
        when it failed before its first byte. Local and synchronous: no I/O."""
        ...

    async def window(self, alias: str, version: str, since: int, until: int) -> Window:
        """The version's figures over the seconds ``[since, until)`` (epoch seconds)."""
        ...


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A guarded rollout as the store keeps it: the plan, where it stands, and its
    decisions (JSON objects, oldest first)."""

    alias: str
    to: str
    base: str
    steps: tuple[float, ...]
    hold_s: float
    before: VersionPolicy
    """The policy before the rollout: what a rollback restores."""
    started_at: float
    state: str = "running"
    """``running``, ``done``, ``rolled_back``, ``superseded``, ``cancelled``, ``failed``."""
    step: int = 0
    step_started: float = 0.0
    """When the current step's split was written (epoch seconds): its hold's start."""
    written: VersionPolicy | None = None
    """The split the rollout wrote last."""
    owner: str = ""
    """The replica that drives it (or drove it last)."""
    decisions: tuple[dict[str, Any], ...] = ()


Held = Literal["held", "lost", "stopped"]
"""What an owner's update found: its lease held (the update was written), another
replica holds the lease (nothing written), or the rollout is no longer running (it was
cancelled: nothing written)."""


class RolloutRecords(Protocol):
    """Each alias's latest guarded rollout, and the lease on driving it. A running
    rollout has one driver: the replica holding its lease (``lease_s``, renewed by
    every update); a replica that finds the lease lapsed takes it and resumes."""

    async def get(self, alias: str) -> RolloutRecord | None: ...

    async def start(self, record: RolloutRecord, owner: str, lease_s: float) -> bool:
        """Store ``record`` (running) as its alias's rollout, leased to ``owner``, in
        one step; False (nothing stored) while a rollout of the alias is running."""
        ...

    async def update(self, record: RolloutRecord, owner: str, lease_s: float,
                     decisions: Sequence[dict[str, Any]] = ()) -> Held:
        """Write ``record``'s state and progress, append ``decisions`` and renew the
        lease (end it when the state is no longer ``running``): if the stored rollout is
        still running and no other replica holds its lease (``owner``'s own lease that
        lapsed unseen is taken back)."""
        ...

    async def cancel(self, alias: str, decision: dict[str, Any]) -> bool:
        """Mark the running rollout cancelled (its owner stops at its next check);
        False when none is running."""
        ...

    async def take(self, alias: str, owner: str, lease_s: float) -> bool:
        """Take the lease of the alias's running rollout if nobody holds it."""
        ...

    async def release(self, alias: str, owner: str) -> None:
        """Give the lease back, if ``owner`` holds it (the rollout stays running)."""
        ...


@dataclass(frozen=True, slots=True)
class Stores:
    counters: Counters
    cache: ResponseCache
    adapters: AdapterPlacement
    versions: VersionPolicies
    measurements: VersionMeasurements
    rollouts: RolloutRecords
    locks: Locks | None = None
    """Shared leases for coalescing across replicas; None for one gateway alone (its
    own flights coalesce identical requests)."""
    registrations: AdapterRegistrations | None = None
    """Adapters registered through the admin API; None: this process's memory."""


class StoreUnavailable(SluiceError):
    """The shared store (Redis) is down or did not answer in time (503). The stores
    catch it where they have a fallback (admission counted locally, cache skipped, the
    last known state read); it reaches a caller only from a write that has none."""

    status = 503
    type = "service_unavailable"
    default_code = "store_unavailable"
