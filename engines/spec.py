"""Typed description of a managed vLLM engine and its command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineSpec(BaseModel):
    """Everything needed to start one vLLM OpenAI server process.

    ``python`` is the interpreter of the engine's own virtualenv: the gateway never
    imports vllm, it starts ``python -m vllm.entrypoints.openai.api_server``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Path = Field(description="--model: the model directory vLLM serves")
    served_name: str = Field(
        description="--served-model-name: the model name the engine lists in /v1/models "
                    "and clients send")
    host: str = Field(
        default="127.0.0.1",
        description="--host: where the engine listens, and where the gateway reaches it")
    port: int = Field(default=8100, ge=1, le=65535,
                      description="--port; give each managed engine its own")
    python: Path = Field(
        default=Path(sys.executable),
        description="the Python of a virtualenv with vLLM (e.g. .venv-engine/bin/python); "
                    "the default, the gateway's own interpreter, normally has no vLLM")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="--dtype of weights and activations; auto: the model's own")
    max_model_len: int = Field(
        default=2048, ge=16,
        description="--max-model-len: prompt plus output tokens of one request, at most")
    kv_cache_gib: int = Field(
        default=2, ge=1, description="whole GiB: vLLM reads VLLM_CPU_KVCACHE_SPACE as an int")
    max_num_seqs: int = Field(
        default=64, ge=1,
        description="--max-num-seqs: requests the engine runs at once; more wait in its "
                    "queue")
    enable_lora: bool = Field(
        default=True,
        description="--enable-lora, with LoRA adapters loadable at run time "
                    "(VLLM_ALLOW_RUNTIME_LORA_UPDATING)")
    max_loras: int = Field(default=2, ge=1,
                           description="--max-loras: adapters in one batch (with enable_lora)")
    max_lora_rank: int = Field(
        default=8, ge=1,
        description="--max-lora-rank: the largest adapter rank it loads (with enable_lora)")
    quantization: str | None = Field(
        default=None,
        description="--quantization method (compressed-tensors, awq, gptq, ...); null: not "
                    "passed, vLLM reads it from the checkpoint's config.json (sluice "
                    "quantize writes compressed-tensors checkpoints, which need no flag)")
    device: Literal["cpu", "gpu"] = Field(
        default="cpu",
        description="what runs the model: cpu (vllm-cpu; a checkpoint whose kernels need a "
                    "CPU feature this host lacks or another dtype, such as W4A16's avx512f "
                    "and bfloat16, is refused before the engine starts) or gpu (the "
                    "official vllm wheel; not checked). Not passed to vLLM")
    prefix_caching: bool = Field(
        default=True,
        description="--enable-prefix-caching, or --no-enable-prefix-caching when false "
                    "(prefix routing then gains nothing on this engine)")
    extra_args: tuple[str, ...] = Field(
        default=(), description="more vLLM arguments, appended to the command line as "
                                "they are")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The argv that starts this engine."""
        argv = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
        ]
        argv.append("--enable-prefix-caching" if self.prefix_caching
                    else "--no-enable-prefix-caching")
        if self.enable_lora:
            argv += ["--enable-lora", "--max-loras", str(self.max_loras),
                     "--max-lora-rank", str(self.max_lora_rank)]
        if self.quantization:
            argv += ["--quantization", self.quantization]
        argv += list(self.extra_args)
        return argv

    def environment(self) -> dict[str, str]:
        """Variables the engine needs on top of the inherited environment."""
        env = {"VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib)}
        if self.enable_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        return env
