"""Routing settings compiled into plans: each profile's plugins, built and checked.

A model's policy is either a named profile (``routing.profiles``) or today's
``strategy`` / ``scorers`` / ``load_factor`` / ``affinity_floor``, which is read as a
profile of the standard filters, the strategy's preset weights (or the explicit
``scorers``) and the ``max_score`` picker, named after the strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Histogram

from gateway.config.fleet import (
    PluginRef,
    Profile,
    RoutingPolicy,
    RoutingSettings,
    WeightedPluginRef,
)
from gateway.scheduling.filters import STANDARD
from gateway.scheduling.framework.interfaces import (
    AttemptObserver,
    Consumer,
    Filter,
    Picker,
    RestartObserver,
    Scorer,
)
from gateway.scheduling.framework.plugin_config import PluginConfigError
from gateway.scheduling.producers import Producers
from gateway.scheduling.registry import Registry
from gateway.scheduling.timing import TimedFilter, TimedObserver, TimedPicker, TimedScorer

_EXPLAINS_FIRST = {"prefix": 0, "session": 1}
"""Legacy policies: when both affinities are weighted, prefix explains the decision."""


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    """A scorer of a plan and its weight (> 0)."""

    scorer: Scorer
    weight: float


@dataclass(frozen=True, slots=True)
class Plan:
    """One profile, built: what a scheduling pass for its models runs."""

    name: str
    """The ``strategy`` label of its decisions: the profile's or the strategy's name."""
    filters: tuple[Filter, ...]
    scorers: tuple[WeightedScorer, ...]
    picker: Picker
    observers: tuple[AttemptObserver, ...]
    """Told when an attempt opens: the producers its plugins read, and plugins that ask."""
    plugins: tuple[object, ...]
    """Every plugin, unwrapped (for the engine-restart hook)."""


def legacy_profile(policy: RoutingPolicy) -> Profile:
    """Today's policy keys as a profile: affinity scorers get the policy's bounds."""
    params: dict[str, dict[str, Any]] = {
        "session": {"load_factor": policy.load_factor},
        "prefix": {"load_factor": policy.load_factor,
                   "affinity_floor": policy.affinity_floor},
    }
    weights = sorted(policy.weights().items(), key=lambda item: _EXPLAINS_FIRST.get(item[0], 2))
    return Profile(scorers=[WeightedPluginRef(type=name, weight=weight,
                                              params=params.get(name, {}))
                            for name, weight in weights])


TimingLookup = Callable[[str, str], Histogram] | None
"""(plugin type, kind) -> the histogram child to observe, or None when timing is off."""

K = TypeVar("K")


class PlanBuilder:
    """Builds plans from one registry and one set of producers."""

    def __init__(self, registry: Registry, producers: Producers, timing: TimingLookup) -> None:
        self._registry = registry
        self._producers = producers
        self._timing = timing

    def build_all(self, settings: RoutingSettings) -> tuple[Plan, dict[str, Plan]]:
        """The default plan and each configured model's. Every profile is built (and so
        checked), whether a model uses it or not."""
        named = {name: self.build(name, profile) for name, profile in settings.profiles.items()}

        def plan(policy: RoutingPolicy) -> Plan:
            if policy.profile is not None:
                return named[policy.profile]
            return self.build(policy.strategy, legacy_profile(policy))

        return plan(settings.default), {model: plan(p) for model, p in settings.models.items()}

    def build(self, name: str, profile: Profile) -> Plan:
        """The plan of profile ``name``; unknown or misplaced plugin types raise
        :class:`PluginConfigError`."""
        filter_refs = profile.filters
        if filter_refs is None:
            filter_refs = [PluginRef(type=t) for t in STANDARD]
        filters = [(ref.type, self._filter(name, ref)) for ref in filter_refs]
        built = [(ref.type, self._scorer(name, ref), ref.weight) for ref in profile.scorers]
        scorers = [entry for entry in built if entry[2] > 0]  # weight 0: checked, left out
        picker = (profile.picker.type, self._picker(name, profile.picker))
        plugins = [*filters, *((t, s) for t, s, _ in scorers), picker]
        observers = _unique(((t, o) for t, p in plugins for o in (p, *_consumed(p))
                             if isinstance(o, AttemptObserver)), key=lambda pair: pair[1])
        timing = self._timing
        if timing is not None:
            filters = [(t, TimedFilter(f, timing(t, "filter"))) for t, f in filters]
            scorers = [(t, TimedScorer(s, timing(t, "scorer")), w) for t, s, w in scorers]
            picker = (picker[0], TimedPicker(picker[1], timing(picker[0], "picker")))
            observers = [(t, TimedObserver(o, timing(t, "observer"))) for t, o in observers]
        return Plan(name, tuple(f for _, f in filters),
                    tuple(WeightedScorer(s, w) for _, s, w in scorers), picker[1],
                    tuple(o for _, o in observers), tuple(p for _, p in plugins))

    def _filter(self, profile: str, ref: PluginRef) -> Filter:
        plugin = self._build(profile, ref)
        if not isinstance(plugin, Filter):
            raise _misplaced(profile, ref, "filter")
        return plugin

    def _scorer(self, profile: str, ref: PluginRef) -> Scorer:
        plugin = self._build(profile, ref)
        if not isinstance(plugin, Scorer):
            raise _misplaced(profile, ref, "scorer")
        return plugin

    def _picker(self, profile: str, ref: PluginRef) -> Picker:
        plugin = self._build(profile, ref)
        if not isinstance(plugin, Picker):
            raise _misplaced(profile, ref, "picker")
        return plugin

    def _build(self, profile: str, ref: PluginRef) -> object:
        try:
            return self._registry.build(ref.type, ref.params, self._producers)
        except PluginConfigError as exc:
            raise PluginConfigError(f"routing profile {profile!r}: {exc}") from exc


def _misplaced(profile: str, ref: PluginRef, kind: str) -> PluginConfigError:
    return PluginConfigError(f"routing profile {profile!r}: plugin {ref.type!r} is not a {kind}")


def restart_observers(producers: Producers, plans: Iterable[Plan]) -> list[RestartObserver]:
    """Producers and plugins to tell when an engine restarts, each once."""
    everything = [*producers.all(), *(p for plan in plans for p in plan.plugins)]
    return _unique((o for o in everything if isinstance(o, RestartObserver)),
                   key=lambda o: o)


def _consumed(plugin: object) -> tuple[object, ...]:
    return tuple(plugin.consumes) if isinstance(plugin, Consumer) else ()


def _unique(items: Iterable[K], key: Callable[[K], object]) -> list[K]:
    """``items`` in order, without those whose ``key`` is an object already seen."""
    seen: set[int] = set()
    out: list[K] = []
    for item in items:
        if id(key(item)) not in seen:
            seen.add(id(key(item)))
            out.append(item)
    return out
