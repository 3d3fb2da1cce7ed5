"""The simulator's one typed configuration object.

`SimConfig` is frozen: it describes an engine as started. The fault fields
(`error_rate`, `crash_after_tokens`, `hang`, `slow_token_ms`) are the initial values of the
engine's runtime faults, which `POST /sim/faults` may change later (see `FaultSettings`).
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FaultSettings(BaseModel):
    """Fault injection knobs; also the body of `POST /sim/faults` (any subset of fields)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    error_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Probability that a generation request is answered 500 before any byte is streamed."""
    crash_after_tokens: Annotated[int | None, Field(ge=0)] = None
    """The engine dies right after its N-th token written since start (all requests;
    `GET /sim/faults` shows `tokens_delivered`). The request carrying it never finishes."""
    hang: bool = False
    """Accept requests (streams get their headers) but never emit a token."""
    slow_token_ms: Annotated[float, Field(ge=0.0)] = 0.0
    """Extra delay added to every engine step, i.e. to every token of every request."""


class SimConfig(BaseModel):
    """Everything that shapes one simulated vLLM engine.

    Time model: a step takes `decode_step_ms * slowdown(batch)` plus, when the step admits new
    requests, `prefill_base_ms + prefill_per_token_ms * uncached_prompt_tokens`, plus the
    `slow_token_ms` fault. `slowdown` grows linearly from 1 (empty batch) to
    `decode_slowdown_at_max_batch` at `max_num_seqs`. Every running request gets one token
    per step.

    Requests without `max_tokens` generate `min(default_max_tokens, max_model_len -
    prompt_tokens)` tokens. vLLM itself would use the whole remaining context; the cap keeps
    unbounded requests cheap. Ending at `default_max_tokens` reports `finish_reason: "stop"`
    (the simulated model emitted EOS); ending at `max_tokens` or the context reports
    `"length"`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model: Annotated[str, Field(min_length=1)] = "sim-model"
    """Served model name: `/v1/models` id and the `model_name` metric label."""
    max_model_len: Annotated[int, Field(ge=2)] = 2048
    """Context length: prompt + max_tokens beyond it is a 400."""

    prefill_base_ms: Annotated[float, Field(ge=0.0)] = 20.0
    """Fixed cost of a step that admits (prefills) new requests."""
    prefill_per_token_ms: Annotated[float, Field(ge=0.0)] = 0.0
    """Cost per prompt token that the prefix cache did not cover."""
    decode_step_ms: Annotated[float, Field(ge=0.0)] = 10.0
    """Time per step (one token for every running request) at batch size ~1."""
    decode_slowdown_at_max_batch: Annotated[float, Field(ge=1.0)] = 1.0
    """Step time multiplier at `max_num_seqs` running (1.0: batch size costs nothing)."""
    max_num_seqs: Annotated[int, Field(ge=1)] = 256
    """Most requests running at once; the rest wait (FIFO)."""

    kv_capacity_tokens: Annotated[int, Field(ge=1)] = 1_000_000
    """KV cache size; running requests' prompt + generated tokens must fit in it."""
    block_size: Annotated[int, Field(ge=1)] = 16
    """Tokens per KV block (allocation and prefix-cache granularity)."""
    prefix_caching: bool = True
    """Reuse cached prompt blocks (an LRU of block hashes as large as the KV cache)."""
    default_max_tokens: Annotated[int, Field(ge=1)] = 256
    """Tokens generated when a request gives no max_tokens (then `finish_reason: stop`)."""

    error_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Share of generation requests answered 500 up front (runtime: POST /sim/faults)."""
    crash_after_tokens: Annotated[int | None, Field(ge=0)] = None
    """Die (exit 1) right after the N-th token written since start (runtime: /sim/faults)."""
    hang: bool = False
    """Accept requests but emit no token (runtime: POST /sim/faults)."""
    slow_token_ms: Annotated[float, Field(ge=0.0)] = 0.0
    """Extra delay per engine step, i.e. per token (runtime: POST /sim/faults)."""
    seed: int = 0
    """Seeds the generated text and the error_rate draws."""

    max_loras: Annotated[int, Field(ge=0)] = 4
    """Most LoRA adapters loaded at once (0 disables `vllm:lora_requests_info`)."""
    lora_load_ms: Annotated[float, Field(ge=0.0)] = 0.0
    """How long `/v1/load_lora_adapter` takes (a real engine reads and prepares weights)."""

    api_key: str | None = None
    """As vLLM's `--api-key`: requests to `/v1/...` paths (WebSockets too) without
    `Authorization: Bearer <key>` are answered 401 `{"error": "Unauthorized"}`."""

    @property
    def kv_capacity_blocks(self) -> int:
        """KV cache size in whole blocks."""
        return self.kv_capacity_tokens // self.block_size

    @model_validator(mode="after")
    def _one_request_fits(self) -> Self:
        # vLLM refuses to start when one max-length request cannot fit in the KV cache; the
        # same rule guarantees the scheduler can always run the head of the queue alone.
        needed = -(-self.max_model_len // self.block_size)
        if needed > self.kv_capacity_blocks:
            raise ValueError(
                f"kv_capacity_tokens={self.kv_capacity_tokens} holds {self.kv_capacity_blocks}"
                f" blocks of {self.block_size}; one max_model_len={self.max_model_len}"
                f" request needs {needed}"
            )
        return self

    def initial_faults(self) -> FaultSettings:
        """The runtime fault settings this engine starts with."""
        return FaultSettings(
            error_rate=self.error_rate,
            crash_after_tokens=self.crash_after_tokens,
            hang=self.hang,
            slow_token_ms=self.slow_token_ms,
        )
