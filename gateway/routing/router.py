"""Picking one engine for a request: filters, then weighted scorers, then the best score.

The pool filters (healthy, serves the model, circuit closed, not yet tried); this module
scores what is left. Every scorer gives each candidate a value in [0, 1]; the policy's
weights combine them; ties go to the less loaded engine, then by rotation. Each decision
is counted by strategy and reason, so a dashboard shows *why* traffic went where it did.

Affinity never overrides load without bound: session affinity uses consistent hashing
with bounded loads, and prefix affinity ignores the match of an engine that already holds
more than ``load_factor`` x its fair share, and at least ``affinity_floor`` requests
(the load-imbalance guard).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.fleet_settings import RoutingPolicy, RoutingSettings, ScorerName
from gateway.routing.hashring import BoundedLoadRing
from gateway.routing.prefix import PrefixIndex, block_hashes, prompt_text


class Candidate(Protocol):
    """What the router needs to know about an engine."""

    @property
    def name(self) -> str: ...

    @property
    def load(self) -> int: ...

    @property
    def kv_usage(self) -> float: ...


@dataclass
class RouteRequest:
    """The parts of a request routing looks at; prompt hashes are computed on demand."""

    model: str
    body: Mapping[str, Any]
    session_key: str | None = None
    block_chars: int = 64
    _hashes: list[int] | None = field(default=None, repr=False)

    @property
    def hashes(self) -> list[int]:
        if self._hashes is None:
            self._hashes = block_hashes(prompt_text(self.body), self.block_chars, self.model)
        return self._hashes


@dataclass(frozen=True)
class Decision:
    index: int
    """Position of the picked engine in the candidate list."""
    strategy: str
    reason: str


class Router:
    """Scores candidates by the model's policy. One per app; holds the prefix index."""

    def __init__(self, settings: RoutingSettings) -> None:
        self._settings = settings
        prefix = settings.prefix
        self.prefix_index = PrefixIndex(prefix.capacity_blocks, prefix.ttl_s)
        self._ring = BoundedLoadRing()
        self._turns: dict[str, int] = {}

    def request(self, model: str, body: Mapping[str, Any],
                session_key: str | None) -> RouteRequest:
        return RouteRequest(model, body, session_key, self._settings.prefix.block_chars)

    def forget(self, engine: str) -> None:
        """The engine restarted: whatever it had cached is gone."""
        self.prefix_index.forget(engine)

    def pick(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Decision:
        if not candidates:
            raise ValueError("no candidates to pick from")
        policy = self._settings.policy(request.model)
        weights = policy.weights()
        turn = self._turns.get(request.model, 0)
        self._turns[request.model] = turn + 1
        loads = [c.load for c in candidates]
        scores = [0.0] * len(candidates)
        notes: dict[ScorerName, str] = {}
        for name, weight in weights.items():
            values, note = self._score(name, request, candidates, loads, turn, policy)
            notes[name] = note
            for i, value in enumerate(values):
                scores[i] += weight * value
        best = max(scores)
        tied = [i for i, s in enumerate(scores) if s >= best - 1e-9]
        rotation = turn % len(candidates)
        index = min(tied, key=lambda i: (loads[i], (i - rotation) % len(candidates)))
        if "prefix" in weights and request.hashes:
            self.prefix_index.record(candidates[index].name, request.hashes)
        return Decision(index, policy.strategy, self._reason(policy.strategy, notes, weights,
                                                             len(candidates)))

    def _score(self, name: ScorerName, request: RouteRequest, candidates: Sequence[Candidate],
               loads: list[int], turn: int, policy: RoutingPolicy) -> tuple[list[float], str]:
        n = len(candidates)
        if name == "round_robin":
            return [1.0 if i == turn % n else 0.0 for i in range(n)], "rotation"
        if name == "least_loaded":
            low, high = min(loads), max(loads)
            if high == low:
                return [1.0] * n, "even"
            return [(high - load) / (high - low) for load in loads], "least_loaded"
        if name == "kv_cache":
            return [max(0.0, 1.0 - c.kv_usage) for c in candidates], "kv"
        if name == "session":
            return self._session(request, candidates, loads, policy.load_factor)
        return self._prefix(request, candidates, loads, policy)

    def _session(self, request: RouteRequest, candidates: Sequence[Candidate],
                 loads: list[int], load_factor: float) -> tuple[list[float], str]:
        if not request.session_key:
            return [0.0] * len(candidates), "no_key"
        names = [c.name for c in candidates]
        owner = self._ring.pick(request.session_key, dict.fromkeys(names, 0), 1.0)
        chosen = self._ring.pick(request.session_key, dict(zip(names, loads, strict=True)),
                                 load_factor)
        return [1.0 if name == chosen else 0.0 for name in names], (
            "sticky" if chosen == owner else "spill")

    def _prefix(self, request: RouteRequest, candidates: Sequence[Candidate],
                loads: list[int], policy: RoutingPolicy) -> tuple[list[float], str]:
        hashes = request.hashes
        if not hashes:
            return [0.0] * len(candidates), "short"
        names = [c.name for c in candidates]
        matched = self.prefix_index.match(hashes, names)
        cap = max(math.ceil(policy.load_factor * (sum(loads) + 1) / len(candidates)),
                  policy.affinity_floor)
        raw = [matched.get(name, 0) for name in names]
        allowed = [m if load + 1 <= cap else 0 for m, load in zip(raw, loads, strict=True)]
        if max(raw) == 0:
            return [0.0] * len(candidates), "miss"
        note = "hit" if max(allowed) == max(raw) else "guarded"
        return [m / len(hashes) for m in allowed], note

    @staticmethod
    def _reason(strategy: str, notes: Mapping[ScorerName, str],
                weights: Mapping[ScorerName, float],
                count: int) -> str:
        if count == 1:
            return "single_candidate"
        affinities: tuple[ScorerName, ...] = ("prefix", "session")
        for affinity in affinities:
            if affinity in weights:
                return f"{affinity}_{notes[affinity]}"
        return next(iter(notes.values()), strategy)
