"""Judging a chaos run: every request classified by where it stood at the kill, the
gateway's timeline of the killed engine, and the five checks.

Which engine produced a token is read from its text: each simulator engine runs with its
own ``seed``, and the simulator's text is a pure function of seed, prompt and position
(a continued chat request yields exactly the rest of the answer). So a stream that was
continued after the kill reads as a run of the killed engine's words followed by another
engine's words from the very next position; a lost, repeated or shifted token breaks the
match. (A token has a 1/64 chance to be the same word on two engines; a stream whose
tokens before the kill all coincide so reads as served by the other engine alone.)

A request is *ok* when its stream ended with ``data: [DONE]``, carried no error event,
exactly ``max_tokens`` tokens, a usage event saying so, and only engines' words at their
positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from loadtests.chaos.run import ChaosRun
from loadtests.chaos.watch import (
    Interval,
    Snapshot,
    first_after,
    first_where,
    last_before,
    traffic_stop,
)
from loadtests.client import chat_body
from loadtests.records import StreamRecord
from simulator.config import SimConfig
from simulator.protocol import WORDS, parse_chat, word_index

STOP_BOUND_S = 1.0
"""The killed engine must get no traffic later than this after the kill."""
PHASES = ("before_kill", "in_flight", "waiting", "while_down", "after_restart")
"""Where a request stood at the kill: finished before it; streaming (first token before
it); sent but no token yet; sent between the kill and the restart; sent after it."""


@dataclass(frozen=True)
class Segment:
    """Consecutive tokens that match the words of ``engines`` (usually one engine)."""

    engines: frozenset[int]
    start: int
    count: int


@dataclass(frozen=True)
class Verdict:
    """One request, judged."""

    phase: str
    outcome: str
    """``ok``, ``error_event`` (then ``[DONE]``), or what went wrong."""
    segments: tuple[Segment, ...]


@dataclass
class Group:
    total: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    """Outcome -> count, for everything not ok."""

    def add(self, outcome: str) -> None:
        self.total += 1
        if outcome == "ok":
            self.ok += 1
        else:
            self.failed[outcome] = self.failed.get(outcome, 0) + 1

    @property
    def errors(self) -> int:
        return self.total - self.ok


@dataclass
class InFlight:
    """Streams that had tokens at the kill."""

    total: int = 0
    on_victim: int = 0
    continued: int = 0
    """On the killed engine; finished on another one, every token in place."""
    completed: int = 0
    """On the killed engine, every token from it: it had sent them all before it died
    (or all but ``[DONE]``, which the gateway then adds)."""
    error_event: int = 0
    """On the killed engine; ended with one error event, then [DONE]."""
    victim_bad: dict[str, int] = field(default_factory=dict)
    elsewhere: Group = field(default_factory=Group)
    pauses_ms: list[float] = field(default_factory=list)
    """Continued streams: the longest gap between two tokens (the failover's pause)."""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class ChaosReport:
    requests: int
    phases: dict[str, Group]
    in_flight: InFlight
    not_started_errors: int
    """Client-visible errors of requests without a token at the kill (every phase but
    before_kill and in_flight)."""
    hung: int
    max_duration_s: float
    bound_s: float
    victim_in_flight_at_kill: float
    attempts_after_kill: float
    stop_s: Interval | None
    marked_down_s: float | None
    circuit_open_s: float | None
    restart_s: float
    returned_s: Interval | None
    first_ok_s: Interval | None
    victim_ok_after_restart: float
    victim_errors_after_restart: float
    client_served_by_victim: int
    failovers: dict[str, float]
    retries: float
    budget_exhausted: float
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


def judge(run: ChaosRun) -> ChaosReport:
    """Classify every request of ``run`` and apply the checks."""
    plan = run.plan
    texts = _Texts(plan.model, plan.seeds)
    phases = {name: Group() for name in PHASES}
    flight = InFlight()
    served_by_victim = 0
    for record in run.records:
        verdict = _verdict(record, texts.words(record), run)
        if verdict.phase == "in_flight":
            _count_in_flight(flight, verdict, record, plan.victim)
        if verdict.phase == "after_restart" and any(
                s.engines == {plan.victim} for s in verdict.segments):
            served_by_victim += 1
        phases[verdict.phase].add(verdict.outcome)
    report = _timeline(run, phases, flight, served_by_victim)
    report.checks = _checks(report)
    return report


def _timeline(run: ChaosRun, phases: dict[str, Group], flight: InFlight,
              served_by_victim: int) -> ChaosReport:
    snaps, plan = run.snapshots, run.plan
    empty = Snapshot(0.0, 0.0)
    at_kill = last_before(snaps, run.kill) or empty
    at_restart = last_before(snaps, run.restart) or empty
    at_ready = last_before(snaps, run.restarted) or empty
    last = snaps[-1] if snaps else empty
    durations = [r.duration for r in run.records if r.duration is not None]
    return ChaosReport(
        requests=len(run.records), phases=phases, in_flight=flight,
        not_started_errors=sum(phases[p].errors for p in PHASES[2:]),
        hung=sum(1 for r in run.records if r.failure == "timeout" or r.end is None),
        max_duration_s=max(durations, default=0.0), bound_s=plan.request_timeout_s,
        victim_in_flight_at_kill=at_kill.in_flight,
        attempts_after_kill=at_restart.errors - at_kill.errors,
        stop_s=traffic_stop(snaps, run.kill, run.restart),
        marked_down_s=first_where(snaps, run.kill, up=0.0),
        circuit_open_s=first_where(snaps, run.kill, circuit=1.0),
        restart_s=run.restarted - run.restart,
        returned_s=first_after(snaps, run.restarted, busy=True),
        first_ok_s=first_after(snaps, run.restarted, busy=False),
        victim_ok_after_restart=last.ok - at_ready.ok,
        victim_errors_after_restart=last.errors - at_ready.errors,
        client_served_by_victim=served_by_victim,
        failovers={outcome: last.failovers.get(outcome, 0.0) - at_kill.failovers.get(outcome, 0.0)
                   for outcome in ("continued", "completed", "error_event")},
        retries=last.retries - at_kill.retries,
        budget_exhausted=last.budget_exhausted - at_kill.budget_exhausted)


def _checks(r: ChaosReport) -> list[Check]:
    not_started = sum(r.phases[p].total for p in PHASES[2:])
    f = r.in_flight
    bad = sum(f.victim_bad.values()) + f.elsewhere.errors
    stop = r.stop_s
    return [
        Check("1. no client-visible error before the first token",
              not_started > 0 and r.not_started_errors == 0,
              f"{r.not_started_errors} errors in {not_started} requests without a token at "
              "the kill"),
        Check("2. every stream in flight continued or ended with error event + [DONE]",
              f.on_victim > 0 and bad == 0,
              f"{f.on_victim} on the killed engine: {f.continued} continued, {f.completed} "
              f"finished on it, {f.error_event} error event + [DONE], "
              f"{sum(f.victim_bad.values())} other; {f.elsewhere.errors} errors in "
              f"{f.elsewhere.total} elsewhere"),
        Check("3. none hung", r.hung == 0 and r.max_duration_s < r.bound_s,
              f"{r.hung} timed out; longest request {r.max_duration_s:.2f} s "
              f"(bound {r.bound_s:.0f} s)"),
        Check(f"4. the dead engine got no traffic later than {STOP_BOUND_S:g} s after the kill",
              stop is not None and stop.high <= STOP_BOUND_S,
              "never stopped" if stop is None else
              f"last attempt {1000 * stop.low:.0f}-{1000 * stop.high:.0f} ms after the kill"),
        Check("5. it got traffic again after the restart",
              r.first_ok_s is not None and r.victim_ok_after_restart > 0,
              f"{r.victim_ok_after_restart:.0f} requests finished 200 on it; "
              + ("none" if r.first_ok_s is None else
                 f"first {1000 * r.first_ok_s.high:.0f} ms after it was ready")),
        Check("6. every other request succeeded", r.phases["before_kill"].errors == 0,
              f"{r.phases['before_kill'].errors} errors in "
              f"{r.phases['before_kill'].total} finished before the kill"),
    ]


def _count_in_flight(flight: InFlight, verdict: Verdict, record: StreamRecord,
                     victim: int) -> None:
    flight.total += 1
    segments = verdict.segments
    if not segments or segments[0].engines != {victim}:
        flight.elsewhere.add(verdict.outcome)
        return
    flight.on_victim += 1
    if verdict.outcome == "error_event":
        flight.error_event += 1
    elif verdict.outcome == "ok" and len(segments) == 1:
        flight.completed += 1
    elif verdict.outcome == "ok" and victim not in segments[-1].engines:
        flight.continued += 1
        times = record.token_times
        flight.pauses_ms.append(1000 * max(b - a for a, b in pairwise(times)))
    else:
        flight.victim_bad[verdict.outcome] = flight.victim_bad.get(verdict.outcome, 0) + 1


def _verdict(record: StreamRecord, words: list[list[str]], run: ChaosRun) -> Verdict:
    segments = segment(record.tokens, words)
    first, end = record.first_token, record.end
    if end is not None and end <= run.kill:
        phase = "before_kill"
    elif record.start >= run.restarted:
        phase = "after_restart"
    elif record.start >= run.kill:
        phase = "while_down"
    elif first is not None and first <= run.kill:
        phase = "in_flight"
    else:
        phase = "waiting"
    return Verdict(phase, _outcome(record, segments), tuple(segments or ()))


def _outcome(record: StreamRecord, segments: list[Segment] | None) -> str:
    if record.failure is not None:
        return record.failure
    if record.error_event is not None:
        return "error_event" if record.done else "error_event_no_done"
    if not record.done:
        return "no_done"
    if len(record.tokens) != record.max_tokens:
        return "wrong_token_count"
    if record.usage_tokens != record.max_tokens:
        return "wrong_usage"
    if segments is None:
        return "wrong_text"
    return "ok"


def segment(tokens: Sequence[str], words: Sequence[Sequence[str]]) -> list[Segment] | None:
    """Split ``tokens`` into runs that match one engine's words at their positions
    (``words[engine][position]``), each run as long as possible; None when a token
    matches no engine at its position."""
    segments: list[Segment] = []
    current: frozenset[int] = frozenset()
    for position, token in enumerate(tokens):
        match = frozenset(e for e, text in enumerate(words)
                          if position < len(text) and text[position] == token)
        if not match:
            return None
        if current & match:
            current &= match
            last = segments[-1]
            segments[-1] = Segment(current, last.start, last.count + 1)
        else:
            current = match
            segments.append(Segment(current, position, 1))
    return segments


class _Texts:
    """The words each engine generates for a record's request."""

    def __init__(self, model: str, seeds: Sequence[int]) -> None:
        self._model = model
        self._configs = [SimConfig(model=model, seed=seed) for seed in seeds]

    def words(self, record: StreamRecord) -> list[list[str]]:
        body = chat_body(self._model, record.prompt, record.max_tokens)
        out = []
        for config in self._configs:
            request = parse_chat(body, config, ())
            key, offset = request.text_key, request.text_offset
            out.append([WORDS[word_index(key, offset + p)].decode()
                        for p in range(record.max_tokens)])
        return out


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]
