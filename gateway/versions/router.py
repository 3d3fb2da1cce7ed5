"""Which version of an alias serves a request: the resolve step's service.

The policies this replica routes by live in one dict whose entries are replaced whole
(never edited), and a request reads its alias's entry once: a policy change is atomic
for every request, which sees the old policy or the new one, never a mix. The store is
the source of truth; :meth:`VersionRouter.reload` copies it in (after an admin write, on
a change notification, and every ``reconcile_s``).

Assignment is deterministic: a request's point in [0, 1) is a hash of the alias and its
assignment key (the caller for a sticky alias, else the request id), and the versions
take consecutive slices of [0, 1) in configuration order, as wide as their weights. A
canary growing from 10 to 50 % therefore keeps every caller it already had.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from gateway.config.versions import AliasSettings, VersionsSettings, policy_problem
from gateway.core.context import PIN_HEADER, RequestContext
from gateway.core.errors import InvalidField, SluiceError, echo
from gateway.stores import VersionPolicies, VersionPolicy
from gateway.versions.shadow import ShadowMirror

log = logging.getLogger("sluice.versions")

def point(alias: str, key: str) -> float:
    """A stable point in [0, 1) for ``key`` (uniform over keys)."""
    digest = hashlib.blake2b(f"{alias}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pick(alias: AliasSettings, policy: VersionPolicy, at: float) -> str:
    """The version whose slice of [0, 1) holds ``at``."""
    weights = [(name, policy.weights.get(name, 0.0)) for name in alias.versions]
    total = sum(weight for _, weight in weights)
    mark, chosen = at * total, ""
    for name, weight in weights:
        if weight <= 0:
            continue
        chosen = name
        if mark < weight:
            break
        mark -= weight
    return chosen


class VersionRouter:
    """Resolves aliases to versions by the policies of the store."""

    def __init__(self, settings: VersionsSettings, store: VersionPolicies,
                 up: Callable[[str], bool]) -> None:
        """``up(model)``: some routable engine serves the model now."""
        self.settings = settings
        self.aliases = settings.aliases
        self.store = store
        self._up = up
        self._policies: dict[str, VersionPolicy] = {
            name: alias.initial for name, alias in self.aliases.items()}
        self.mirror: ShadowMirror | None = None
        """Starts the copies of requests a policy's ``shadow`` asks for (None: none)."""
        self.on_change: Callable[[str, VersionPolicy], None] | None = None
        """Called when a reload finds an alias's policy changed (tests measure with it)."""

    def policy(self, alias: str) -> VersionPolicy:
        return self._policies[alias]

    def label(self, requested: str) -> str | None:
        """The metrics label of an alias (itself); None for any other name."""
        return requested if requested in self.aliases else None

    def resolve(self, ctx: RequestContext, *, mirror: bool = False) -> None:
        """Set ``ctx.version``, ``ctx.model`` (and the body's model) and ``ctx.adapter``
        for a request to an alias; any other name passes through unchanged. ``mirror``:
        start the copies the policy's ``shadow`` asks for (generation requests only: a
        copy is judged by its completion tokens)."""
        name = ctx.requested_model
        alias = self.aliases.get(name)
        if alias is None:
            return
        if ctx.pinned_version is not None:
            if ctx.pinned_version not in alias.versions:
                raise InvalidField(
                    f"{PIN_HEADER}: '{echo(ctx.pinned_version)}' is not a version of "
                    f"'{echo(name)}' (versions: {', '.join(alias.versions)})",
                    param=PIN_HEADER, code="unknown_version")
            version = ctx.pinned_version
        else:
            key = (ctx.session_key or ctx.principal) if alias.sticky else None
            policy = self._policies[name]
            version = pick(alias, policy, point(name, key or ctx.id))
            version = self._fallback(alias, version, ctx)
            if mirror:
                self._shadow(ctx, name, alias, policy, version)
        spec = alias.versions[version]
        ctx.version, ctx.adapter = version, spec.adapter
        ctx.model = ctx.body["model"] = spec.served

    def _shadow(self, ctx: RequestContext, name: str, alias: AliasSettings,
                policy: VersionPolicy, serving: str) -> None:
        """Mirror the request to each shadow version whose fraction its id falls in."""
        if self.mirror is None:
            return
        for version, fraction in policy.shadow.items():
            if version != serving and point(name, f"shadow\0{version}\0{ctx.id}") < fraction:
                self.mirror.start(ctx, name, version, alias.versions[version].served)

    def _fallback(self, alias: AliasSettings, version: str, ctx: RequestContext) -> str:
        """``version``, or when none of its engines is up the next one of the chain
        that has one (``version`` again when none has: the request then fails as any
        request to a model that is down)."""
        if not alias.fallback or self._up(alias.versions[version].served):
            return version
        chain = alias.fallback
        rest = chain[chain.index(version) + 1:] if version in chain else chain
        for other in rest:
            if other != version and self._up(alias.versions[other].served):
                ctx.fallback_from = version
                return other
        return version

    async def reload(self, alias: str | None = None) -> None:
        """Read the policy of ``alias`` (None: of every alias) from the store. An alias
        the store has no policy for keeps its configured one; a stored policy that no
        longer fits the configuration (a version removed) is ignored, with a warning."""
        for name in ([alias] if alias is not None else list(self.aliases)):
            settings = self.aliases.get(name)
            if settings is None:
                continue
            stored = await self.store.get(name)
            policy = settings.initial if stored is None else stored
            problem = policy_problem(settings, policy)
            if problem is not None:
                log.warning("stored policy of %s ignored: %s", name, problem)
                continue
            if policy != self._policies[name]:
                self._policies[name] = policy
                log.info("alias %s: weights %s", name, policy.weights)
                if self.on_change is not None:
                    self.on_change(name, policy)

    async def seed(self) -> None:
        """Store the configured policy of every alias the store has none for (so that
        the first change made through the admin API can be rolled back to it), then
        load what the store holds. A store that cannot be written now leaves the
        configured policies in force."""
        for name, settings in self.aliases.items():
            try:
                if await self.store.get(name) is None:
                    await self.store.set(name, settings.initial)
            except SluiceError as exc:
                log.warning("policy of %s not stored: %s", name, exc.message)
        await self.reload()

    async def run_reconcile(self) -> None:
        """Reload every alias every ``reconcile_s``, forever (a lifespan task)."""
        while True:
            await asyncio.sleep(self.settings.reconcile_s)
            try:
                await self.reload()
            except SluiceError as exc:
                log.warning("policy reconcile failed: %s", exc.message)

    def cards(self, served: set[str]) -> list[dict[str, Any]]:
        """Model cards of the aliases having some version served now."""
        return [{"id": name, "object": "model", "created": 0, "owned_by": "sluice",
                 "root": None, "parent": None, "versions": list(alias.versions)}
                for name, alias in self.aliases.items()
                if any(spec.served in served for spec in alias.versions.values())]

    def show(self, alias: str, policy: VersionPolicy) -> dict[str, Any]:
        """An alias as the admin API shows it, under ``policy``."""
        settings = self.aliases[alias]
        return {"alias": alias, "policy": policy_json(policy),
                "versions": {name: spec.model_dump() for name, spec in settings.versions.items()},
                "sticky": settings.sticky, "fallback": list(settings.fallback)}


def policy_json(policy: VersionPolicy) -> dict[str, Any]:
    return {"weights": dict(policy.weights), "shadow": dict(policy.shadow)}
