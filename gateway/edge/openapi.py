"""The OpenAPI 3.1 description of every route the app serves, built from its routes.

Each Starlette route becomes an operation: routes documented in :data:`OPERATIONS` get
their summary and request and response schemas (request schemas come from the protocol
models, so they never drift from what the gateway validates); any other route still
appears, with a generic summary, so the document always lists every route. Errors share
one schema, OpenAI's ``{"error": {...}}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.routing import BaseRoute, Route, WebSocketRoute

from adapters import AdapterSpec
from gateway.core.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    KeyRequest,
    PolicyRequest,
    RolloutRequest,
)

_REF = "#/components/schemas/{model}"
_CONVERTER = re.compile(r"{([^}:]+):[^}]+}")
_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


@dataclass(frozen=True, slots=True)
class Operation:
    """What the document says about one route and method."""

    summary: str
    tag: str
    request: str | None = None
    """Name of the request body's schema, if the operation takes a body."""
    response: str = "Engine"
    """Name of the 200 answer's schema."""
    streams: bool = False
    """``"stream": true`` answers Server-Sent Events."""


_ENGINE = "Routed by the body's `model` to an engine serving it; forwarded as sent."
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("post", "/v1/chat/completions"): Operation(
        "Chat completion, streamed (`\"stream\": true`) or not", "generation",
        "ChatCompletionRequest", "ChatCompletion", streams=True),
    ("post", "/v1/completions"): Operation(
        "Text completion, streamed or not", "generation", "CompletionRequest",
        "Completion", streams=True),
    ("post", "/v1/responses"): Operation(
        "Responses API, streamed (named events) or not. " + _ENGINE, "generation",
        "ResponsesRequest", "Response", streams=True),
    ("get", "/v1/models"): Operation(
        "Models served by at least one healthy engine, LoRA adapters and model aliases "
        "included", "models",
        response="ModelList"),
    ("get", "/v1/models/{model_id}"): Operation(
        "One served model's (or alias's) card (404 `model_not_found` when none serves it)",
        "models",
        response="Model"),
    ("post", "/v1/embeddings"): Operation("Embeddings. " + _ENGINE, "pooling", "EngineRequest"),
    ("post", "/pooling"): Operation("Pooling. " + _ENGINE, "pooling", "EngineRequest"),
    ("post", "/classify"): Operation("Classification. " + _ENGINE, "pooling",
                                     "EngineRequest"),
    ("post", "/score"): Operation("Scores of text pairs. " + _ENGINE, "pooling",
                                  "EngineRequest"),
    ("post", "/v1/score"): Operation("Same as `/score`. " + _ENGINE, "pooling",
                                     "EngineRequest"),
    ("post", "/rerank"): Operation("Rerank documents. " + _ENGINE, "pooling",
                                   "EngineRequest"),
    ("post", "/v1/rerank"): Operation("Same as `/rerank`. " + _ENGINE, "pooling",
                                      "EngineRequest"),
    ("post", "/v2/rerank"): Operation("Same as `/rerank`. " + _ENGINE, "pooling",
                                      "EngineRequest"),
    ("post", "/tokenize"): Operation("Tokenize a prompt or messages. " + _ENGINE, "tokens",
                                     "EngineRequest"),
    ("post", "/detokenize"): Operation("Token ids back to text. " + _ENGINE, "tokens",
                                       "EngineRequest"),
    ("get", "/version"): Operation("The engines' vLLM version (from a healthy engine)",
                                   "operations"),
    ("get", "/health"): Operation("The gateway process is alive", "operations",
                                  response="Status"),
    ("get", "/ready"): Operation("200 when an engine serves, else 503; the engine list",
                                 "operations", response="Status"),
    ("get", "/metrics"): Operation("Prometheus metrics (text format)", "operations",
                                   response="Text"),
    ("get", "/openapi.json"): Operation("This document", "operations"),
    ("get", "/docs"): Operation("This document, readable (HTML)", "operations",
                                response="Text"),
    ("post", "/admin/keys"): Operation(
        "Create an API key; the answer holds the key, shown this once (admin token; only "
        "with admin.token set)", "admin", "KeyRequest", "NewApiKey"),
    ("get", "/admin/keys"): Operation("Every API key, without secrets (admin token)",
                                      "admin", response="ApiKeyList"),
    ("delete", "/admin/keys/{key_id}"): Operation("Revoke an API key (admin token)", "admin",
                                                  response="ApiKey"),
    ("post", "/admin/adapters"): Operation(
        "Register a LoRA adapter: name, base, path (under lora.roots); loaded on demand "
        "(201; admin token)", "admin", "AdapterSpec", "Adapter"),
    ("get", "/admin/adapters"): Operation(
        "Every LoRA adapter, configured and registered (admin token)", "admin",
        response="AdapterList"),
    ("delete", "/admin/adapters/{name}"): Operation(
        "Unregister a LoRA adapter (409 for a configured one; admin token)", "admin",
        response="Deleted"),
    ("get", "/admin/versions"): Operation(
        "Every model alias: versions, stored and applied policy (admin token)", "admin",
        response="AliasList"),
    ("get", "/admin/versions/{alias}"): Operation(
        "One alias: versions, stored and applied policy, fallback chain (admin token)",
        "admin", response="Alias"),
    ("put", "/admin/versions/{alias}"): Operation(
        "Replace an alias's policy in one atomic write (admin token)", "admin",
        "PolicyRequest", "Alias"),
    ("get", "/admin/versions/{alias}/history"): Operation(
        "An alias's earlier policies, newest first (admin token)", "admin",
        response="PolicyList"),
    ("post", "/admin/versions/{alias}/rollback"): Operation(
        "Restore an alias's previous policy (409 when there is none; admin token)",
        "admin", response="Alias"),
    ("post", "/admin/versions/{alias}/rollout"): Operation(
        "Start a guarded progressive rollout (202; admin token)", "admin", "RolloutRequest",
        "Rollout"),
    ("get", "/admin/versions/{alias}/rollout"): Operation(
        "The alias's latest rollout and every decision, from the store (admin token)",
        "admin", response="Rollout"),
    ("delete", "/admin/versions/{alias}/rollout"): Operation(
        "Cancel the alias's running rollout where it is, whichever replica drives it "
        "(admin token)", "admin",
        response="Rollout"),
    ("get", "/"): Operation("The playground: a chat page (HTML)", "playground",
                            response="Text"),
    ("get", "/playground/playground.js"): Operation("The playground's script", "playground",
                                                    response="Text"),
    ("get", "/playground/playground.css"): Operation("The playground's style sheet",
                                                     "playground", response="Text"),
}


def openapi_path(path: str) -> str:
    """A Starlette path as OpenAPI writes it (``{id:path}`` -> ``{id}``)."""
    return _CONVERTER.sub(r"{\1}", path)


def document(routes: Sequence[BaseRoute], *, version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (an app's ``routes``)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if isinstance(route, Route):
            methods = sorted(m.lower() for m in route.methods or () if m != "HEAD")
        elif isinstance(route, WebSocketRoute):
            methods = ["get"]
        else:
            continue
        path = openapi_path(route.path)
        for method in methods:
            paths.setdefault(path, {})[method] = _operation(
                method, path, websocket=isinstance(route, WebSocketRoute))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sluice", "version": version,
                 "description": "OpenAI-compatible gateway in front of vLLM engines."},
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "responses": {"Error": {
                "description": "An error, in OpenAI's shape",
                "content": {"application/json": {"schema": _ref("Error")}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(method: str, path: str, *, websocket: bool) -> dict[str, Any]:
    known = OPERATIONS.get((method, path))
    if known is None:
        summary = "WebSocket endpoint" if websocket else "Undocumented route"
        return {"summary": summary, "responses": {"default": {"description": "any"}}}
    content: dict[str, Any] = {"application/json": {"schema": _ref(known.response)}}
    if known.response == "Text":
        content = {"text/plain": {"schema": {"type": "string"}}}
    if known.streams:
        content["text/event-stream"] = {"schema": {
            "type": "string",
            "description": "Server-Sent Events (see the Streams section of "
                           "docs/reference/http-api.md)"}}
    operation: dict[str, Any] = {
        "summary": known.summary, "tags": [known.tag],
        "responses": {"200": {"description": "OK", "content": content},
                      "default": {"$ref": "#/components/responses/Error"}},
    }
    if known.request is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(known.request)}}}
    if path not in ("/health", "/ready", "/openapi.json", "/docs") \
            and known.tag != "playground":
        operation["security"] = [{"bearer": []}]
    return operation


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (ChatCompletionRequest, CompletionRequest, KeyRequest, PolicyRequest,
                  RolloutRequest, AdapterSpec):
        schemas |= _model_schema(model)
    usage = {"type": "object", "properties": {
        "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"}}}
    choice = {"type": "object", "properties": {
        "index": {"type": "integer"}, "finish_reason": {"type": ["string", "null"]},
        "message": {"type": "object", "properties": {
            "role": {"type": "string"}, "content": {"type": ["string", "null"]}}},
        "text": {"type": "string"}}}

    api_key: dict[str, Any] = {"type": "object", "properties": {
        "id": {"type": "string"}, "object": {"const": "api_key"}, "name": {"type": "string"},
        "models": {"type": "array", "items": {"type": "string"}},
        "rpm": {"type": ["integer", "null"]}, "tpm": {"type": ["integer", "null"]},
        "created": {"type": "integer"}, "revoked": {"type": "boolean"},
        "revoked_at": {"type": ["integer", "null"]}}}

    weights = {"type": "object", "additionalProperties": {"type": "number"}}
    policy = {"type": "object", "properties": {"weights": weights, "shadow": weights}}

    def answer(kind: str) -> dict[str, Any]:
        return {"type": "object", "required": ["id", "object", "model", "choices"],
                "properties": {"id": {"type": "string"}, "object": {"const": kind},
                               "created": {"type": "integer"}, "model": {"type": "string"},
                               "choices": {"type": "array", "items": choice},
                               "usage": usage}}

    schemas |= {
        "ChatCompletion": answer("chat.completion"),
        "Completion": answer("text_completion"),
        "Model": {"type": "object", "required": ["id", "object"], "properties": {
            "id": {"type": "string"}, "object": {"const": "model"},
            "owned_by": {"type": "string"}, "root": {"type": "string"},
            "parent": {"type": ["string", "null"]},
            "max_model_len": {"type": ["integer", "null"]}}},
        "ModelList": {"type": "object", "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}},
        "ResponsesRequest": {**_OBJECT, "properties": {
            "model": {"type": "string"}, "input": {}, "stream": {"type": "boolean"},
            "instructions": {"type": "string"},
            "max_output_tokens": {"type": "integer", "minimum": 1}}},
        "Response": {**_OBJECT, "properties": {
            "id": {"type": "string"}, "object": {"const": "response"},
            "status": {"type": "string"}, "output": {"type": "array"},
            "usage": {"type": "object", "properties": {
                "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"}}}}},
        "EngineRequest": {**_OBJECT, "description": "Forwarded to the engine as sent. "
                          "`model` may be left out when exactly one model is served.",
                          "properties": {"model": {"type": "string"}}},
        "Engine": {**_OBJECT, "description": "The engine's answer, as vLLM sends it."},
        "Status": {**_OBJECT, "properties": {"status": {"type": "string"}}},
        "ApiKey": api_key,
        "NewApiKey": {**api_key, "properties": {**api_key["properties"], "key": {
            "type": "string", "description": "The key itself; never shown again"}}},
        "ApiKeyList": {"type": "object", "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("ApiKey")}}},
        "Policy": policy,
        "PolicyList": {"type": "object", "properties": {
            "object": {"const": "list"}, "alias": {"type": "string"},
            "data": {"type": "array", "items": _ref("Policy")}}},
        "Alias": {"type": "object", "properties": {
            "alias": {"type": "string"}, "policy": _ref("Policy"), "applied": _ref("Policy"),
            "versions": {"type": "object", "additionalProperties": {
                "type": "object", "properties": {
                    "model": {"type": "string"}, "adapter": {"type": ["string", "null"]},
                    "description": {"type": "string"}}}},
            "sticky": {"type": "boolean"},
            "fallback": {"type": "array", "items": {"type": "string"}}}},
        "Rollout": {"type": "object", "properties": {
            "alias": {"type": "string"}, "to": {"type": "string"}, "base": {"type": "string"},
            "steps": {"type": "array", "items": {"type": "number"}},
            "hold_s": {"type": "number"}, "state": {"type": "string", "description":
                "running, done, rolled_back, superseded, cancelled or failed"},
            "before": _ref("Policy"), "step": {"type": "integer"},
            "step_started_at": {"type": "number", "description": "epoch seconds: the "
                                "current step's hold began"},
            "owner": {"type": "string", "description": "the replica driving it (or that "
                      "drove it last): its process id, a dash, a random suffix"},
            "decisions": {"type": "array", "items": _ref("RolloutDecision")}}},
        "RolloutDecision": {"type": "object", "properties": {
            "at": {"type": "number", "description": "epoch seconds"},
            "step": {"type": "integer"}, "percent": {"type": "number"},
            "action": {"type": "string", "description": "step, promote, extend, breach, "
                       "rollback, resume, superseded, done, cancelled or failed"},
            "reason": {"type": "string"}, "new": _ref("VersionFigures"),
            "base": _ref("VersionFigures")}},
        "VersionFigures": {
            "type": "object", "description": "A version's requests over the step's hold so "
            "far, through every replica (empty on decisions made without figures)",
            "properties": {
                "requests": {"type": "integer"}, "errors": {"type": "integer"},
                "error_rate": {"type": "number"},
                "ttft_p50_s": {"type": ["number", "null"]},
                "ttft_p99_s": {"type": ["number", "null"]}}},
        "Adapter": {**_model_schema(AdapterSpec)["AdapterSpec"], "description": "A "
                    "registered adapter; source: config or api"},
        "AdapterList": {"type": "object", "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Adapter")}}},
        "Deleted": {"type": "object", "properties": {
            "name": {"type": "string"}, "deleted": {"type": "boolean"}}},
        "AliasList": {"type": "object", "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Alias")}}},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]},
                           "code": {"type": ["string", "integer", "null"]}}}}},
    }
    return schemas


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema and those it refers to, keyed by name."""
    schema = model.model_json_schema(ref_template=_REF)
    nested: dict[str, Any] = schema.pop("$defs", {})
    return {**nested, model.__name__: schema}
