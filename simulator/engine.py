"""Iteration-level continuous batching, as vLLM's V1 scheduler does it, minus the GPU.

`Scheduler` is the synchronous state machine (waiting queue, running batch, KV blocks,
prefix cache); `SimEngine` drives it from one asyncio task: admit, sleep the step time,
hand every running request one token. A consumer reads `SimRequest.produced`: either its
`sink` is called right after each token (the streaming fast path, no wake-up at all), or
its `asyncio.Event` is set, and a consumer that falls behind catches up on all pending
tokens in one wake-up.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from simulator.config import FaultSettings, SimConfig
from simulator.metrics import SimMetrics
from simulator.timemodel import (
    PrefixCache,
    blocks_needed,
    cached_prefix_tokens,
    step_time_ms,
)

logger = logging.getLogger("simulator")


class RequestState(enum.Enum):
    """Where a request is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(slots=True, eq=False)
class SimRequest:
    """One generation request as the scheduler sees it."""

    prompt_tokens: int
    max_tokens: int
    block_hashes: Sequence[int] = ()
    lora: str | None = None
    finish_reason: str = "length"
    """Reported when `max_tokens` is reached: "length", or "stop" for a simulated EOS."""
    stream: bool = True
    """Wake the consumer on every token; otherwise only when the request leaves."""
    arrival: float = 0.0
    produced: int = 0
    """Tokens generated so far; only the engine increments it."""
    state: RequestState = RequestState.WAITING
    blocks: int = 0
    """KV blocks held while running."""
    cached_tokens: int = 0
    """Prompt tokens served from the prefix cache at (latest) admission."""
    event: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by the engine whenever `produced` or `state` changes (unless `sink` took it)."""
    sink: Callable[[], bool] | None = None
    """Called right after each new token; returning True means it was delivered, so the
    consumer need not wake up. Must be quick and must not block."""

    @property
    def done(self) -> bool:
        """Whether the request left the engine (finished or aborted)."""
        return self.state is RequestState.FINISHED or self.state is RequestState.ABORTED


@dataclass(slots=True)
class StepPlan:
    """What the scheduler decided for the next step."""

    batch_size: int
    new_requests: int
    uncached_prefill_tokens: int
    preempted: int


@dataclass(slots=True)
class StepResult:
    """What one step produced."""

    tokens: int = 0
    prompt_tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    finished: list[SimRequest] = field(default_factory=list)


class Scheduler:
    """FIFO admission within `max_num_seqs` and the KV budget; one token per running request.

    KV accounting: a running request holds `blocks_needed(prompt + produced)` blocks and
    grows by one block when its next token crosses a block boundary. When growth does not
    fit, the most recently admitted requests are preempted (recompute mode, like vLLM): they
    free their blocks and go back to the front of the queue, keeping the tokens already
    generated, which are prefilled again on readmission.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.capacity_blocks = config.kv_capacity_blocks
        self.used_blocks = 0
        self.waiting: deque[SimRequest] = deque()
        self.running: dict[SimRequest, None] = {}
        self.prefix_cache = PrefixCache(self.capacity_blocks) if config.prefix_caching else None
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self._growing: list[SimRequest] = []

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks held by running requests (0..1)."""
        return self.used_blocks / self.capacity_blocks

    def has_work(self) -> bool:
        """Whether a step would do anything."""
        return bool(self.running or self.waiting)

    def add(self, request: SimRequest) -> None:
        """Queue a request (FIFO)."""
        request.state = RequestState.WAITING
        self.waiting.append(request)

    def abort(self, request: SimRequest) -> bool:
        """Remove a request wherever it is; False if it had already left."""
        if request.state is RequestState.RUNNING:
            del self.running[request]
            self._free(request)
        elif request.state is RequestState.WAITING:
            self.waiting.remove(request)
        else:
            return False
        request.state = RequestState.ABORTED
        request.event.set()
        return True

    def schedule(self) -> StepPlan:
        """Grow running requests (preempting if KV is short), then admit from the queue."""
        preempted = self._grow()
        config = self.config
        block_size = config.block_size
        new_requests = 0
        uncached = 0
        while self.waiting and len(self.running) < config.max_num_seqs:
            request = self.waiting[0]
            context = request.prompt_tokens + request.produced
            need = blocks_needed(context, block_size)
            if self.used_blocks + need > self.capacity_blocks:
                break
            self.waiting.popleft()
            hit = 0
            if self.prefix_cache is not None:
                matched = self.prefix_cache.match(request.block_hashes)
                hit = cached_prefix_tokens(matched, context, block_size)
                self.prefix_cache.insert(request.block_hashes)
                self.prefix_queries += context
                self.prefix_hits += hit
            request.cached_tokens = hit
            request.blocks = need
            request.state = RequestState.RUNNING
            self.used_blocks += need
            self.running[request] = None
            new_requests += 1
            uncached += context - hit
        return StepPlan(len(self.running), new_requests, uncached, preempted)

    def finish_step(self, now: float) -> StepResult:
        """Give every running request one token; retire those that reached `max_tokens`."""
        result = StepResult(tokens=len(self.running))
        block_size = self.config.block_size
        growing = self._growing
        finished = result.finished
        for request in self.running:
            produced = request.produced + 1
            request.produced = produced
            if produced == 1:
                result.ttfts.append(now - request.arrival)
                result.prompt_tokens += request.prompt_tokens
            if produced >= request.max_tokens:
                finished.append(request)
            elif request.prompt_tokens + produced > request.blocks * block_size:
                growing.append(request)
            if request.stream and not self._push(request):
                request.event.set()
        for request in finished:
            del self.running[request]
            self._free(request)
            request.state = RequestState.FINISHED
            request.event.set()
        return result

    @staticmethod
    def _push(request: SimRequest) -> bool:
        sink = request.sink
        if sink is None:
            return False
        try:
            return sink()
        except Exception:
            logger.exception("token sink failed; the consumer takes over")
            request.sink = None
            return False

    def _grow(self) -> int:
        growing = [r for r in self._growing if r.state is RequestState.RUNNING]
        self._growing = []
        if not growing:
            return 0
        preempted = 0
        # Newest first, so the oldest requests keep running; one request always fits alone.
        while self.used_blocks + len(growing) > self.capacity_blocks and len(self.running) > 1:
            victim = next(reversed(self.running))
            del self.running[victim]
            self._free(victim)
            victim.state = RequestState.WAITING
            self.waiting.appendleft(victim)
            if victim in growing:
                growing.remove(victim)
            preempted += 1
        for request in growing:
            request.blocks += 1
        self.used_blocks += len(growing)
        self.preemptions += preempted
        return preempted

    def _free(self, request: SimRequest) -> None:
        self.used_blocks -= request.blocks
        request.blocks = 0


class SimEngine:
    """The engine loop: one task, one step at a time, over a `Scheduler`."""

    def __init__(self, config: SimConfig, metrics: SimMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.scheduler = Scheduler(config)
        self.faults: FaultSettings = config.initial_faults()
        self.tokens_delivered = 0
        """Tokens written to clients since start (drives `crash_after_tokens`)."""
        self._kick = asyncio.Event()

    def submit(
        self,
        prompt_tokens: int,
        max_tokens: int,
        block_hashes: Sequence[int] = (),
        lora: str | None = None,
        finish_reason: str = "length",
        stream: bool = True,
    ) -> SimRequest:
        """Queue a new request; tokens arrive through its `event` and `produced`.

        The caller guarantees `prompt_tokens + max_tokens <= max_model_len`, which with
        `SimConfig`'s validation means the request fits in the KV cache on its own.
        """
        if prompt_tokens + max_tokens > self.config.max_model_len or max_tokens < 1:
            raise ValueError("request does not fit max_model_len")
        request = SimRequest(
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            block_hashes=block_hashes,
            lora=lora,
            finish_reason=finish_reason,
            stream=stream,
            arrival=asyncio.get_running_loop().time(),
        )
        self.scheduler.add(request)
        self._kick.set()
        return request

    def release(self, request: SimRequest) -> None:
        """Abort `request` unless it already finished; safe to call more than once."""
        if self.scheduler.abort(request):
            self.metrics.request_aborted()

    def abort_all(self) -> None:
        """Abort every request (shutdown or simulated crash); their consumers wake up."""
        scheduler = self.scheduler
        for request in [*scheduler.running, *scheduler.waiting]:
            self.release(request)

    def set_faults(self, faults: FaultSettings) -> None:
        """Replace the runtime fault settings and let the loop re-check them at once."""
        self.faults = faults
        self._kick.set()

    async def run(self) -> None:
        """Run steps forever; cancel the task to stop."""
        loop = asyncio.get_running_loop()
        scheduler = self.scheduler
        deadline = loop.time()
        while True:
            if self.faults.hang or not scheduler.has_work():
                self._kick.clear()
                await self._kick.wait()
                deadline = loop.time()
                continue
            plan = scheduler.schedule()
            if plan.batch_size == 0:  # nothing admissible; wait for a change
                self._kick.clear()
                await self._kick.wait()
                continue
            step_s = (
                step_time_ms(
                    self.config,
                    batch_size=plan.batch_size,
                    new_requests=plan.new_requests,
                    uncached_prefill_tokens=plan.uncached_prefill_tokens,
                    slow_token_ms=self.faults.slow_token_ms,
                )
                / 1000.0
            )
            # Steps follow a deadline schedule, not sleep + overhead: timers wake late under
            # load (often by ~1 ms), which would otherwise stretch every step. A step that is
            # behind by more than its own length restarts the schedule instead of catching up.
            now = loop.time()
            deadline = max(deadline + step_s, now)
            await asyncio.sleep(deadline - now)
            if self.faults.hang:
                continue
            result = scheduler.finish_step(loop.time())
            self.metrics.record_step(result, scheduler, plan.preempted)
