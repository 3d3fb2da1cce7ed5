"""The endpoints the gateway routes to engines, and what sets each one's way apart.

Every endpoint runs the same request path (:meth:`gateway.pipeline.director.Director.run`);
what differs is read from its :class:`Endpoint`: the request model the director
validates, whether ``"stream": true`` gets an event stream, and whether that stream is
OpenAI chunks (``data:`` events ending with ``[DONE]``, continued on another engine when
one breaks) or named events relayed as the engine framed them (``/v1/responses``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.protocol import ChatCompletionRequest, CompletionRequest, RequestBody


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint routed to engines: its metrics name, the engine path, and the request
    model the director validates (the passthrough endpoints read only ``model`` and
    ``stream``: :class:`~gateway.core.protocol.RequestBody`)."""

    name: str
    path: str
    model: type[RequestBody] = RequestBody
    streams: bool = False
    """``"stream": true`` gets an event stream (for the others it is passed on as sent,
    and the answer is JSON)."""
    chunks: bool = False
    """Its answers are OpenAI completion chunks (chat, completions): a stream is
    ``data:`` events ending with ``[DONE]``, continued on another engine when one breaks
    after its first byte, and shadow policies mirror it."""
    generates: bool = False
    """A generation (chat, completions, responses): what a guarded rollout judges a
    version by."""

    @property
    def chat(self) -> bool:
        return self.name == "chat"


CHAT = Endpoint("chat", "/v1/chat/completions", ChatCompletionRequest, streams=True,
                chunks=True, generates=True)
COMPLETIONS = Endpoint("completions", "/v1/completions", CompletionRequest, streams=True,
                       chunks=True, generates=True)
RESPONSES = Endpoint("responses", "/v1/responses", streams=True, generates=True)
EMBEDDINGS = Endpoint("embeddings", "/v1/embeddings")
TOKENIZE = Endpoint("tokenize", "/tokenize")
DETOKENIZE = Endpoint("detokenize", "/detokenize")
POOLING = Endpoint("pooling", "/pooling")
CLASSIFY = Endpoint("classify", "/classify")
SCORE = (Endpoint("score", "/score"), Endpoint("score", "/v1/score"))
RERANK = (Endpoint("rerank", "/rerank"), Endpoint("rerank", "/v1/rerank"),
          Endpoint("rerank", "/v2/rerank"))
PASSTHROUGH = (RESPONSES, EMBEDDINGS, TOKENIZE, DETOKENIZE, POOLING, CLASSIFY, *SCORE, *RERANK)
"""The rest of vLLM's OpenAI server, each served at the engine path of the same name and
forwarded as sent."""
HTTP = (CHAT, COMPLETIONS, *PASSTHROUGH)
"""Every endpoint served over HTTP POST."""
REALTIME = Endpoint("realtime", "/v1/realtime")
"""A ``/v1/realtime`` WebSocket session (its body is only ``{"model": ...}``)."""
