"""What the admin API does with version policies: show, set, roll back, history.

Every change is one write to the store (atomic there: the Redis backend runs it as one
script), after which this replica reloads the alias at once; the others follow on the
store's change notification, or at their next reconcile.
"""

from __future__ import annotations

from typing import Any

from gateway.config.versions import policy_problem
from gateway.core.errors import AliasNotFound, InvalidField, NoEarlierPolicy
from gateway.stores import VersionPolicy
from gateway.versions.router import VersionRouter, policy_json


class VersionService:
    """The admin side of the version router."""

    def __init__(self, router: VersionRouter) -> None:
        self._router = router
        self._store = router.store

    def _alias(self, alias: str) -> str:
        if alias not in self._router.aliases:
            raise AliasNotFound(f"no alias '{alias[:100]}' is configured", param="alias")
        return alias

    async def show(self, alias: str) -> dict[str, Any]:
        """The alias's stored policy and the one this replica routes by now."""
        self._alias(alias)
        stored = await self._store.get(alias)
        shown = self._router.show(alias, stored or self._router.policy(alias))
        return {**shown, "applied": policy_json(self._router.policy(alias))}

    async def show_all(self) -> list[dict[str, Any]]:
        return [await self.show(alias) for alias in self._router.aliases]

    async def set(self, alias: str, policy: VersionPolicy) -> dict[str, Any]:
        """Replace the alias's policy whole (a blue/green switch is one such write)."""
        settings = self._router.aliases[self._alias(alias)]
        problem = policy_problem(settings, policy)
        if problem is not None:
            raise InvalidField(problem, param="weights", code="invalid_policy")
        await self._store.set(alias, policy)
        await self._router.reload(alias)
        return await self.show(alias)

    async def rollback(self, alias: str) -> dict[str, Any]:
        """Restore the policy before the current one (409 when there is none)."""
        if await self._store.rollback(self._alias(alias)) is None:
            raise NoEarlierPolicy(f"alias '{alias}' has no earlier policy to roll back to")
        await self._router.reload(alias)
        return await self.show(alias)

    async def history(self, alias: str) -> list[dict[str, Any]]:
        """Earlier policies, newest first."""
        return [policy_json(p) for p in await self._store.history(self._alias(alias))]
