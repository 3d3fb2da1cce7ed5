"""Plugins by type name: what a routing profile's ``type`` refers to.

A registry is an object, built by :func:`default_registry` with every plugin Sluice
ships; more are added with :meth:`Registry.register` before the scheduler is built::

    registry = default_registry()
    registry.register("my_scorer", lambda config: MyScorer(**config.params))
    scheduler = Scheduler(settings.routing, metrics, registry)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.scheduling.filters import circuit, healthy, not_tried, serves_model
from gateway.scheduling.framework.plugin_config import Factory, PluginConfig, PluginConfigError
from gateway.scheduling.pickers import max_score
from gateway.scheduling.producers import Producers
from gateway.scheduling.scorers import (
    kv_cache,
    least_loaded,
    lora_affinity,
    prefix,
    random_scores,
    round_robin,
    session,
)


class Registry:
    """Plugin factories keyed by type name."""

    def __init__(self) -> None:
        self._factories: dict[str, Factory] = {}

    def register(self, name: str, factory: Factory) -> None:
        """Make ``name`` usable as a plugin ``type``; a name is registered once."""
        if name in self._factories:
            raise PluginConfigError(f"plugin type {name!r} is already registered")
        self._factories[name] = factory

    @property
    def names(self) -> list[str]:
        """Every registered type name, sorted."""
        return sorted(self._factories)

    def build(self, name: str, params: Mapping[str, Any], producers: Producers) -> object:
        """A new instance of plugin ``name``."""
        factory = self._factories.get(name)
        if factory is None:
            raise PluginConfigError(
                f"unknown plugin type {name!r}; known types: {', '.join(self.names)}")
        return factory(PluginConfig(name, params, producers))


def default_registry() -> Registry:
    """A registry of every plugin Sluice ships."""
    registry = Registry()
    for name, factory in (
        ("serves_model", serves_model.build),
        ("healthy", healthy.build),
        ("circuit", circuit.build),
        ("not_tried", not_tried.build),
        ("round_robin", round_robin.build),
        ("least_loaded", least_loaded.build),
        ("lora_affinity", lora_affinity.build),
        ("kv_cache", kv_cache.build),
        ("session", session.build),
        ("prefix", prefix.build),
        ("random", random_scores.build),
        ("max_score", max_score.build),
    ):
        registry.register(name, factory)
    return registry
