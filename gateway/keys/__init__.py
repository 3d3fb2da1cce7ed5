"""Managed API keys: hashed records in a :class:`KeyStore`, per-key limits in a
:class:`RateLimiter`, both behind protocols with in-memory backends (one gateway
process); a shared backend implements the same protocols for many."""

from gateway.core.keys import ApiKey, Limits, hash_key
from gateway.keys.memory import MemoryKeyStore, MemoryRateLimiter
from gateway.keys.protocols import WINDOW_S, Decision, KeyStore, RateLimiter
from gateway.keys.service import KeyService, NewKey


def memory_keys() -> KeyService:
    """A key service on fresh in-memory backends (one per app)."""
    return KeyService(MemoryKeyStore(), MemoryRateLimiter())


__all__ = ["WINDOW_S", "ApiKey", "Decision", "KeyService", "KeyStore", "Limits",
           "MemoryKeyStore", "MemoryRateLimiter", "NewKey", "RateLimiter", "hash_key",
           "memory_keys"]
