"""Which requests the response cache may answer, and the key they are stored under.

A request is cacheable when its answer is determined by what it asks: ``temperature``
0 or a ``seed`` set, and one choice (``n`` absent or 1). ``x-sluice-cache: allow``
opts any other request in; ``Cache-Control: no-store`` keeps it out entirely, and
``no-cache`` skips the lookup but stores the fresh answer.

The key is a hash over everything that changes the answer: the principal (unless the
cache is shared across keys), the endpoint, the answer's form (JSON or a stream), the
resolved model and adapter, and the request body without the fields that do not change
the output (:data:`IGNORED`), with ``stream_options.include_usage`` dropped (the usage
chunk is stored apart and sent only to those who ask for it). The body is serialized
with sorted keys, and integral floats at the top level (``temperature: 0.0``) are
written as integers, so that the same request spelled two ways has one key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.pipeline.context import CacheUse, RequestContext

IGNORED = frozenset({"model", "stream", "stream_options", "user", "metadata", "store",
                     "priority", "request_id", "service_tier"})
"""Body fields left out of the key. ``model`` is replaced by the resolved model;
``stream`` by the answer's form; ``stream_options`` by its fields other than
``include_usage``; ``user``, ``metadata`` and ``store`` label a request for its
sender (OpenAI stored completions); ``priority``, ``request_id`` and ``service_tier``
say how and when it is run, not what it answers."""


def deterministic(body: dict[str, Any]) -> bool:
    """The answer is fixed by the request: greedy sampling or a seed, one choice."""
    n = body.get("n")
    if n is not None and n != 1:
        return False
    temperature = body.get("temperature")
    greedy = type(temperature) in (int, float) and temperature == 0
    return greedy or body.get("seed") is not None


def cache_key(ctx: RequestContext, *, shared: bool) -> str:
    """The store key of ``ctx``'s answer (see the module docstring)."""
    fields: dict[str, Any] = {}
    for name, value in ctx.body.items():
        if name in IGNORED:
            continue
        if type(value) is float and value.is_integer():
            value = int(value)
        fields[name] = value
    options = ctx.body.get("stream_options")
    if isinstance(options, dict):
        rest = {k: v for k, v in options.items() if k != "include_usage"}
        if rest:
            fields["stream_options"] = rest
    head = (None if shared else ctx.principal, ctx.endpoint.name, ctx.stream, ctx.model,
            ctx.adapter)
    raw = orjson.dumps([head, fields], option=orjson.OPT_SORT_KEYS)
    return f"{ctx.endpoint.name}:{hashlib.blake2b(raw, digest_size=20).hexdigest()}"


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The ``cache`` settings as the director applies them."""

    enabled: bool = True
    shared_across_keys: bool = False

    def key(self, ctx: RequestContext) -> str | None:
        """``ctx``'s cache key, or None when it may not touch the cache."""
        use = ctx.cache
        if not self.enabled or use.no_store:
            return None
        if not (use.allow or deterministic(ctx.body)):
            return None
        return cache_key(ctx, shared=self.shared_across_keys)


def read_directives(use: CacheUse, cache_control: str | None, opt_in: str | None) -> None:
    """The request's ``Cache-Control`` and ``x-sluice-cache`` headers, noted in ``use``."""
    if cache_control:
        names = {part.split("=", 1)[0].strip().lower() for part in cache_control.split(",")}
        use.no_store = "no-store" in names
        use.no_cache = "no-cache" in names
    use.allow = opt_in is not None and opt_in.strip().lower() == "allow"
