"""The simulator's aiohttp app: vLLM's OpenAI-compatible routes over one `SimEngine`.

Run it with `handler_cancellation=True` on the runner (as `SimServer` and the CLI do) so a
client that disconnects while its request waits or hangs is aborted at once; a disconnect
during a write is caught either way.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from simulator.config import FaultSettings, SimConfig
from simulator.engine import RequestState, SimEngine, SimRequest
from simulator.metrics import SimMetrics
from simulator.protocol import (
    ChunkEncoder,
    GenerationRequest,
    SimError,
    error_body,
    parse_chat,
    parse_completion,
    response_body,
)
from simulator.realtime import add_realtime
from simulator.responses import ResponsesEncoder, parse_responses
from simulator.responses import response_body as responses_body
from simulator.streaming import Encoder, SseStream
from simulator.tokens import Vocabulary, detokenize, embeddings, tokenize

logger = logging.getLogger("simulator")

Parser = Callable[[object, SimConfig, dict[str, str]], GenerationRequest]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class WireFormat:
    """How one generation endpoint writes its answer: id prefix, stream, whole body."""

    prefix: str
    encoder: Callable[[GenerationRequest, str, int], Encoder]
    body: Callable[[GenerationRequest, str, int], bytes]


CHAT_FORMAT = WireFormat("chatcmpl-", ChunkEncoder, response_body)
COMPLETION_FORMAT = WireFormat("cmpl-", ChunkEncoder, response_body)
RESPONSES_FORMAT = WireFormat("resp_", ResponsesEncoder, responses_body)


def exit_process() -> None:
    """The default crash: die like a killed engine, without cleanup."""
    sys.stderr.flush()
    os._exit(1)


@dataclass(eq=False)
class SimState:
    """Everything one simulator app owns; stored in the app under `SIM_STATE`."""

    config: SimConfig
    engine: SimEngine
    on_crash: Callable[[], None]
    loras: dict[str, str] = field(default_factory=dict)
    lora_calls: Counter[str] = field(default_factory=Counter)
    """`GET /sim/lora`: loads, unloads, and the calls a gateway should never make:
    `already_loaded` (a load of an adapter held), `unloaded_busy` (an unload of one with
    requests running or waiting)."""
    vocabulary: Vocabulary = field(default_factory=Vocabulary)
    created: int = field(default_factory=lambda: int(time.time()))
    crashed: bool = False
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)

    def crash(self) -> None:
        """Simulate the engine process dying (`crash_after_tokens`)."""
        if self.crashed:
            return
        self.crashed = True
        logger.warning("simulated crash after %d tokens", self.engine.tokens_delivered)
        self.engine.abort_all()
        self.on_crash()


SIM_STATE = web.AppKey("sim_state", SimState)


def create_sim_app(
    config: SimConfig, *, on_crash: Callable[[], None] | None = None
) -> web.Application:
    """Build a simulator app; its engine loop runs between app startup and cleanup.

    `on_crash` is what `crash_after_tokens` does once reached: by default the process
    exits with status 1 (`os._exit`); in-process servers pass a hook that drops the
    listener and every connection instead (see `SimServer`).
    """
    app = web.Application(client_max_size=64 * 1024 * 1024,
                          middlewares=[_count, _errors, _authenticate])
    engine = SimEngine(config, SimMetrics(config.model, config.max_loras))
    app[SIM_STATE] = SimState(config, engine, on_crash or exit_process)
    app.cleanup_ctx.append(_engine_task)
    app.on_shutdown.append(_abort_all)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/embeddings", create_embeddings)
    app.router.add_post("/tokenize", tokenize_prompt)
    app.router.add_post("/detokenize", detokenize_tokens)
    app.router.add_get("/version", version)
    app.router.add_post("/v1/load_lora_adapter", load_lora_adapter)
    app.router.add_post("/v1/unload_lora_adapter", unload_lora_adapter)
    app.router.add_get("/sim/faults", get_faults)
    app.router.add_get("/sim/lora", lora_calls)
    add_realtime(app, config.model, engine.metrics.registry)
    app.router.add_post("/sim/faults", set_faults)
    return app


UNCOUNTED = frozenset({"/metrics", "/health", "/version"})
"""Routes vLLM's HTTP instrumentation leaves out of ``http_requests_total``."""


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each answered request in ``http_requests_total{method,status,handler}``, as
    vLLM's instrumentation does (the route's path; ``none`` for a path it does not have)."""
    response = await handler(request)
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else "none"
    if path not in UNCOUNTED:
        request.app[SIM_STATE].engine.metrics.http_requests.labels(
            request.method, f"{response.status // 100}xx", path).inc()
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SimError as exc:
        return web.Response(body=exc.body(), status=exc.status, content_type="application/json")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # As vLLM (FastAPI) answers an unknown path or method: reason phrase as message.
        return web.Response(body=error_body(exc.status, exc.reason, exc.reason),
                            status=exc.status, content_type="application/json")


GUARDED_PREFIX = ("/v1", "/v2", "/inference", "/cohere")
"""Paths vLLM's ``--api-key`` guards (/health, /metrics, /version stay open)."""


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """vLLM's ``AuthenticationMiddleware``: a guarded path needs the Bearer key."""
    key = request.app[SIM_STATE].config.api_key
    if key is not None and request.method != "OPTIONS" \
            and request.path.startswith(GUARDED_PREFIX):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
            return web.json_response({"error": "Unauthorized"}, status=401)
    return await handler(request)


async def _engine_task(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[SIM_STATE].engine.run(), name="sim-engine")
    task.add_done_callback(_engine_stopped)
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def _engine_stopped(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("simulator engine loop died", exc_info=task.exception())


async def _abort_all(app: web.Application) -> None:
    app[SIM_STATE].engine.abort_all()


async def health(request: web.Request) -> web.Response:
    """`GET /health`: 200, empty body."""
    return web.Response()


async def list_models(request: web.Request) -> web.Response:
    """`GET /v1/models`: the base model and every loaded LoRA adapter."""
    state = request.app[SIM_STATE]
    config = state.config
    cards = [_card(state, config.model, config.model, None, config.max_model_len)]
    cards += [_card(state, name, path, config.model, None) for name, path in state.loras.items()]
    return _json({"object": "list", "data": cards})


def _card(
    state: SimState, name: str, root: str, parent: str | None, max_model_len: int | None
) -> dict[str, object]:
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
        "created": state.created, "allow_create_engine": False, "allow_sampling": True,
        "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
        "allow_fine_tuning": False, "organization": "*", "group": None, "is_blocking": False,
    }  # fmt: skip
    return {
        "id": name, "object": "model", "created": state.created, "owned_by": "vllm",
        "root": root, "parent": parent, "max_model_len": max_model_len,
        "permission": [permission],
    }  # fmt: skip


async def metrics(request: web.Request) -> web.Response:
    """`GET /metrics`: Prometheus text with vLLM's metric names."""
    state = request.app[SIM_STATE]
    body = state.engine.metrics.render(state.engine.scheduler)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def load_lora_adapter(request: web.Request) -> web.Response:
    """`POST /v1/load_lora_adapter` {"lora_name", "lora_path"[, "load_inplace"]}.

    As vLLM: 400 when a name or path is missing or the name is taken (unless
    `load_inplace`). Unlike vLLM, which accepts any number and swaps them through a CPU
    cache, the simulator holds at most `max_loras` adapters and answers 400 past that.
    """
    state = request.app[SIM_STATE]
    body = await _read_json(request)
    name, path = body.get("lora_name"), body.get("lora_path")
    if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
        raise _invalid("Both 'lora_name' and 'lora_path' must be provided.")
    if name in state.loras and not body.get("load_inplace"):
        state.lora_calls["already_loaded"] += 1
        raise _invalid(
            f"The lora adapter '{name}' has already been loaded. If you want to load the "
            "adapter in place, set 'load_inplace' to True."
        )
    if name not in state.loras and len(state.loras) >= state.config.max_loras:
        raise _invalid(
            f"Cannot load LoRA adapter '{name}': max_loras={state.config.max_loras} adapters "
            "are loaded; unload one first."
        )
    if state.config.lora_load_ms:
        await asyncio.sleep(state.config.lora_load_ms / 1000)
    state.loras[name] = path
    state.lora_calls["loads"] += 1
    logger.info("loaded LoRA adapter %r from %r", name, path)
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora_adapter(request: web.Request) -> web.Response:
    """`POST /v1/unload_lora_adapter` {"lora_name"}: 404 if it is not loaded."""
    state = request.app[SIM_STATE]
    name = (await _read_json(request)).get("lora_name")
    if not isinstance(name, str) or not name:
        raise _invalid("'lora_name' needs to be provided to unload a LoRA adapter.")
    if state.loras.pop(name, None) is None:
        raise SimError(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
    scheduler = state.engine.scheduler
    if any(r.lora == name for r in (*scheduler.running, *scheduler.waiting)):
        state.lora_calls["unloaded_busy"] += 1
    state.lora_calls["unloads"] += 1
    logger.info("unloaded LoRA adapter %r", name)
    return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


async def lora_calls(request: web.Request) -> web.Response:
    """`GET /sim/lora`: the adapters held, and the load and unload calls so far."""
    state = request.app[SIM_STATE]
    return _json({"loaded": sorted(state.loras), **state.lora_calls})


async def get_faults(request: web.Request) -> web.Response:
    """`GET /sim/faults`: the current fault settings, plus `tokens_delivered` so far."""
    return _faults(request.app[SIM_STATE].engine)


async def set_faults(request: web.Request) -> web.Response:
    """`POST /sim/faults`: change any subset of the fault settings at runtime."""
    engine = request.app[SIM_STATE].engine
    update = await _read_json(request)
    try:
        faults = FaultSettings.model_validate(engine.faults.model_dump() | update)
    except ValidationError as exc:
        raise SimError(400, "BadRequestError", str(exc)) from exc
    engine.set_faults(faults)
    logger.info("faults set to %s", faults.model_dump())
    return _faults(engine)


def _faults(engine: SimEngine) -> web.Response:
    return _json(engine.faults.model_dump() | {"tokens_delivered": engine.tokens_delivered})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """`POST /v1/chat/completions`, streamed or not."""
    return await _generate(request, parse_chat, CHAT_FORMAT)


async def completions(request: web.Request) -> web.StreamResponse:
    """`POST /v1/completions`, streamed or not."""
    return await _generate(request, parse_completion, COMPLETION_FORMAT)


async def responses(request: web.Request) -> web.StreamResponse:
    """`POST /v1/responses`, streamed (named events) or not (see `simulator.responses`)."""
    return await _generate(request, parse_responses, RESPONSES_FORMAT)


async def create_embeddings(request: web.Request) -> web.Response:
    """`POST /v1/embeddings`: deterministic unit vectors (see `simulator.tokens`)."""
    state, body = await _model_request(request)
    model = str(body.get("model") or state.config.model)
    return _raw_json(embeddings(body, model, state.config.seed,
                                "embd-" + uuid.uuid4().hex, int(time.time())))


async def tokenize_prompt(request: web.Request) -> web.Response:
    """`POST /tokenize`: word-level tokens of a `prompt` or `messages`."""
    state, body = await _model_request(request)
    return _raw_json(tokenize(body, state.vocabulary, state.config.max_model_len))


async def detokenize_tokens(request: web.Request) -> web.Response:
    """`POST /detokenize`: the words of `tokens`."""
    state, body = await _model_request(request)
    return _raw_json(detokenize(body, state.vocabulary))


async def version(request: web.Request) -> web.Response:
    """`GET /version`, as vLLM answers it."""
    return _json({"version": "0.0.0+simulator"})


async def _model_request(request: web.Request) -> tuple[SimState, dict[str, object]]:
    """The state and body of a request whose `model`, if given, must be served."""
    state = request.app[SIM_STATE]
    body = await _read_json(request)
    model = body.get("model")
    if model is not None and model != state.config.model and model not in state.loras:
        raise SimError(404, "NotFoundError", f"The model `{model}` does not exist.", "model")
    return state, body


async def _generate(request: web.Request, parse: Parser,
                    wire: WireFormat) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    generation = parse(await _read_json(request), state.config, state.loras)
    error_rate = state.engine.faults.error_rate
    if error_rate and state.rng.random() < error_rate:
        raise SimError(500, "InternalServerError", "Simulated engine failure (error_rate).")
    sim_request = state.engine.submit(
        generation.prompt_tokens,
        generation.max_tokens,
        generation.block_hashes,
        generation.lora,
        generation.finish_reason,
        stream=generation.stream,
    )
    request_id = wire.prefix + uuid.uuid4().hex
    try:
        if generation.stream:
            encoder = wire.encoder(generation, request_id, int(time.time()))
            stream = SseStream(state.engine, generation, sim_request, encoder)
            return await stream.serve(request, state.crash)
        return await _respond(state, generation, sim_request, request_id, wire)
    finally:
        state.engine.release(sim_request)


async def _respond(
    state: SimState,
    generation: GenerationRequest,
    sim_request: SimRequest,
    request_id: str,
    wire: WireFormat,
) -> web.Response:
    event = sim_request.event
    while not sim_request.done:
        await event.wait()
        event.clear()
    if sim_request.state is RequestState.ABORTED:
        raise SimError(503, "ServiceUnavailableError", "The engine is shutting down.")
    engine = state.engine
    crash_at = engine.faults.crash_after_tokens
    if crash_at is not None and engine.tokens_delivered + sim_request.produced >= crash_at:
        state.crash()
        return web.Response(status=500)  # never sent: the connection is gone
    engine.tokens_delivered += sim_request.produced
    return web.Response(
        body=wire.body(generation, request_id, int(time.time())),
        content_type="application/json",
    )


async def _read_json(request: web.Request) -> dict[str, object]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise SimError(400, "BadRequestError", f"Invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise SimError(400, "BadRequestError", "request body must be a JSON object")
    return body


def _raw_json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _invalid(message: str) -> SimError:
    return SimError(400, "InvalidUserInput", message)
