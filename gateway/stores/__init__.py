"""State the gateway keeps beyond one request, behind small protocols.

Every store has an in-memory backend (the embedded default: one gateway process, no
Redis); a shared backend implements the same protocols so that any number of gateway
replicas agree. The lifespan builds one :class:`Stores` and hands it to the services.
"""

from gateway.core.policy import VersionPolicy
from gateway.stores.memory import MemoryLocks, memory_stores
from gateway.stores.protocols import (
    AdapterPlacement,
    AdapterRegistrations,
    CachedResponse,
    Counters,
    Locks,
    ResponseCache,
    Stores,
    VersionMeasurements,
    VersionPolicies,
)
from gateway.stores.windows import Window

__all__ = ["AdapterPlacement", "AdapterRegistrations", "CachedResponse", "Counters", "Locks",
           "MemoryLocks",
           "ResponseCache", "Stores", "VersionMeasurements", "VersionPolicies",
           "VersionPolicy", "Window", "memory_stores"]
