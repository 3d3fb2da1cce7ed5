"""Every Prometheus metric the gateway exports, on a registry owned by one app.

Every per-request metric carries ``model`` and ``version``. ``model`` is the name the
client asked for (an alias, or a served model; ``unknown`` for a name no engine serves),
``version`` the version of a model alias that served (``none`` for a model that is not
an alias, and for requests that never reached one): configured names only, so neither
grows without bound.

Per-engine metrics (``sluice_engine_*``, ``sluice_upstream_errors``) are about an engine,
not a request, and carry ``engine`` only. ``sluice_engine_info{engine,model,version}`` is
1 for each model an engine serves: every served name with ``version="none"``, and each
alias version whose model (or adapter) it serves under the alias's name. Join on
``engine`` to read an engine metric by model and version, e.g.::

    sluice_engine_kv_cache_usage * on(engine) group_right
        sluice_engine_info{model="chat", version="v2"}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

if TYPE_CHECKING:
    from gateway.observability.worker_metrics import WorkerPeers

WORKER_GAUGE_MODES: dict[str, Literal["sum", "max", "min", "worker"]] = {
    "sluice_requests_in_flight": "sum",
    "sluice_engine_in_flight": "sum",
    "sluice_engine_up": "min",
    "sluice_redis_up": "min",
    "sluice_engine_circuit_state": "worker",
    "sluice_engine_requests": "max",
    "sluice_engine_kv_cache_usage": "max",
    "sluice_engine_info": "max",
    "sluice_adapters_resident": "max",
    "sluice_draining": "max",
    "sluice_discovery_engines": "max",
}
"""How each gauge reads when several workers (``workers > 1``) answer one scrape
(counters and histograms are summed): ``sum`` over workers (what all of them hold open),
``min`` (1 only while every worker sees it up), ``max`` (what the engine reports,
which every worker polls on its own, at its highest; engines a discovery source found,
which every worker resolves on its own; draining while any worker
drains), ``worker`` (each worker's own view, with a ``worker`` label: each worker has
its own circuit breaker per engine). One gateway process exports every gauge as is."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_PLUGIN_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3)
_RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)
_SIMILARITY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class GatewayMetrics:
    """The gateway's metrics. One instance per app; tests build as many as they like."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sluice_requests", "Finished generation requests (version: the alias's "
            "version that served, none for a model that is not an alias).",
            ["model", "version", "engine", "endpoint", "status"], registry=r)
        self.in_flight = Gauge(
            "sluice_requests_in_flight", "Generation requests being served.",
            ["model", "version"], registry=r)
        self.ttft = Histogram(
            "sluice_time_to_first_token_seconds",
            "Request arrival to the first streamed bytes of output.",
            ["model", "version"], buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(
            "sluice_inter_token_latency_seconds",
            "Gap between consecutive upstream reads carrying output.",
            ["model", "version"], buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram(
            "sluice_request_duration_seconds", "Request arrival to its last byte.",
            ["model", "version", "endpoint"], buckets=_E2E_BUCKETS, registry=r)
        self.tokens = Counter(
            "sluice_tokens", "Tokens reported in usage by the engines.",
            ["model", "version", "kind"], registry=r)
        self.upstream_errors = Counter(
            "sluice_upstream_errors", "Engine failures seen by the gateway.",
            ["engine", "kind"], registry=r)
        self.retries = Counter(
            "sluice_retries", "Requests re-sent to another engine before the first byte.",
            ["model", "version"], registry=r)
        self.client_disconnects = Counter(
            "sluice_client_disconnects", "Streams the client closed before the end.",
            ["model", "version"], registry=r)
        self.discovery_resolutions = Counter(
            "sluice_discovery_resolutions",
            "DNS resolutions of a discovery source, by outcome (ok, error: the engines "
            "last found are kept).", ["source", "outcome"], registry=r)
        self.discovery_engines = Gauge(
            "sluice_discovery_engines", "Engines a discovery source found last.",
            ["source"], registry=r)
        self.config_reloads = Counter(
            "sluice_config_reloads",
            "Configuration reloads (SIGHUP), by outcome (applied, refused: the config in "
            "use is kept).", ["outcome"], registry=r)
        self.engine_up = Gauge(
            "sluice_engine_up", "1 when the engine answered its last health check.",
            ["engine"], registry=r)
        self.engine_in_flight = Gauge(
            "sluice_engine_in_flight", "Requests the gateway has open on the engine.",
            ["engine"], registry=r)

        self.circuit_state = Gauge(
            "sluice_engine_circuit_state", "The engine's breaker: 0 closed, 1 open, 2 half-open.",
            ["engine"], registry=r)
        self.engine_queue = Gauge(
            "sluice_engine_requests", "Requests running or waiting, as the engine reports.",
            ["engine", "state"], registry=r)
        self.engine_kv_usage = Gauge(
            "sluice_engine_kv_cache_usage", "KV-cache usage the engine reports (1 = full).",
            ["engine"], registry=r)
        self.engine_info = Gauge(
            "sluice_engine_info", "1 for each model and version the engine serves (a "
            "served name with version none; an alias's version under the alias's name): "
            "join engine metrics on engine.", ["engine", "model", "version"], registry=r)
        self.routing_decisions = Counter(
            "sluice_routing_decisions", "Engine picks, by the policy's strategy and why.",
            ["model", "version", "strategy", "reason"], registry=r)
        self.scheduler_plugin_duration = Histogram(
            "sluice_scheduler_plugin_duration_seconds",
            "Time of one scheduling plugin call (only with routing.plugin_timing on).",
            ["plugin", "kind"], buckets=_PLUGIN_BUCKETS, registry=r)
        self.retry_budget_exhausted = Counter(
            "sluice_retry_budget_exhausted", "Retries not made because the budget was spent.",
            ["model", "version"], registry=r)
        self.failovers = Counter(
            "sluice_failovers",
            "Streams broken after the first byte: continued on another engine, or ended "
            "with an error event.", ["model", "version", "outcome"], registry=r)
        self.admission_rejections = Counter(
            "sluice_admission_rejections", "Requests refused with 429: the model's fleet is full.",
            ["model", "version"], registry=r)
        self.key_requests = Counter(
            "sluice_key_requests", "Generation requests per API key (operator-made ids: "
            "static-<n> or a managed key's id), by status.",
            ["key_id", "model", "version", "status"], registry=r)
        self.key_tokens = Counter(
            "sluice_key_tokens", "Tokens (prompt + completion) streamed per API key.",
            ["key_id", "model", "version"], registry=r)
        self.admin_auth_failures = Counter(
            "sluice_admin_auth_failures", "Admin API requests refused for their token: "
            "invalid (a missing or wrong token), held_back (429: the address failed too "
            "often in a row and waits).", ["outcome"], registry=r)
        self.version_samples_skipped = Counter(
            "sluice_version_samples_skipped", "Finished requests to an alias that the "
            "rollout guard does not judge the version by, by reason: pinned (x-sluice-"
            "version), endpoint (not a generation), caller_share (past "
            "versions.rollout.max_caller_share of one caller).", ["model", "reason"],
            registry=r)
        self.adapter_loads = Counter(
            "sluice_adapter_loads", "LoRA adapter loads the gateway asked of an engine, by "
            "outcome (loaded, failed).", ["engine", "outcome"], registry=r)
        self.adapter_unloads = Counter(
            "sluice_adapter_unloads", "LoRA adapters the gateway unloaded from an engine to "
            "make room for another.", ["engine"], registry=r)
        self.adapter_load_seconds = Histogram(
            "sluice_adapter_load_seconds", "How long an engine took to load a LoRA adapter.",
            ["engine"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.adapters_resident = Gauge(
            "sluice_adapters_resident", "LoRA adapters loaded on an engine, as the gateway "
            "last saw it.", ["engine"], registry=r)
        self.cache_lookups = Counter(
            "sluice_cache_lookups", "Response cache lookups of cacheable requests: hit "
            "(a stored answer), coalesced (an identical request in flight), miss.",
            ["model", "version", "result"], registry=r)
        self.shadow_requests = Counter(
            "sluice_shadow_requests", "Mirrored copies of requests to an alias's shadow "
            "version, by outcome (ok, error, dropped: the in-flight bound was reached, "
            "no_engine).", ["model", "version", "outcome"], registry=r)
        self.shadow_divergence = Counter(
            "sluice_shadow_divergence", "Mirrored requests whose answer differs from the "
            "one the client got, by reason: status (alone: then nothing else is compared), "
            "tokens (completion tokens), text (choice 0's text less alike than "
            "versions.shadow_text_threshold).", ["model", "version", "reason"], registry=r)
        self.shadow_text_similarity = Histogram(
            "sluice_shadow_text_similarity", "How alike a mirrored answer's text is to the "
            "one the client got (0 to 1, word bigrams; both answered 200).",
            ["model", "version"], buckets=_SIMILARITY_BUCKETS, registry=r)
        self.shadow_latency_ratio = Histogram(
            "sluice_shadow_latency_ratio", "A mirrored request's latency over the latency "
            "of the request it copies.", ["model", "version"], buckets=_RATIO_BUCKETS,
            registry=r)
        self.draining = Gauge(
            "sluice_draining",
            "1 once the gateway is stopping (from SIGTERM on: /ready answers 503), until it exits.",
            registry=r)
        self.redis_up = Gauge(
            "sluice_redis_up", "1 when the shared state store (Redis) answered its last "
            "probe; always 0 with in-memory stores (no redis.url).", registry=r)
        self.redis_errors = Counter(
            "sluice_redis_errors", "Failed Redis operations, by operation.", ["op"],
            registry=r)
        self.redis_bypassed = Counter(
            "sluice_redis_bypassed",
            "Store operations answered without Redis while it was down (admission counted "
            "locally or refused, cache skipped, last known state read).", ["store"],
            registry=r)

        self._versions: dict[tuple[str, str], VersionMetrics] = {}
        self.peers: WorkerPeers | None = None
        """The other workers, when this is one of several (see
        :mod:`gateway.observability.worker_metrics`)."""

    def version(self, model: str, version: str) -> VersionMetrics:
        """The per-request metrics of one ``model`` and ``version`` label pair, their
        children looked up once (prometheus-client's ``labels()`` validates and locks on
        every call; a request touches these eight or more times). Bounded as the label
        values are: the model label of a name no engine serves is ``unknown``."""
        found = self._versions.get((model, version))
        if found is None:
            found = self._versions[(model, version)] = VersionMetrics(self, model, version)
        return found

    def forget_engine(self, engine: str, info: Iterable[tuple[str, str]]) -> None:
        """Drop an engine's gauge series (it left the pool); ``info``: its
        ``sluice_engine_info`` (model, version) pairs. Counters keep theirs."""
        for gauge, labels in ((self.engine_up, (engine,)), (self.engine_in_flight, (engine,)),
                              (self.circuit_state, (engine,)), (self.engine_kv_usage, (engine,)),
                              (self.engine_queue, (engine, "running")),
                              (self.engine_queue, (engine, "waiting")),
                              *((self.engine_info, (engine, *pair)) for pair in info)):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def render(self) -> bytes:
        """This process's metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    async def scrape(self) -> bytes:
        """What ``/metrics`` answers: this process's metrics, or every worker's merged."""
        if self.peers is None:
            return self.render()
        return await self.peers.render()


class VersionMetrics:
    """The label children of the per-request metrics of one (model, version), each
    made on first use (a series appears once something was counted in it)."""

    __slots__ = ("_children", "_metrics", "labels")

    def __init__(self, metrics: GatewayMetrics, model: str, version: str) -> None:
        self._metrics = metrics
        self.labels = (model, version)
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, name: str, *more: str) -> Any:
        key = (name, *more)
        child = self._children.get(key)
        if child is None:
            metric = getattr(self._metrics, name)
            child = self._children[key] = metric.labels(*self.labels, *more)
        return child

    @property
    def in_flight(self) -> Gauge:
        gauge: Gauge = self._child("in_flight")
        return gauge

    @property
    def ttft(self) -> Histogram:
        histogram: Histogram = self._child("ttft")
        return histogram

    @property
    def itl(self) -> Histogram:
        histogram: Histogram = self._child("itl")
        return histogram

    def tokens(self, kind: str) -> Counter:
        """``sluice_tokens_total``'s child for ``prompt`` or ``completion`` tokens."""
        counter: Counter = self._child("tokens", kind)
        return counter

    def requests(self, engine: str, endpoint: str, status: str) -> Counter:
        """``sluice_requests_total``'s child for a request that ended so."""
        counter: Counter = self._child("requests", engine, endpoint, status)
        return counter

    def e2e(self, endpoint: str) -> Histogram:
        """``sluice_request_duration_seconds``'s child for an endpoint."""
        histogram: Histogram = self._child("e2e", endpoint)
        return histogram
