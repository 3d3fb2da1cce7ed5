"""Typed settings for the fleet: routing policies, resilience and admission.

Part of :class:`gateway.config.settings.Settings` (keys ``routing``, ``resilience``,
``admission``); kept apart so each file stays readable. A routing profile names its
plugins by type; whether those types exist is checked when the scheduler is built from
these settings (the registry of plugins is not part of the settings).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Strategy = Literal["round_robin", "least_loaded", "session", "prefix"]
ScorerName = Literal["round_robin", "least_loaded", "session", "prefix", "kv_cache"]

PRESETS: dict[str, dict[ScorerName, float]] = {
    "round_robin": {"round_robin": 1.0},
    "least_loaded": {"least_loaded": 1.0, "kv_cache": 0.25},
    "session": {"session": 2.0, "least_loaded": 1.0},
    "prefix": {"prefix": 2.0, "least_loaded": 1.0},
}
"""Scorer weights each strategy name stands for."""

DEFAULT_LOAD_FACTOR = 1.25
DEFAULT_AFFINITY_FLOOR = 8


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RoutingPolicy(_Frozen):
    """How one model's requests are spread over the engines that serve it."""

    strategy: Strategy = Field(
        default="least_loaded",
        description="a preset of scorer weights: round_robin (round_robin 1), least_loaded "
                    "(least_loaded 1, kv_cache 0.25), session (session 2, least_loaded 1), "
                    "prefix (prefix 2, least_loaded 1); with scorers set it only names the "
                    "decisions (the strategy label of sluice_routing_decisions_total)")
    scorers: dict[ScorerName, float] | None = Field(
        default=None, description="explicit scorer weights; replaces the strategy's preset")
    profile: str | None = Field(
        default=None, description="a profile of routing.profiles; replaces strategy, scorers, "
                                  "load_factor and affinity_floor")
    load_factor: float = Field(
        default=DEFAULT_LOAD_FACTOR, ge=1.0,
        description="bounded load: an affinity (session or prefix) may send an engine at "
                    "most load_factor x the mean load (+1) before it spills to another")
    affinity_floor: int = Field(
        default=DEFAULT_AFFINITY_FLOOR, ge=1,
        description="prefix affinity holds up to this many requests per engine whatever the "
                    "mean: at low load a cache hit is worth more than perfect balance")

    @model_validator(mode="after")
    def _profile_alone(self) -> RoutingPolicy:
        if self.profile is not None:
            mixed = sorted({"strategy", "scorers", "load_factor", "affinity_floor"}
                           & self.model_fields_set)
            if mixed:
                raise ValueError(f"profile {self.profile!r} replaces {', '.join(mixed)}: "
                                 "set those in the profile (as plugin params)")
        return self

    def weights(self) -> dict[ScorerName, float]:
        chosen = self.scorers if self.scorers is not None else PRESETS[self.strategy]
        return {name: w for name, w in chosen.items() if w > 0}


class PluginRef(_Frozen):
    """One plugin of a profile: its type in the plugin registry and its parameters."""

    type: str = Field(
        min_length=1,
        description="a plugin type: filters serves_model, healthy, circuit, not_tried; "
                    "scorers round_robin, least_loaded, kv_cache, session, prefix, "
                    "lora_affinity, random; picker max_score; or one registered in code. An "
                    "unknown type, or one of another kind, stops the gateway at start")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the plugin's own parameters (prefix: load_factor, affinity_floor; "
                    "session: load_factor; random: seed; circuit: max_ejection_percent); a "
                    "shipped plugin given an unknown one stops the gateway at start")


class WeightedPluginRef(PluginRef):
    """A scorer of a profile, with its weight (0 leaves it out)."""

    weight: float = Field(
        default=1.0, ge=0,
        description="the scorer's values (0 to 1 per engine) are multiplied by this and "
                    "summed with the other scorers' for the picker; 0 leaves it out (its "
                    "type and params are still checked)")


class Profile(_Frozen):
    """A named scheduling profile: filters, then weighted scorers, then a picker.

    ``filters`` and ``picker`` entries are a type name or ``{type, params}``; ``scorers``
    is ``{type: weight}`` or a list of ``{type, weight, params}``.
    """

    filters: list[PluginRef] | None = Field(
        default=None, description="default: serves_model, healthy, circuit, not_tried")
    scorers: list[WeightedPluginRef] = Field(default_factory=list)
    picker: PluginRef = PluginRef(type="max_score")

    @field_validator("filters", mode="before")
    @classmethod
    def _filter_names(cls, value: Any) -> Any:
        return [_ref(item) for item in value] if isinstance(value, list) else value

    @field_validator("scorers", mode="before")
    @classmethod
    def _scorer_weights(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [{"type": name, "weight": weight} for name, weight in value.items()]
        return [_ref(item) for item in value] if isinstance(value, list) else value

    @field_validator("picker", mode="before")
    @classmethod
    def _picker_name(cls, value: Any) -> Any:
        return _ref(value)


def _ref(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


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
    profiles: dict[str, Profile] = Field(default_factory=dict)
    prefix: PrefixIndexSettings = PrefixIndexSettings()
    scrape_interval_s: float = Field(
        default=0.25, gt=0, description="how often each engine's /metrics is read")
    plugin_timing: bool = Field(
        default=False, description="observe each scheduling plugin's time in "
                                   "sluice_scheduler_plugin_duration_seconds")

    @model_validator(mode="after")
    def _profiles_exist(self) -> RoutingSettings:
        policies = [("default", self.default),
                    *((f"models.{name}", policy) for name, policy in self.models.items())]
        for where, policy in policies:
            if policy.profile is not None and policy.profile not in self.profiles:
                known = ", ".join(sorted(self.profiles)) or "none"
                raise ValueError(f"routing.{where}: unknown profile {policy.profile!r} "
                                 f"(profiles: {known})")
        return self

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
    backoff_base_s: float = Field(
        default=0.02, ge=0,
        description="wait before a retry: random, up to this for the first and twice as "
                    "much for each next one (full jitter); 0: retry at once")
    backoff_max_s: float = Field(
        default=0.5, ge=0, description="cap on the wait before a retry")
    retry_budget_ratio: float = Field(
        default=0.2, ge=0, description="retries allowed per request, over 10 s")
    retry_budget_min_per_s: float = Field(
        default=10.0, ge=0,
        description="retries allowed per second whatever the traffic: over 10 s, "
                    "10 x this plus retry_budget_ratio x the requests, per gateway process, "
                    "stream continuations included; once spent, a failure is neither "
                    "retried nor continued")
    failover: bool = Field(default=True, description="continue a broken stream elsewhere")
    max_failovers: int = Field(
        default=2, ge=0, le=5,
        description="continuations of one broken stream, at most; past it the stream ends "
                    "with an error event and [DONE] (0: as with failover false)")
    breaker: BreakerSettings = BreakerSettings()


class AdmissionSettings(_Frozen):
    """Per-model in-flight limits; beyond them requests get 429 with Retry-After."""

    max_in_flight_per_engine: int = Field(
        default=1024, ge=1, description="limit = this x healthy engines serving the model")
    models: dict[str, int] = Field(default_factory=dict,
                                   description="absolute in-flight limit for a model")
    retry_after_s: int = Field(
        default=1, ge=1,
        description="the Retry-After (seconds) of the 429 a request gets past its "
                    "model's in-flight limit")
