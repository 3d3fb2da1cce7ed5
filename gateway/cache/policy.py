"""Which requests the response cache may answer, and the key they are stored under.

The cache serves chat, completions and embeddings (:data:`ENDPOINTS`). A chat or
completions request is cacheable when its answer is determined by what it asks:
``temperature`` 0 or a ``seed`` set, and one choice (``n`` absent or 1);
``x-sluice-cache: allow`` opts any other one in. Every embeddings request is cacheable:
a pooling model's answer is a function of its input. ``Cache-Control: no-store`` keeps a
request out entirely, and ``no-cache`` skips the lookup but stores the fresh answer.

The key is a hash over everything that changes the answer: the principal (unless the
cache is shared across keys), the endpoint, the answer's form (JSON or a stream), the
resolved model and adapter, and the request body without the fields that do not change
the output (:data:`IGNORED`), with ``stream_options.include_usage`` dropped (the usage
chunk is stored apart and sent only to those who ask for it). The body is serialized
with sorted keys, and integral floats at the top level (``temperature: 0.0``) are
written as integers (within 64 bits), so that the same request spelled two ways has one
key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.core.context import CacheUse, RequestContext
from gateway.core.endpoints import Endpoint

SAMPLED = frozenset({"chat", "completions"})
"""Endpoints whose answer is fixed only by greedy sampling or a seed (:func:`deterministic`)."""
FIXED = frozenset({"embeddings"})
"""Endpoints whose answer is always fixed by the request."""
ENDPOINTS = SAMPLED | FIXED
"""The endpoints (by name) the cache serves. The other passthrough endpoints go straight
to an engine: ``/tokenize`` is a tokenizer call, about what a lookup costs; scoring,
reranking and pooling could be cached as embeddings are, but are not; ``/v1/responses``
keeps state on the server (``previous_response_id``)."""

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
"""The integers a JSON body can hold as integers (what orjson reads and writes): an
integral float beyond them (a client's ``2**70`` arrives as a float) stays a float."""

IGNORED = frozenset({"model", "stream", "stream_options", "user", "metadata", "store",
                     "priority", "request_id", "service_tier"})
"""Body fields left out of the key. ``model`` is replaced by the resolved model;
``stream`` by the answer's form; ``stream_options`` by its fields other than
``include_usage``; ``user``, ``metadata`` and ``store`` label a request for its
sender (OpenAI stored completions); ``priority``, ``request_id`` and ``service_tier``
say how and when it is run, not what it answers."""


def serves(endpoint: Endpoint) -> bool:
    """Whether ``endpoint``'s answers may come from the cache (its responses then say
    what the cache did, ``x-sluice-cache``)."""
    return endpoint.name in ENDPOINTS


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
        if type(value) is float and value.is_integer() and _INT_MIN <= value <= _INT_MAX:
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
    """The ``cache`` settings as the director applies them (with ``cache.enabled`` off
    the app builds no cache at all)."""

    shared_across_keys: bool = False

    def key(self, ctx: RequestContext) -> str | None:
        """``ctx``'s cache key, or None when it may not touch the cache."""
        use, name = ctx.cache, ctx.endpoint.name
        if use.no_store or name not in ENDPOINTS:
            return None
        if name in SAMPLED and not (use.allow or deterministic(ctx.body)):
            return None
        return cache_key(ctx, shared=self.shared_across_keys)


def read_directives(use: CacheUse, cache_control: str | None, opt_in: str | None) -> None:
    """The request's ``Cache-Control`` and ``x-sluice-cache`` headers, noted in ``use``."""
    if cache_control:
        names = {part.split("=", 1)[0].strip().lower() for part in cache_control.split(",")}
        use.no_store = "no-store" in names
        use.no_cache = "no-cache" in names
    use.allow = opt_in is not None and opt_in.strip().lower() == "allow"
