"""When requests are sent: arrival-process specs and the pacers that enforce them.

Open-loop processes (``poisson``, ``gamma``, ``constant``, ``ramp``) send at precomputed
times from the run's start, whatever the server does: a send that falls behind schedule
goes at once, and later sends keep their own times (no drift). The closed-loop
``concurrency`` process keeps a fixed number of requests in flight. Every random draw comes
from a ``random.Random`` seeded by the run's seed.

``gamma`` matches ``vllm bench serve --burstiness``: inter-arrival times are
Gamma(shape=burstiness, scale=1/(rate*burstiness)), mean 1/rate; burstiness 1 is Poisson,
lower is burstier, higher is more regular.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator
from typing import Annotated, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

Rate = Annotated[float, Field(gt=0.0)]
"""Requests per second; ``.inf`` sends everything at once."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class PoissonArrival(_Spec):
    """Exponential inter-arrival times with mean ``1/rate``."""

    kind: Literal["poisson"] = "poisson"
    rate: Rate


class GammaArrival(_Spec):
    """Gamma inter-arrival times with mean ``1/rate``, shaped by ``burstiness``."""

    kind: Literal["gamma"] = "gamma"
    rate: Rate
    burstiness: Annotated[float, Field(gt=0.0)] = 1.0


class ConstantArrival(_Spec):
    """Exactly ``1/rate`` between sends."""

    kind: Literal["constant"] = "constant"
    rate: Rate


class RampArrival(_Spec):
    """Poisson arrivals whose rate goes linearly from ``start_rate`` to ``end_rate``.

    The ramp lasts ``ramp_s``; when unset, the run's ``duration_s``, else the time in which
    the ramp sends ``num_requests`` on average (``2 * n / (start_rate + end_rate)``). After
    the ramp the rate stays at ``end_rate``.
    """

    kind: Literal["ramp"] = "ramp"
    start_rate: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    end_rate: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    ramp_s: Annotated[float | None, Field(gt=0.0, allow_inf_nan=False)] = None

    @model_validator(mode="after")
    def _some_rate(self) -> Self:
        if self.start_rate + self.end_rate <= 0:
            raise ValueError("start_rate and end_rate cannot both be 0")
        return self


class ConcurrencyArrival(_Spec):
    """``concurrency`` requests in flight, each sent as soon as a previous one finished."""

    kind: Literal["concurrency"] = "concurrency"
    concurrency: PositiveInt


Arrival = Annotated[
    PoissonArrival | GammaArrival | ConstantArrival | RampArrival | ConcurrencyArrival,
    Field(discriminator="kind"),
]
OpenLoop = PoissonArrival | GammaArrival | ConstantArrival | RampArrival


def with_level(arrival: Arrival, level: float) -> Arrival:
    """The arrival with its rate (or concurrency) set to ``level``, for one sweep point."""
    if isinstance(arrival, ConcurrencyArrival):
        if level != int(level) or level < 1:
            raise ValueError(f"a concurrency level must be a whole number >= 1, got {level}")
        return arrival.model_copy(update={"concurrency": int(level)})
    if isinstance(arrival, RampArrival):
        raise ValueError("a ramp already covers a range of rates; sweep poisson or gamma instead")
    if not level > 0:
        raise ValueError(f"a rate level must be > 0, got {level}")
    return arrival.model_copy(update={"rate": float(level)})


def level_of(arrival: Arrival) -> float | None:
    """The value a sweep varies: the rate or the concurrency (None for a ramp)."""
    if isinstance(arrival, ConcurrencyArrival):
        return float(arrival.concurrency)
    return None if isinstance(arrival, RampArrival) else arrival.rate


def intervals(arrival: PoissonArrival | GammaArrival | ConstantArrival,
              rng: random.Random) -> Iterator[float]:
    """Endless inter-arrival times in seconds."""
    rate = arrival.rate
    if math.isinf(rate):
        while True:
            yield 0.0
    if isinstance(arrival, PoissonArrival):
        while True:
            yield rng.expovariate(rate)
    if isinstance(arrival, GammaArrival):
        shape = arrival.burstiness
        scale = 1.0 / (rate * shape)
        while True:
            yield rng.gammavariate(shape, scale)
    while True:
        yield 1.0 / rate


def ramp_time(arrival: RampArrival, ramp_s: float, work: float) -> float:
    """When the cumulative intensity of the ramp reaches ``work`` (expected arrivals)."""
    r0, r1 = arrival.start_rate, arrival.end_rate
    a = (r1 - r0) / (2.0 * ramp_s)  # intensity: r0*t + a*t^2 for t <= ramp_s
    full = r0 * ramp_s + a * ramp_s * ramp_s
    if work > full:
        return ramp_s + (work - full) / r1
    # The smaller root of a*t^2 + r0*t - work, in the form that is stable for a ~ 0.
    return 2.0 * work / (r0 + math.sqrt(max(0.0, r0 * r0 + 4.0 * a * work)))


def offsets(arrival: OpenLoop, rng: random.Random, ramp_s: float | None = None) -> Iterator[float]:
    """Endless send times in seconds from the start; the first is 0."""
    if isinstance(arrival, RampArrival):
        span = arrival.ramp_s or ramp_s
        if span is None:
            raise ValueError("a ramp needs ramp_s, or a run duration or request count")
        work = 0.0
        yield 0.0
        while True:
            work += rng.expovariate(1.0)
            yield ramp_time(arrival, span, work)
    elapsed = 0.0
    yield elapsed
    for gap in intervals(arrival, rng):
        elapsed += gap
        yield elapsed


class Pacer(Protocol):
    """Gates sends: ``await acquire()`` before each, ``release()`` when it finished."""

    async def acquire(self) -> None: ...

    def release(self) -> None: ...


class OpenLoopPacer:
    """Lets each send go at its scheduled time, counted from the first ``acquire``."""

    def __init__(self, times: Iterator[float]) -> None:
        self._times = times
        self._origin: float | None = None

    async def acquire(self) -> None:
        """Sleep until the next send time (return at once when behind schedule)."""
        loop = asyncio.get_running_loop()
        if self._origin is None:
            self._origin = loop.time()
        delay = self._origin + next(self._times) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def release(self) -> None:
        """Nothing to do: an open loop does not wait for responses."""


class ConcurrencyPacer:
    """At most ``limit`` requests between ``acquire`` and ``release``."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)

    async def acquire(self) -> None:
        """Wait for a free slot."""
        await self._slots.acquire()

    def release(self) -> None:
        """Free a slot."""
        self._slots.release()


def make_pacer(
    arrival: Arrival, seed: int, *, duration_s: float | None = None,
    num_requests: int | None = None,
) -> Pacer:
    """The pacer of ``arrival`` for one run (``duration_s``/``num_requests`` size a ramp)."""
    if isinstance(arrival, ConcurrencyArrival):
        return ConcurrencyPacer(arrival.concurrency)
    ramp_s = duration_s
    if ramp_s is None and num_requests and isinstance(arrival, RampArrival):
        ramp_s = 2.0 * num_requests / (arrival.start_rate + arrival.end_rate)
    return OpenLoopPacer(offsets(arrival, random.Random(f"{seed}:arrivals"), ramp_s))
