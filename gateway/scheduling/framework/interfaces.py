"""The plugin interfaces of the scheduler: Filter, Scorer, Picker and the hooks.

One scheduling pass runs a profile's filters (which engines may take the request), then
its scorers (how much each remaining engine suits it, a value in [0, 1] per engine,
combined with the profile's weights), then its picker (one engine from the totals).
Data producers, such as the prefix-cache index, are not plugins of a pass: they learn
from the hooks (:class:`AttemptObserver`, :class:`RestartObserver`) and plugins read them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from gateway.core.context import RequestContext


class BreakerView(Protocol):
    """The part of an engine's circuit breaker scheduling uses."""

    def available(self) -> bool: ...

    def on_pick(self) -> None: ...

    @property
    def opened_at(self) -> float | None:
        """When the breaker last opened (None while closed)."""


class Candidate(Protocol):
    """An engine as plugins see it (the pool's ``EngineState`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def load(self) -> int:
        """Requests on the engine (the gateway's own, or a fresher scrape's)."""

    @property
    def kv_usage(self) -> float: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def cards(self) -> Mapping[str, Any]:
        """Model cards by served model name."""

    @property
    def breaker(self) -> BreakerView: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def lora_bound(self) -> int | None:
        """LoRA adapters it holds at once (None: LoRA off, as far as is known)."""

    @property
    def max_lora_rank(self) -> int | None: ...

    @property
    def adapters(self) -> list[str]:
        """The adapters it has loaded."""

    @property
    def lora_busy(self) -> frozenset[str]:
        """Adapters with requests running or waiting on it (a recent scrape)."""


C = TypeVar("C", bound=Candidate)


@dataclass(frozen=True, slots=True)
class Cycle:
    """One scheduling pass, as scorers and pickers see it."""

    ctx: RequestContext
    candidates: Sequence[Candidate]
    """What the filters left, in the pool's order (never empty)."""
    loads: Sequence[int]
    """``candidates[i].load``, read once for the whole pass."""
    turn: int
    """How many passes this model had before this one: the rotation's position."""


@dataclass(frozen=True, slots=True)
class Scores:
    """A scorer's verdict: one value in [0, 1] per candidate, and why."""

    values: Sequence[float]
    reason: str
    """What the scores say, as the ``reason`` label of ``sluice_routing_decisions``."""
    affinity: bool = False
    """An affinity verdict (prefix, session) explains the decision before any other."""


@runtime_checkable
class Filter(Protocol):
    """Keeps the candidates a request may go to; may raise a :class:`SluiceError` that
    says better than "nothing left" why none may (e.g. the model does not exist)."""

    def filter(self, ctx: RequestContext, candidates: Sequence[C]) -> list[C]: ...


@runtime_checkable
class Scorer(Protocol):
    """Scores every candidate of a pass in [0, 1]; higher is better."""

    def score(self, cycle: Cycle) -> Scores: ...


@runtime_checkable
class Picker(Protocol):
    """Chooses one candidate from the weighted totals of the scorers."""

    def pick(self, cycle: Cycle, totals: Sequence[float]) -> int:
        """The index in ``cycle.candidates`` of the chosen engine."""


@runtime_checkable
class AttemptObserver(Protocol):
    """Told when a request's attempt on an engine opened (the engine answered)."""

    def attempt_opened(self, ctx: RequestContext, engine: Candidate) -> None: ...


@runtime_checkable
class RestartObserver(Protocol):
    """Told when an engine came back up: whatever it had cached is gone."""

    def engine_restarted(self, name: str) -> None: ...


@runtime_checkable
class Consumer(Protocol):
    """A plugin that reads data producers; their hooks run for the profiles using it."""

    @property
    def consumes(self) -> Sequence[object]: ...
