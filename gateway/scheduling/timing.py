"""Per-plugin timing: wrappers that observe each call's duration in a histogram.

Only built when ``routing.plugin_timing`` is on, so the default path has no clock calls.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import Histogram

from gateway.core.context import RequestContext
from gateway.scheduling.framework.interfaces import (
    AttemptObserver,
    C,
    Candidate,
    Cycle,
    Filter,
    Picker,
    Scorer,
    Scores,
)


class TimedFilter:
    """A filter whose calls are observed in ``histogram`` (a labelled child)."""

    def __init__(self, inner: Filter, histogram: Histogram) -> None:
        self._inner, self._child = inner, histogram

    def filter(self, ctx: RequestContext, candidates: Sequence[C]) -> list[C]:
        start = time.perf_counter()
        try:
            return self._inner.filter(ctx, candidates)
        finally:
            self._child.observe(time.perf_counter() - start)


class TimedScorer:
    """A scorer whose calls are observed in ``histogram`` (a labelled child)."""

    def __init__(self, inner: Scorer, histogram: Histogram) -> None:
        self._inner, self._child = inner, histogram

    def score(self, cycle: Cycle) -> Scores:
        start = time.perf_counter()
        try:
            return self._inner.score(cycle)
        finally:
            self._child.observe(time.perf_counter() - start)


class TimedPicker:
    """A picker whose calls are observed in ``histogram`` (a labelled child)."""

    def __init__(self, inner: Picker, histogram: Histogram) -> None:
        self._inner, self._child = inner, histogram

    def pick(self, cycle: Cycle, totals: Sequence[float]) -> int:
        start = time.perf_counter()
        try:
            return self._inner.pick(cycle, totals)
        finally:
            self._child.observe(time.perf_counter() - start)


class TimedObserver:
    """A attempt observer whose calls are observed in ``histogram`` (a labelled child)."""

    def __init__(self, inner: AttemptObserver, histogram: Histogram) -> None:
        self._inner, self._child = inner, histogram

    def attempt_opened(self, ctx: RequestContext, engine: Candidate) -> None:
        start = time.perf_counter()
        try:
            self._inner.attempt_opened(ctx, engine)
        finally:
            self._child.observe(time.perf_counter() - start)
