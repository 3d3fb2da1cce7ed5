"""Typed settings for the fleet: routing policies, resilience and admission.

Part of :class:`gateway.settings.Settings` (keys ``routing``, ``resilience``,
``admission``); kept apart so each file stays readable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["round_robin", "least_loaded", "session", "prefix"]
ScorerName = Literal["round_robin", "least_loaded", "session", "prefix", "kv_cache"]

PRESETS: dict[str, dict[ScorerName, float]] = {
    "round_robin": {"round_robin": 1.0},
    "least_loaded": {"least_loaded": 1.0, "kv_cache": 0.25},
    "session": {"session": 2.0, "least_loaded": 1.0},
    "prefix": {"prefix": 2.0, "least_loaded": 1.0},
}
"""Scorer weights each strategy name stands for."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RoutingPolicy(_Frozen):
    """How one model's requests are spread over the engines that serve it."""

    strategy: Strategy = "least_loaded"
    scorers: dict[ScorerName, float] | None = Field(
        default=None, description="explicit scorer weights; replaces the strategy's preset")
    load_factor: float = Field(
        default=1.25, ge=1.0,
        description="bounded load: an affinity (session or prefix) may send an engine at "
                    "most load_factor x the mean load (+1) before it spills to another")
    affinity_floor: int = Field(
        default=8, ge=1,
        description="prefix affinity holds up to this many requests per engine whatever the "
                    "mean: at low load a cache hit is worth more than perfect balance")

    def weights(self) -> dict[ScorerName, float]:
        chosen = self.scorers if self.scorers is not None else PRESETS[self.strategy]
        return {name: w for name, w in chosen.items() if w > 0}


class PrefixIndexSettings(_Frozen):
    """The gateway's picture of each engine's prefix cache."""

    block_chars: int = Field(default=64, ge=8, description="prompt characters per block hash")
    capacity_blocks: int = Field(
        default=65_536, ge=1, description="blocks remembered per engine (LRU beyond)")
    ttl_s: float = Field(default=600.0, gt=0, description="a block not seen for this long is "
                                                         "assumed evicted by the engine")


class RoutingSettings(_Frozen):
    default: RoutingPolicy = RoutingPolicy()
    models: dict[str, RoutingPolicy] = Field(default_factory=dict)
    prefix: PrefixIndexSettings = PrefixIndexSettings()
    scrape_interval_s: float = Field(
        default=0.25, gt=0, description="how often each engine's /metrics is read")

    def policy(self, model: str) -> RoutingPolicy:
        return self.models.get(model, self.default)


class BreakerSettings(_Frozen):
    failure_threshold: int = Field(default=3, ge=1, description="consecutive failures to open")
    open_s: float = Field(default=5.0, gt=0, description="time open before one probe")


class ResilienceSettings(_Frozen):
    retries: int = Field(default=2, ge=0, le=5,
                         description="other engines tried before the first byte")
    max_same_failures: int = Field(
        default=2, ge=1, description="stop retrying once the same engine fault (status "
        "and message) showed on this many engines: the request itself is the likely cause")
    backoff_base_s: float = Field(default=0.02, ge=0)
    backoff_max_s: float = Field(default=0.5, ge=0)
    retry_budget_ratio: float = Field(
        default=0.2, ge=0, description="retries allowed per request, over 10 s")
    retry_budget_min_per_s: float = Field(default=10.0, ge=0)
    failover: bool = Field(default=True, description="continue a broken stream elsewhere")
    max_failovers: int = Field(default=2, ge=0, le=5)
    breaker: BreakerSettings = BreakerSettings()
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="SIGTERM: in-flight streams get this long to finish")


class AdmissionSettings(_Frozen):
    """Per-model in-flight limits; beyond them requests get 429 with Retry-After."""

    max_in_flight_per_engine: int = Field(
        default=1024, ge=1, description="limit = this x healthy engines serving the model")
    models: dict[str, int] = Field(default_factory=dict,
                                   description="absolute in-flight limit for a model")
    retry_after_s: int = Field(default=1, ge=1)
