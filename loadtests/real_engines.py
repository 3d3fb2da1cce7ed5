"""Real vLLM CPU engines for fleet benchmarks: small, exactly sized KV caches, prefix caches
that can be reset between runs, and a warm-up request each.

The engines run the default model (``make model``) from ``.venv-engine`` (``make engine``),
started from ``EngineSpec`` as the gateway's managed engines are, with two differences:

* the KV cache is sized in bytes (``--kv-cache-memory-bytes``) instead of whole GiB
  (``VLLM_CPU_KVCACHE_SPACE``, which vLLM 0.32 parses as an integer and which would
  override the flag, so it is removed from their environment);
* ``VLLM_SERVER_DEV_MODE=1`` enables ``POST /reset_prefix_cache``, so every strategy
  starts with cold caches without a minute-long restart.

``--block-size 32`` (vLLM's CPU default is 128) makes prefix hits as fine-grained as a
GPU's, and LoRA is off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from engines.spec import EngineSpec
from loadtests.fleet import vllm_launch
from loadtests.launch import Launch, free_port
from loadtests.stack import ENGINE_PYTHON, MODEL_DIR, SERVED_NAME

BLOCK_SIZE = 32
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ENV: dict[str, str | None] = {"VLLM_CPU_KVCACHE_SPACE": None, "VLLM_SERVER_DEV_MODE": "1"}
CONTROL_TIMEOUT_S = 30.0
WARM_UP_TIMEOUT_S = 300.0


class RealEngineError(RuntimeError):
    """The engine environment or model is missing, or an engine refused a control call."""


@dataclass(frozen=True)
class RealEngines:
    """Launches of the fleet's engines, then (optionally) the unbounded baseline engine."""

    launches: list[Launch]
    model: str


def kv_bytes_per_token(config: Mapping[str, Any], dtype: str = "float32") -> int:
    """KV cache bytes one token takes: keys and values of every layer's KV heads.

    ``config`` is the model's ``config.json`` (Llama-style field names).
    """
    layers = int(config["num_hidden_layers"])
    heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    return 2 * layers * heads * head_dim * DTYPE_BYTES[dtype]


def engine_spec(kv_tokens: int, max_model_len: int, max_num_seqs: int,
                bytes_per_token: int) -> EngineSpec:
    """The default model on a free port with a KV cache of ``kv_tokens`` tokens."""
    if kv_tokens < max_model_len:
        raise ValueError(f"a KV cache of {kv_tokens} tokens cannot hold one request of "
                         f"max_model_len={max_model_len}")
    return EngineSpec(
        model=MODEL_DIR, served_name=SERVED_NAME, python=ENGINE_PYTHON, port=free_port(),
        max_model_len=max_model_len, max_num_seqs=max_num_seqs, enable_lora=False,
        extra_args=("--kv-cache-memory-bytes", str(kv_tokens * bytes_per_token),
                    "--block-size", str(BLOCK_SIZE)),
    )  # fmt: skip


def real_launches(count: int, kv_tokens: int, *, max_model_len: int, max_num_seqs: int,
                  baseline_kv_tokens: int | None, log_dir: Path) -> RealEngines:
    """``count`` engines of ``kv_tokens`` each, plus one of ``baseline_kv_tokens`` if given."""
    if not ENGINE_PYTHON.exists() or not (MODEL_DIR / "config.json").exists():
        raise RealEngineError(f"needs {ENGINE_PYTHON} (make engine) and {MODEL_DIR} "
                              "(make model)")
    per_token = kv_bytes_per_token(json.loads((MODEL_DIR / "config.json").read_text()))
    sizes = [kv_tokens] * count + ([] if baseline_kv_tokens is None else [baseline_kv_tokens])
    launches = [
        vllm_launch(engine_spec(size, max_model_len, max_num_seqs, per_token),
                    log_dir / f"vllm-{i}.log", ENV)
        for i, size in enumerate(sizes)
    ]
    return RealEngines(launches, SERVED_NAME)


async def reset_prefix_caches(urls: Sequence[str]) -> None:
    """Empty every engine's prefix cache (needs ``VLLM_SERVER_DEV_MODE=1``)."""
    timeout = aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for url in urls:
            async with http.post(url + "/reset_prefix_cache") as response:
                if response.status != 200:
                    raise RealEngineError(f"{url}/reset_prefix_cache answered "
                                          f"{response.status}: {await response.text()}")


async def warm_up(urls: Sequence[str], model: str) -> None:
    """One short chat completion per engine, so no run pays an engine's first request."""
    body = {"model": model, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}]}
    timeout = aiohttp.ClientTimeout(total=WARM_UP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for url in urls:
            async with http.post(url + "/v1/chat/completions", json=body) as response:
                if response.status != 200:
                    raise RealEngineError(f"warm-up of {url} answered {response.status}: "
                                          f"{await response.text()}")
