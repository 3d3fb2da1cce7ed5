"""Configuration reload (SIGHUP): the same file and environment read again, and what
can change while serving applied without dropping a request.

Applied live: ``engines`` (those with a ``url``: added, removed, or replaced when their
options changed), ``discovery``, ``routing.default``, ``routing.models``,
``routing.profiles`` and ``admission``. Every other setting needs a restart (the
listening socket, workers, Redis, timeouts, keys...): a reload that changes one applies
the rest and logs the paths it left. A new config that does not validate (or whose
routing profiles do not build, or whose engine names clash) is refused whole, one log
line per error with its path, and the config in use stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pydantic import ValidationError

from gateway.config.settings import EngineConfig, Settings
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.admission import Admission
from gateway.scheduling import Scheduler
from gateway.upstream.discovery import Discovery
from gateway.upstream.pool import EnginePool

log = logging.getLogger("sluice.reload")

RELOADED = ("engines", "discovery", "admission", "routing")
"""Top-level settings a reload applies (of ``routing``: only ROUTING_RELOADED)."""
ROUTING_RELOADED = ("default", "models", "profiles")

Loader = Callable[[], Settings]
"""Reads the configuration again (the file given at start, then the environment)."""


class Refused(Exception):
    """The new configuration cannot be applied; the message says why."""


def needs_restart(old: Settings, new: Settings) -> list[str]:
    """The paths of settings that differ between ``old`` and ``new`` and that a reload
    does not apply."""
    changed = [name for name in type(old).model_fields
               if name not in RELOADED and getattr(old, name) != getattr(new, name)]
    changed += [f"routing.{name}" for name in type(old.routing).model_fields
                if name not in ROUTING_RELOADED
                and getattr(old.routing, name) != getattr(new.routing, name)]
    if _managed(old) != _managed(new):
        changed.append("engines (managed)")
    return changed


def _managed(settings: Settings) -> list[EngineConfig]:
    return [e for e in settings.resolved_engines() if e.managed is not None]


def _static(settings: Settings) -> dict[str, EngineConfig]:
    return {e.name: e for e in settings.resolved_engines() if e.managed is None}


class Reconfigure:
    """Applies a reloaded configuration to the running app's parts."""

    def __init__(self, settings: Settings, pool: EnginePool, discovery: Discovery,
                 scheduler: Scheduler, admission: Admission, metrics: GatewayMetrics) -> None:
        self.settings = settings
        """In effect now: restart-only fields as at start, the rest as last applied."""
        self._pool = pool
        self._discovery = discovery
        self._scheduler = scheduler
        self._admission = admission
        self.metrics = metrics
        self._lock = asyncio.Lock()

    async def apply(self, new: Settings) -> list[str]:
        """Apply ``new``'s live settings; the restart-only paths it changed (not
        applied). Raises :class:`Refused` (nothing applied) when it cannot be."""
        async with self._lock:
            old = self.settings
            old_static, new_static = _static(old), _static(new)
            discovered = {e.name for e in self._pool.engines} - set(old_static) - {
                e.name for e in _managed(old)}
            clash = sorted(set(new_static) & discovered)
            if clash:
                raise Refused(f"engines: {', '.join(clash)} already name discovered engines")
            try:
                self._scheduler.reconfigure(new.routing)
            except Exception as exc:  # a profile that does not build
                raise Refused(f"routing: {exc}") from exc
            self._admission.reconfigure(new.admission)
            for name, config in old_static.items():
                if new_static.get(name) != config:
                    self._pool.remove(name)
            await asyncio.gather(*(self._pool.add(config)
                                   for name, config in new_static.items()
                                   if old_static.get(name) != config))
            await self._discovery.reconfigure(new.discovery)
            routing = old.routing.model_copy(
                update={name: getattr(new.routing, name) for name in ROUTING_RELOADED})
            self.settings = old.model_copy(update={
                "engines": new.engines, "discovery": new.discovery,
                "admission": new.admission, "routing": routing})
            return needs_restart(old, new)


async def reload(load: Loader, reconfigure: Reconfigure) -> bool:
    """Read the configuration again and apply it, or refuse it with its reasons logged
    (one line per error). True when applied."""
    metrics = reconfigure.metrics
    try:
        new = load()
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            log.error("config reload refused: %s: %s", where, error["msg"])
        return _refused(metrics)
    except Exception as exc:  # an unreadable file, bad YAML
        reason = " ".join(str(exc).split())
        log.error("config reload refused: %s", reason or type(exc).__name__)
        return _refused(metrics)
    try:
        left = await reconfigure.apply(new)
    except Refused as exc:
        log.error("config reload refused: %s", exc)
        return _refused(metrics)
    if left:
        log.warning("config reloaded; not applied (needs a restart): %s", ", ".join(left))
    else:
        log.info("config reloaded")
    metrics.config_reloads.labels("applied").inc()
    return True


def _refused(metrics: GatewayMetrics) -> bool:
    metrics.config_reloads.labels("refused").inc()
    return False
