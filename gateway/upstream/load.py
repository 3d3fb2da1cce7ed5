"""An engine's load as its ``/metrics`` page states it, read fast.

The router reads every engine's metrics several times a second, so this does not parse
the whole exposition (vLLM's page has hundreds of samples): it scans for the five
series it needs and sums each over its labels (one engine may serve several models),
and reads ``vllm:lora_requests_info``, whose labels say the engine's adapter bound
(``max_lora``) and which adapters have requests running or waiting (its value is the
time it was set: of several label sets, the newest is the engine's state now).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_SERIES: dict[bytes, str] = {
    b"vllm:num_requests_running": "running",
    b"vllm:num_requests_waiting": "waiting",
    b"vllm:kv_cache_usage_perc": "kv_usage",
    b"vllm:prefix_cache_queries_total": "prefix_queries",
    b"vllm:prefix_cache_hits_total": "prefix_hits",
}


_LORA_INFO = b"vllm:lora_requests_info"
_LORA_DECLARED = b"# TYPE " + _LORA_INFO + b" "
_LABEL = re.compile(rb'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class LoraInfo:
    """An engine's LoRA state: ``max_lora`` adapters at once (None: not reported yet),
    and the adapters with requests running or waiting. vLLM declares the series only
    with LoRA on, and sets it only once its scheduler has stepped: ``enabled`` is the
    declaration, seen before any sample."""

    max_lora: int | None = None
    running: frozenset[str] = frozenset()
    waiting: frozenset[str] = frozenset()
    enabled: bool = False

    @property
    def busy(self) -> frozenset[str]:
        return self.running | self.waiting


def _names(value: str) -> frozenset[str]:
    return frozenset(name for name in value.split(",") if name)


def parse_lora_info(line: bytes) -> tuple[float, LoraInfo] | None:
    """One ``vllm:lora_requests_info`` sample: its value (a time) and what it says."""
    labels = {k.decode(): v.decode("utf-8", "replace") for k, v in _LABEL.findall(line)}
    try:
        stamp = float(line[line.rindex(b"}") + 1:].split()[0])
        max_lora = int(labels["max_lora"])
    except (ValueError, IndexError, KeyError):
        return None
    return stamp, LoraInfo(max_lora, _names(labels.get("running_lora_adapters", "")),
                           _names(labels.get("waiting_lora_adapters", "")), enabled=True)


@dataclass(frozen=True)
class EngineLoad:
    """One scrape. ``kv_usage`` is a fraction (1.0 = full); the prefix counters count
    prompt tokens since the engine started."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    lora: LoraInfo = field(default_factory=LoraInfo)

    @property
    def queued(self) -> float:
        return self.running + self.waiting


def parse_load(raw: bytes) -> EngineLoad:
    """The load series of a Prometheus text page; absent series read as 0."""
    totals: dict[str, float] = {}
    lora: tuple[float, LoraInfo] | None = None
    declared = False
    for line in raw.split(b"\n"):
        if not line.startswith(b"vllm:"):
            declared = declared or line.startswith(_LORA_DECLARED)
            continue
        if line.startswith(_LORA_INFO + b"{"):
            sample = parse_lora_info(line)
            if sample is not None and (lora is None or sample[0] >= lora[0]):
                lora = sample
            continue
        end = len(line)
        for stop in (b"{", b" "):
            at = line.find(stop)
            if 0 <= at < end:
                end = at
        field = _SERIES.get(line[:end])
        if field is None:
            continue
        try:
            rest = line[line.rindex(b"}") + 1:] if b"}" in line else line[end:]
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        if math.isfinite(value):
            totals[field] = totals.get(field, 0.0) + value
    info = lora[1] if lora is not None else LoraInfo(enabled=declared)
    return EngineLoad(**totals, lora=info)
