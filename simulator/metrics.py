"""The simulator's Prometheus metrics, named and labelled as vLLM (V1 engine) exposes them.

One `CollectorRegistry` per app, never the global one, so any number of simulators can run
in one process. Counters are incremented once per engine step, not per token; gauges are
refreshed when `/metrics` is scraped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from simulator.engine import Scheduler, SimRequest, StepResult

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort")


class SimMetrics:
    """vLLM's engine metrics for one served model (labels `model_name`, `engine="0"`)."""

    def __init__(self, model_name: str, max_loras: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        names = ["model_name", "engine"]
        values = (model_name, "0")
        self.max_loras = max_loras

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=registry).labels(*values)

        def counter(name: str, doc: str) -> Counter:
            # prometheus_client appends `_total` to counter names when exposing them.
            return Counter(name, doc, names, registry=registry).labels(*values)

        self.running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        self.kv_usage = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self.preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=registry,
        )
        self.request_success = {r: success.labels(*values, r) for r in FINISH_REASONS}
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            names,
            registry=registry,
            buckets=TTFT_BUCKETS,
        ).labels(*values)
        self.http_requests = Counter(
            "http_requests",
            "Total number of requests by method, status and handler.",
            ["method", "status", "handler"],
            registry=registry,
        )
        """As vLLM's HTTP instrumentation counts them (status grouped as ``2xx``)."""
        self.lora_info: Gauge | None = None
        if max_loras > 0:
            # As in vLLM: no model_name label, and the value is the wall-clock time of the
            # latest update. Unlike vLLM, stale label sets are dropped instead of kept forever.
            self.lora_info = Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                registry=registry,
            )
        self._prefix_queries_seen = 0
        self._prefix_hits_seen = 0

    def record_step(self, result: StepResult, scheduler: Scheduler, preempted: int) -> None:
        """Account one engine step."""
        if result.tokens:
            self.generation_tokens.inc(result.tokens)
        if result.prompt_tokens:
            self.prompt_tokens.inc(result.prompt_tokens)
        for ttft in result.ttfts:
            self.ttft.observe(ttft)
        for request in result.finished:
            self.request_success[request.finish_reason].inc()
        if preempted:
            self.preemptions.inc(preempted)
        self._sync_prefix(scheduler)

    def request_aborted(self) -> None:
        """Count a request that left before finishing."""
        self.request_success["abort"].inc()

    def render(self, scheduler: Scheduler) -> bytes:
        """Refresh the gauges from `scheduler` and return the text exposition."""
        self.running.set(len(scheduler.running))
        self.waiting.set(len(scheduler.waiting))
        self.kv_usage.set(scheduler.kv_usage)
        self._sync_prefix(scheduler)
        if self.lora_info is not None:
            running = _adapters(scheduler.running)
            waiting = _adapters(scheduler.waiting)
            self.lora_info.clear()
            self.lora_info.labels(str(self.max_loras), waiting, running).set(time.time())
        return generate_latest(self.registry)

    def _sync_prefix(self, scheduler: Scheduler) -> None:
        queries = scheduler.prefix_queries - self._prefix_queries_seen
        hits = scheduler.prefix_hits - self._prefix_hits_seen
        if queries:
            self.prefix_queries.inc(queries)
            self._prefix_queries_seen = scheduler.prefix_queries
        if hits:
            self.prefix_hits.inc(hits)
            self._prefix_hits_seen = scheduler.prefix_hits


def _adapters(requests: Iterable[SimRequest]) -> str:
    names: dict[str, None] = {}
    for request in requests:
        if request.lora is not None:
            names[request.lora] = None
    return ",".join(names)
