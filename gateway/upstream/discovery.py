"""Engines found in DNS: each ``discovery`` source re-resolved while serving.

One task per source resolves its name every ``interval_s`` (dnspython's asynchronous
resolver, bounded by ``timeout_s``) and brings the pool in line: an address not seen
before is added (:meth:`EnginePool.add`: routed to once a health check passes), one no
longer listed is removed (drained: no new requests, those in flight finish). A failed
resolution, or one that finds no records, keeps the engines found last: a DNS outage
must not empty the fleet. Engines are named ``<source>-<ip>-<port>``, so the same
address keeps its name (and its metric series) across resolutions and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from gateway.config.discovery import DiscoverySource, split_nameserver
from gateway.config.settings import EngineConfig
from gateway.observability.metrics import GatewayMetrics
from gateway.upstream.pool import EnginePool

log = logging.getLogger("sluice.discovery")


class ResolveFailed(Exception):
    """A resolution gave no usable answer (the reason is the message)."""


def resolver_for(source: DiscoverySource) -> dns.asyncresolver.Resolver:
    """A resolver asking ``source.nameservers`` (else the system's), bounded by
    ``source.timeout_s``, with no cache (each round asks again)."""
    resolver = dns.asyncresolver.Resolver(configure=not source.nameservers)
    if source.nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*split_nameserver(server))
                                for server in source.nameservers]
    resolver.timeout = resolver.lifetime = source.timeout_s
    return resolver


async def resolve(source: DiscoverySource,
                  resolver: dns.asyncresolver.Resolver) -> list[tuple[str, int]]:
    """The (ip, port) pairs ``source`` lists now, sorted, at most ``max_engines``.
    Raises :class:`ResolveFailed`."""
    try:
        async with asyncio.timeout(source.timeout_s):
            found = await _lookup(source, resolver)
    except TimeoutError:
        raise ResolveFailed(f"no answer within {source.timeout_s} s") from None
    except dns.exception.DNSException as exc:
        raise ResolveFailed(f"{type(exc).__name__}: {exc}") from None
    if not found:
        raise ResolveFailed("no records")
    ordered = sorted(found)
    if len(ordered) > source.max_engines:
        log.warning("discovery %s: %d engines found, taking the first %d (max_engines)",
                    source.name, len(ordered), source.max_engines)
    return ordered[:source.max_engines]


async def _lookup(source: DiscoverySource,
                  resolver: dns.asyncresolver.Resolver) -> set[tuple[str, int]]:
    if source.record != "SRV":
        assert source.port is not None  # the settings require it
        answer = await resolver.resolve(source.dns_name, source.record)
        return {(rr.address, source.port) for rr in answer}
    answer = await resolver.resolve(source.dns_name, "SRV")
    glue: dict[str, set[str]] = {}
    for rrset in answer.response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            glue.setdefault(rrset.name.to_text(), set()).update(rr.address for rr in rrset)
    found: set[tuple[str, int]] = set()
    for rr in list(answer)[:source.max_engines]:
        target = rr.target.to_text()
        addresses = glue.get(target)
        if addresses is None:
            try:
                addresses = {a.address for a in await resolver.resolve(target, "A")}
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                log.warning("discovery %s: SRV target %s has no address", source.name,
                            target)
                continue
        found.update((address, rr.port) for address in addresses)
    return found


@dataclass
class _Source:
    settings: DiscoverySource
    task: asyncio.Task[None] | None = None
    members: dict[str, EngineConfig] = field(default_factory=dict)
    """The engines this source put in the pool, by name."""
    failing: str | None = None
    """Why its resolutions fail, while they do (logged when it changes)."""


class Discovery:
    """Runs every source's resolve loop and applies what each finds to the pool."""

    def __init__(self, pool: EnginePool, metrics: GatewayMetrics) -> None:
        self._pool = pool
        self._metrics = metrics
        self._sources: dict[str, _Source] = {}

    async def reconfigure(self, sources: list[DiscoverySource]) -> None:
        """Run exactly ``sources`` from now on: a source no longer listed stops and its
        engines leave the pool; a changed one restarts (its engines stay until its next
        resolution says otherwise); a new one starts. Each started source resolves once
        before this returns."""
        wanted = {s.name: s for s in sources}
        for name in [n for n in self._sources if n not in wanted]:
            source = self._sources.pop(name)
            await _stop(source)
            for engine in list(source.members):
                self._pool.remove(engine)
            self._metrics.discovery_engines.remove(name)
            log.info("discovery %s stopped; its engines left the pool", name)
        starting: list[_Source] = []
        for name, settings in wanted.items():
            known = self._sources.get(name)
            if known is not None and known.settings == settings:
                continue
            if known is None:
                known = self._sources[name] = _Source(settings)
            else:
                await _stop(known)
                known.settings = settings
            starting.append(known)
        await asyncio.gather(*(self.resolve_once(s) for s in starting))
        for source in starting:
            source.task = asyncio.create_task(self._run(source),
                                              name=f"discovery-{source.settings.name}")

    async def aclose(self) -> None:
        for source in self._sources.values():
            await _stop(source)

    async def _run(self, source: _Source) -> None:
        while True:
            await asyncio.sleep(source.settings.interval_s)
            await self.resolve_once(source)

    async def resolve_once(self, source: _Source) -> None:
        """Resolve ``source`` and apply the result; whatever fails, the loop goes on."""
        settings = source.settings
        try:
            found = await resolve(settings, resolver_for(settings))
        except ResolveFailed as exc:
            self._metrics.discovery_resolutions.labels(settings.name, "error").inc()
            if source.failing != str(exc):
                source.failing = str(exc)
                log.warning("discovery %s: resolving %s failed (%s); keeping its %d engines",
                            settings.name, settings.dns_name, exc, len(source.members))
            return
        except Exception:  # a bug must not end the loop
            self._metrics.discovery_resolutions.labels(settings.name, "error").inc()
            log.exception("discovery %s: resolving failed", settings.name)
            return
        self._metrics.discovery_resolutions.labels(settings.name, "ok").inc()
        if source.failing is not None:
            source.failing = None
            log.info("discovery %s: resolving %s works again", settings.name,
                     settings.dns_name)
        await self._apply(source, [settings.engine_config(ip, port) for ip, port in found])

    async def _apply(self, source: _Source, configs: list[EngineConfig]) -> None:
        wanted = {c.name: c for c in configs}
        for name, config in list(source.members.items()):
            if wanted.get(name) != config:  # gone, or its options changed
                self._pool.remove(name)
                del source.members[name]
        joining = []
        for name, config in wanted.items():
            if name in source.members:
                continue
            if self._pool.get(name) is not None:
                log.warning("discovery %s: an engine named %s is already configured; "
                            "skipping it", source.settings.name, name)
                continue
            source.members[name] = config
            joining.append(self._pool.add(config))
        await asyncio.gather(*joining)
        self._metrics.discovery_engines.labels(source.settings.name).set(len(source.members))


async def _stop(source: _Source) -> None:
    task, source.task = source.task, None
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
