"""The scheduler: picks the engine for one request by its model's profile.

``schedule`` runs the profile's filters, its weighted scorers and its picker, and counts
the decision in ``sluice_routing_decisions{model,version,strategy,reason}``: the strategy (or
profile) name and the reason of the first affinity scorer, else of the first scorer
(``single_candidate`` when the filters left one engine). It changes no data producer:
what a request teaches them is recorded by :meth:`Scheduler.attempt_opened`, once an
engine has taken the request.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Histogram

from gateway.config.fleet import RoutingSettings
from gateway.core.context import RequestContext
from gateway.core.errors import NoHealthyEngine, echo
from gateway.observability.metrics import GatewayMetrics
from gateway.scheduling.framework.interfaces import C, Candidate, Cycle
from gateway.scheduling.producers import PrefixCacheIndexer, Producers
from gateway.scheduling.profiles import Plan, PlanBuilder, WeightedScorer, restart_observers
from gateway.scheduling.registry import Registry, default_registry
from gateway.scheduling.scorers.lora_affinity import LoraAffinity


class Scheduler:
    """One per app. Building it builds every profile: a bad one raises
    :class:`~gateway.scheduling.framework.plugin_config.PluginConfigError` here."""

    def __init__(self, settings: RoutingSettings, metrics: GatewayMetrics,
                 registry: Registry | None = None, *, lora_weight: float = 2.0) -> None:
        self._metrics = metrics
        self._lora = WeightedScorer(LoraAffinity(), lora_weight)
        """Beside every profile's scorers, for requests naming a registered adapter."""
        self.producers = Producers(prefix_cache=PrefixCacheIndexer(settings.prefix))
        """The data producers every profile's plugins share."""
        timing = self._timing if settings.plugin_timing else None
        self._builder = PlanBuilder(registry or default_registry(), self.producers, timing)
        self._default, self._plans = self._builder.build_all(settings)
        self._restart = restart_observers(self.producers, [self._default,
                                                           *self._plans.values()])
        self._turns: dict[str, int] = {}

    def reconfigure(self, settings: RoutingSettings) -> None:
        """Route by ``settings``' policies and profiles from the next request on (a
        config reload). Every plan is built before any is used, so a bad profile raises
        here and the plans in use stay. The data producers (the prefix index) are kept;
        plugins that keep their own state (session affinity) start afresh."""
        default, plans = self._builder.build_all(settings)
        restart = restart_observers(self.producers, [default, *plans.values()])
        self._default, self._plans, self._restart = default, plans, restart

    def schedule(self, ctx: RequestContext, engines: Sequence[C]) -> C:
        """The engine for ``ctx``'s next attempt, from ``engines`` (the whole fleet).

        Raises ``ModelNotFound`` when no engine serves ``ctx.model`` and
        ``NoHealthyEngine`` when none of those may take it now. The chosen engine's
        breaker is told (in half-open, this request becomes its probe).
        """
        plan = self._plan(ctx)
        candidates = engines
        for step in plan.filters:
            candidates = step.filter(ctx, candidates)
            if not candidates:
                raise NoHealthyEngine(f"no healthy engine serves '{echo(ctx.model)}'")
        turn = self._turns.get(ctx.model, 0)
        self._turns[ctx.model] = turn + 1
        if len(candidates) == 1:
            index, reason = 0, "single_candidate"
        else:
            index, reason = self._score(plan, Cycle(ctx, candidates,
                                                    [c.load for c in candidates], turn))
        engine = candidates[index]
        engine.breaker.on_pick()
        self._metrics.routing_decisions.labels(
            ctx.label, ctx.version_label, plan.name, reason).inc()
        return engine

    def attempt_opened(self, ctx: RequestContext, engine: Candidate) -> None:
        """``engine`` took ``ctx`` (its attempt opened): the profile's data producers
        learn from it now, and only now (the prefix index records the prompt's blocks)."""
        for observer in self._plan(ctx).observers:
            observer.attempt_opened(ctx, engine)

    def engine_restarted(self, name: str) -> None:
        """The engine came back up: producers forget what it had cached."""
        for observer in self._restart:
            observer.engine_restarted(name)

    def _plan(self, ctx: RequestContext) -> Plan:
        """The model's profile (an adapter's: its base model's)."""
        model = ctx.model if ctx.lora is None else ctx.lora.base
        return self._plans.get(model, self._default)

    def _score(self, plan: Plan, cycle: Cycle) -> tuple[int, str]:
        totals = [0.0] * len(cycle.candidates)
        first: str | None = None
        affinity: str | None = None
        lora = (self._lora,) if cycle.ctx.lora is not None and self._lora.weight else ()
        for weighted in (*lora, *plan.scorers):
            scores = weighted.scorer.score(cycle)
            weight = weighted.weight
            for i, value in enumerate(scores.values):
                totals[i] += weight * value
            if first is None:
                first = scores.reason
            if affinity is None and scores.affinity:
                affinity = scores.reason
        return plan.picker.pick(cycle, totals), affinity or first or plan.name

    def _timing(self, plugin: str, kind: str) -> Histogram:
        return self._metrics.scheduler_plugin_duration.labels(plugin, kind)
