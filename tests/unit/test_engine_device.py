"""Managed engines on a GPU or on the CPU build: the argv and environment the supervisor
execs for each device, ``device: auto`` and the range checks."""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from engines.device import detect_device, device_of
from engines.spec import EngineSpec
from engines.supervisor import EngineProcess, redacted

ENGINE_VENV = Path(__file__).resolve().parents[2] / ".venv-engine" / "bin" / "python"


def spec(**fields: object) -> EngineSpec:
    return EngineSpec.model_validate({"model": "/m", "served_name": "x", **fields})


def test_cuda_defaults_fit_a_gpu() -> None:
    gpu = spec(device="cuda", tensor_parallel_size=2, env={"CUDA_VISIBLE_DEVICES": "2,3"})
    argv = gpu.command()
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--dtype"] == "auto"
    assert pairs["--tensor-parallel-size"] == "2"
    assert pairs["--gpu-memory-utilization"] == "0.9"
    env = gpu.environment()
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "CUDA_VISIBLE_DEVICES": "2,3"}


def test_cpu_defaults_are_the_cpu_builds() -> None:
    cpu = spec(device="cpu", kv_cache_gib=3)
    argv = cpu.command()
    assert dict(itertools.pairwise(argv))["--dtype"] == "float32"
    assert "--gpu-memory-utilization" not in argv
    assert "--tensor-parallel-size" not in argv
    assert cpu.environment()["VLLM_CPU_KVCACHE_SPACE"] == "3"


def test_explicit_settings_win_and_extra_args_come_last() -> None:
    gpu = spec(device="gpu", dtype="bfloat16", gpu_memory_utilization=0.5,
               extra_args=("--seed", "1"), env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "False"})
    assert gpu.device == "cuda"  # gpu: the same as cuda
    pairs = dict(itertools.pairwise(gpu.command()))
    assert (pairs["--dtype"], pairs["--gpu-memory-utilization"]) == ("bfloat16", "0.5")
    assert gpu.command()[-2:] == ["--seed", "1"]
    assert gpu.environment()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "False"


@pytest.mark.parametrize(("fields", "message"), [
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
    ({"gpu_memory_utilization": 1.2}, "gpu_memory_utilization"),
    ({"device": "tpu"}, "device"),
])
def test_out_of_range_settings_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


@pytest.mark.parametrize(("distributions", "nvidia", "device"), [
    ([("vllm-cpu", "0.32.0")], True, "cpu"),
    ([("vllm", "0.11.0+cpu")], True, "cpu"),
    ([("vllm", "0.11.0")], False, "cuda"),
    ([], True, "cuda"),
    ([], False, "cpu"),
])
def test_auto_follows_the_vllm_build(distributions: list[tuple[str, str]], nvidia: bool,
                                     device: str) -> None:
    assert device_of(distributions, nvidia) == device


def test_auto_resolves_with_the_detector() -> None:
    gpu = spec(python="/gpu/bin/python").resolved(lambda python: "cuda")
    assert (gpu.device, gpu.dtype) == ("cuda", "auto")
    cpu = spec(python="/cpu/bin/python").resolved(lambda python: "cpu")
    assert (cpu.device, cpu.dtype) == ("cpu", "float32")


@pytest.mark.skipif(not ENGINE_VENV.exists(), reason="no engine virtualenv (make engine)")
def test_the_real_engine_venv_is_the_cpu_build() -> None:
    assert detect_device(ENGINE_VENV) == "cpu"


def test_the_key_goes_to_the_engine_in_its_environment_never_on_its_command_line(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    key = "managed-secret-93c1"
    engine = EngineProcess("e0", spec(device="cuda"), tmp_path / "e.log",
                           api_key=SecretStr(key))
    env = engine.process_environment()
    assert env["VLLM_API_KEY"] == key
    assert env["PATH"] == os.environ["PATH"]
    assert key not in " ".join(engine.spec.command())
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("%s", redacted(["--api-key", key, f"--api-key={key}"]))
    assert key not in caplog.text
