"""The data a load-test run produces: one record per request, plus scraped metric series.

Times are seconds on one monotonic clock (``time.perf_counter``), relative to the run's
start. Everything else in ``loadtests`` reads or writes these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request, as the client saw it."""

    index: int
    """Position in the run's request sequence (0-based)."""
    start: float
    """When the request was sent."""
    chunk_times: list[float] = field(default_factory=list)
    """Arrival time of every streamed chunk that carried output text, in order."""
    end: float | None = None
    """When the response ended (``[DONE]`` or the last byte); None if it never ended."""
    prompt_tokens: int = 0
    """From the server's ``usage``."""
    completion_tokens: int = 0
    """From the server's ``usage``."""
    error: str | None = None
    """None on success, else a short type: ``http_429``, ``http_503``, ``timeout``,
    ``connection``, ``stream_error`` (an error event inside a started stream), ..."""
    model: str = ""
    session: str | None = None
    """Conversation id for multi-turn workloads."""
    turn: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None

    @property
    def ttft(self) -> float | None:
        """Seconds from send to the first output chunk."""
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def e2el(self) -> float | None:
        """Seconds from send to the end of the response."""
        return None if self.end is None else self.end - self.start


@dataclass(slots=True)
class StreamRecord:
    """One chat stream of the chaos test, recorded token by token: what was asked and
    everything that came back (``loadtests.client.stream_chat`` fills it). Transport
    failures are short types in ``failure`` (see ``loadtests.client``)."""

    index: int
    prompt: str
    max_tokens: int
    start: float = 0.0
    end: float | None = None
    """When ``[DONE]`` (or the failure) arrived; None while it runs."""
    tokens: list[str] = field(default_factory=list)
    """The content of every event that carried text, in order (one token each)."""
    token_times: list[float] = field(default_factory=list)
    usage_tokens: int | None = None
    """``completion_tokens`` of the usage event."""
    role_events: int = 0
    error_event: str | None = None
    """The message of an ``{"error": ...}`` event inside the stream."""
    done: bool = False
    """``data: [DONE]`` arrived."""
    failure: str | None = None

    @property
    def first_token(self) -> float | None:
        return self.token_times[0] if self.token_times else None

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(slots=True)
class MetricSample:
    """One scraped Prometheus sample (summed over labels) at time ``t``."""

    t: float
    source: str
    """Which ``/metrics`` it came from (a target or engine base URL)."""
    name: str
    value: float


@dataclass
class RunResult:
    """One run of one scenario against one target."""

    target: str
    """A short name (``gateway``, ``direct``, ...)."""
    base_url: str
    scenario: dict[str, Any]
    """The scenario as run (workload, arrival, limits, seed), for the report."""
    started_at: str
    """Wall-clock start, ISO 8601 UTC."""
    duration_s: float
    """From the first send to the last response's end."""
    records: list[RequestRecord]
    series: list[MetricSample] = field(default_factory=list)
    level: float | None = None
    """The swept value (rate or concurrency) when the run is one point of a sweep."""
