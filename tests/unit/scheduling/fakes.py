"""Small honest fakes for scheduling tests: engines, requests, and a scheduler harness."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gateway.config.fleet import RoutingSettings
from gateway.core.context import RequestContext
from gateway.core.endpoints import CHAT
from gateway.observability.metrics import GatewayMetrics
from gateway.scheduling import Cycle, Registry, Scheduler


@dataclass
class Breaker:
    is_open: bool = False
    picks: int = 0
    opened_at: float | None = None

    def available(self) -> bool:
        return not self.is_open

    def on_pick(self) -> None:
        self.picks += 1


@dataclass
class Engine:
    """A candidate as the pool would show it; serves model ``m`` by default."""

    name: str
    load: int = 0
    kv_usage: float = 0.0
    healthy: bool = True
    cards: dict[str, Any] = field(default_factory=lambda: {"m": {"id": "m"}})
    breaker: Breaker = field(default_factory=Breaker)
    in_flight: int = 0
    lora_bound: int | None = None
    max_lora_rank: int | None = None
    lora_busy: frozenset[str] = frozenset()

    @property
    def adapters(self) -> list[str]:
        return [name for name, card in self.cards.items() if card.get("parent")]


def chat(text: str, model: str = "m") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def request(text: str = "x", *, model: str = "m", session_key: str | None = None,
            tried: set[str] | None = None) -> RequestContext:
    ctx = RequestContext.new("req", CHAT, chat(text, model), session_key=session_key)
    ctx.label = model
    ctx.tried = set() if tried is None else tried
    return ctx


def decisions(metrics: GatewayMetrics) -> Counter[tuple[str, str, str]]:
    """``sluice_routing_decisions_total`` by (model, strategy, reason), over versions."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in metrics.registry.collect():
        if family.name == "sluice_routing_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    key = (labels["model"], labels["strategy"], labels["reason"])
                    counts[key] += int(sample.value)
    return counts


@dataclass(frozen=True)
class Pick:
    engine: Engine
    index: int
    strategy: str
    reason: str


class Harness:
    """A scheduler with its own metrics; :meth:`pick` schedules one request and, like a
    request whose attempt opened, tells the scheduler so."""

    def __init__(self, settings: RoutingSettings | None = None,
                 registry: Registry | None = None, **routing: Any) -> None:
        self.settings = settings or RoutingSettings.model_validate(routing)
        self.metrics = GatewayMetrics()
        self.scheduler = Scheduler(self.settings, self.metrics, registry)

    def pick(self, engines: list[Engine], text: str = "x", *, model: str = "m",
             session_key: str | None = None, opened: bool = True) -> Pick:
        ctx = request(text, model=model, session_key=session_key)
        return self.pick_ctx(ctx, engines, opened=opened)

    def pick_ctx(self, ctx: RequestContext, engines: list[Engine], *,
                 opened: bool = True) -> Pick:
        before = decisions(self.metrics)
        engine = self.scheduler.schedule(ctx, engines)
        (_, strategy, reason), = (decisions(self.metrics) - before).keys()
        if opened:
            self.scheduler.attempt_opened(ctx, engine)
        index = next(i for i, e in enumerate(engines) if e is engine)
        return Pick(engine, index, strategy, reason)


def cycle(engines: list[Engine], ctx: RequestContext | None = None, turn: int = 0) -> Cycle:
    """A scheduling pass over ``engines`` (as if every filter kept them all)."""
    return Cycle(ctx or request(), engines, [e.load for e in engines], turn)
