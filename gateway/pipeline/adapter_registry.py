"""The LoRA adapters clients may name: the configured ones (``adapters`` in the settings)
and those registered through the admin API, kept in the state store
(:class:`~gateway.stores.AdapterRegistrations`: memory, or Redis so that every replica
agrees).

A request's lookup is a dict read: the registered adapters are read from the store at
start, after each change made here, when another replica publishes one (Redis), and at
every reconcile; while the store is down the last read stands. A configured adapter
cannot be replaced or removed through the API (409): the settings own it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from adapters import AdapterSpec, under_roots
from gateway.core.errors import Conflict, InvalidField, KeyNotFound, echo
from gateway.stores import AdapterRegistrations
from gateway.stores.protocols import StoreUnavailable

log = logging.getLogger("sluice.adapters")


class AdapterRegistry:
    """The adapters clients may name, by name (see the module doc)."""

    def __init__(self, configured: Iterable[AdapterSpec],
                 store: AdapterRegistrations | None = None, *,
                 roots: Iterable[str] = ()) -> None:
        self._configured = {spec.name: spec for spec in configured}
        self._store = store
        self._roots = list(roots)
        self._registered: dict[str, AdapterSpec] = {}

    def get(self, name: str) -> AdapterSpec | None:
        return self._configured.get(name) or self._registered.get(name)

    def all(self) -> list[AdapterSpec]:
        return [*self._configured.values(),
                *(s for n, s in self._registered.items() if n not in self._configured)]

    def cards(self, created: int) -> list[dict[str, Any]]:
        """``/v1/models`` cards of every adapter, loaded yet or not (its path is not
        shown: it says where the operator keeps weights)."""
        return [{"id": spec.name, "object": "model", "created": created,
                 "owned_by": spec.owner or "sluice", "root": spec.name, "parent": spec.base}
                for spec in self.all()]

    def public(self, spec: AdapterSpec) -> dict[str, Any]:
        """What the admin API shows of an adapter (where it came from included)."""
        source = "config" if spec.name in self._configured else "api"
        return {**spec.model_dump(), "source": source}

    async def reload(self, _changed: str | None = None) -> None:
        """Read the registered adapters again (kept as they were while the store is
        down). The signature is a change notification's (the name is not needed)."""
        if self._store is None:
            return
        try:
            specs = await self._store.all()
        except StoreUnavailable:
            return
        self._registered = {spec.name: spec for spec in specs}

    async def register(self, spec: AdapterSpec) -> AdapterSpec:
        if spec.name in self._configured:
            raise Conflict(f"adapter '{spec.name}' is configured in the settings; change it "
                           "there", code="adapter_configured")
        if not under_roots(spec.path, self._roots):
            raise InvalidField(f"path {echo(spec.path)!r} is not under lora.roots "
                               f"({', '.join(self._roots)})", param="path",
                               code="path_not_allowed")
        if self._store is None:
            raise Conflict("no adapter store", code="adapter_store_missing")
        await self._store.put(spec)
        await self.reload()
        return spec

    async def remove(self, name: str) -> None:
        if name in self._configured:
            raise Conflict(f"adapter '{echo(name)}' is configured in the settings; remove it "
                           "there", code="adapter_configured")
        if self._store is None or not await self._store.remove(name):
            raise KeyNotFound(f"no registered adapter '{echo(name)}'", param="name",
                              code="adapter_not_found")
        await self.reload()

    async def run_reconcile(self, interval_s: float) -> None:
        """Re-read the registry every ``interval_s`` (a backstop for a missed change
        notification); cancel to stop."""
        while True:
            await asyncio.sleep(interval_s)
            await self.reload()
