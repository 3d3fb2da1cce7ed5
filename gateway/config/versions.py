"""The ``versions`` settings: aliases, their versions, and each alias's initial policy.

An alias (``chat``) is a model name clients send; its versions are what the engines
serve (a base model, optionally a LoRA adapter on it). The initial policy here is what
the gateway routes by until the admin API stores another one::

    versions:
      aliases:
        chat:
          versions:
            v1: {model: llama-3-8b}
            v2: {model: llama-3-8b, adapter: chat-lora-v2}
          weights: {v1: 90, v2: 10}
          fallback: [v2, v1]
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.policy import RETENTION_S, VersionPolicy

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_names(kind: str, names: Iterable[str]) -> None:
    """A ValueError for the first of ``names`` (alias or version names) that is not one."""
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{kind} name {name[:80]!r}: letters, digits, '.', '_', '-', "
                             "at most 64 characters")
"""Alias and version names: they are metric label values and header values."""


class VersionSpec(BaseModel):
    """What one version is served as."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, description="the base model the engines serve")
    adapter: str | None = Field(
        default=None, description="a LoRA adapter on it: the engines are asked for the "
                                  "adapter's name")
    quantization: str | None = Field(
        default=None, max_length=64,
        description="how its weights are quantized (w8a8, w4a16, ...; what sluice quantize "
                    "made); null: unquantized or not said. Recorded and shown by the admin "
                    "API next to model and adapter, so a rollout from fp32 to w8a8 says so")
    description: str = Field(default="", description="free text (pool, hardware, ...)")

    @property
    def served(self) -> str:
        """The model name the engines are asked for."""
        return self.adapter or self.model


class AliasSettings(BaseModel):
    """One alias: its versions, the initial split, stickiness and the fallback chain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    versions: dict[str, VersionSpec] = Field(min_length=1)
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="the initial split (relative weights); empty: all on the first version")
    sticky: bool = Field(
        default=False,
        description="A/B: assign by the caller (x-session-id, the body's user, else the API "
                    "key) so that one caller stays on one version. Off (a canary): each "
                    "request is assigned by its request id; so is a sticky alias's request "
                    "that names no caller")
    fallback: list[str] = Field(
        default_factory=list,
        description="when no engine of the chosen version is up, the next version of this "
                    "list that has one answers (the list from its start when the chosen "
                    "version is not in it)")

    @field_validator("versions")
    @classmethod
    def _names(cls, versions: dict[str, VersionSpec]) -> dict[str, VersionSpec]:
        _check_names("version", versions)
        return versions

    @model_validator(mode="after")
    def _known_versions(self) -> AliasSettings:
        if self.weights:
            problem = policy_problem(self, VersionPolicy(dict(self.weights)))
            if problem:
                raise ValueError(problem)
        for name in self.fallback:
            if name not in self.versions:
                raise ValueError(f"fallback names an unknown version {name!r}")
        return self

    @property
    def initial(self) -> VersionPolicy:
        """The configured split (everything on the first version when none is given)."""
        return VersionPolicy(dict(self.weights or {next(iter(self.versions)): 100.0}))


class RolloutSettings(BaseModel):
    """The bounds a guarded rollout holds the new version to at every step, over the
    step's hold so far, compared with the version it replaces over the same window
    (every replica's requests: see :class:`~gateway.stores.VersionMeasurements`).

    A breach is a server-error share above ``max_error_rate``, or a TTFT p99 above
    ``max_ttft_p99_ratio`` times the base's plus ``ttft_p99_slack_s`` (the slack keeps
    a base of a few milliseconds from turning noise into a breach)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="share of the new version's requests that "
                                              "may end in a server error (5xx)")
    max_ttft_p99_ratio: float = Field(
        default=1.5, ge=1, description="its TTFT p99 over the base version's, at most "
                                       "(plus ttft_p99_slack_s)")
    ttft_p99_slack_s: float = Field(
        default=0.05, ge=0, description="seconds of TTFT p99 allowed beyond the ratio")
    min_requests: int = Field(
        default=20, ge=1, description="requests the new version must serve in a hold "
                                      "before it is judged (and TTFTs each side must have "
                                      "before their p99s are compared)")
    check_interval_s: float = Field(
        default=1.0, gt=0, description="how often the bounds are checked during a hold "
                                       "(a breach rolls back at once)")
    max_caller_share: float = Field(
        default=0.25, gt=0, le=1,
        description="no one caller (API key, or client address without keys) makes more "
                    "than this share of the requests a version is judged by (or 1/n of "
                    "them with n < 1/share callers); the rest of its requests are served "
                    "but not counted")
    max_hold_factor: float = Field(
        default=3.0, ge=1, description="a hold without min_requests is extended up to this "
                                       "many holds, then rolled back (too little traffic "
                                       "to judge)")

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_latency_ratio" in data:
            raise ValueError("max_latency_ratio was replaced by max_ttft_p99_ratio (and "
                             "ttft_p99_slack_s): the guard compares TTFT p99s, not mean "
                             "latencies")
        return data


class VersionsSettings(BaseModel):
    """Model aliases and how their policies are kept in step between replicas."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aliases: dict[str, AliasSettings] = Field(default_factory=dict)
    reconcile_s: float = Field(
        default=5.0, gt=0,
        description="every this often each replica re-reads every alias's policy from the "
                    "store (a backstop for a missed change notification)")
    rollout: RolloutSettings = RolloutSettings()
    measure_retention_s: float = Field(
        default=RETENTION_S, ge=60, le=7 * 86400,
        description="per-version measurements (requests, errors, TTFT per second) are kept "
                    "this long, in memory or in Redis; a rollout's hold_s x "
                    "max_hold_factor must fit in it")
    shadow_max_in_flight: int = Field(
        default=16, ge=1, description="mirrored requests running at once (per replica); "
                                      "past it a request is not mirrored")
    shadow_text_threshold: float = Field(
        default=0.9, ge=0, le=1,
        description="a mirrored answer whose text is less alike the client's than this "
                    "(0 to 1, see gateway/versions/similarity.py) counts as a text "
                    "divergence. 0.9 passes about one word in twenty changed, or the last "
                    "tenth of an answer gone another way (greedy decoding on GPUs is not "
                    "reproducible bit for bit across batches); 1.0 counts any different "
                    "word. Sampled answers differ more than that between any two runs: "
                    "read the similarity histogram for them")
    shadow_text_chars: int = Field(
        default=16384, ge=1, le=1024 * 1024,
        description="characters of each answer's text compared (the first ones): bounds "
                    "the memory and the time of a comparison")

    def served_as(self) -> dict[str, list[tuple[str, str]]]:
        """The (alias, version) pairs each model name the engines are asked for stands
        for (a name in no alias is not a key)."""
        served: dict[str, list[tuple[str, str]]] = {}
        for alias, settings in self.aliases.items():
            for version, spec in settings.versions.items():
                served.setdefault(spec.served, []).append((alias, version))
        return served

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, aliases: dict[str, AliasSettings]) -> dict[str, AliasSettings]:
        _check_names("alias", aliases)
        return aliases


def policy_problem(alias: AliasSettings, policy: VersionPolicy) -> str | None:
    """What is wrong with ``policy`` for ``alias`` (None: nothing): every version named
    must exist, weights be finite and >= 0 with a positive sum, shadow fractions in
    [0, 1]."""
    for kind, values in (("weights", policy.weights), ("shadow", policy.shadow)):
        for name, value in values.items():
            if name not in alias.versions:
                return f"{kind} name an unknown version {name!r}"
            if not math.isfinite(value) or value < 0:
                return f"{kind}[{name}] must be a finite number >= 0"
    if sum(policy.weights.values()) <= 0:
        return "weights must give some version a positive weight"
    if any(value > 1 for value in policy.shadow.values()):
        return "shadow fractions must be at most 1"
    return None
