import itertools
from pathlib import Path

import pytest
from pydantic import ValidationError

from engines.spec import EngineSpec


def test_command_line_carries_every_setting() -> None:
    spec = EngineSpec(model=Path("/m"), served_name="smollm2", port=8123, device="cpu",
                      python=Path("/venv/bin/python"), max_model_len=1024, max_loras=3,
                      quantization="compressed-tensors", extra_args=("--seed", "1"))
    argv = spec.command()
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--model"] == "/m"
    assert pairs["--served-model-name"] == "smollm2"
    assert pairs["--port"] == "8123"
    assert pairs["--dtype"] == "float32"
    assert pairs["--max-model-len"] == "1024"
    assert pairs["--max-loras"] == "3"
    assert pairs["--quantization"] == "compressed-tensors"
    assert "--enable-prefix-caching" in argv
    assert "--enable-lora" in argv
    assert argv[-2:] == ["--seed", "1"]
    assert spec.url == "http://127.0.0.1:8123"


def test_lora_and_prefix_caching_can_be_turned_off() -> None:
    spec = EngineSpec(model=Path("/m"), served_name="x", enable_lora=False,
                      prefix_caching=False)
    argv = spec.command()
    assert "--enable-lora" not in argv
    assert "--no-enable-prefix-caching" in argv
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in spec.environment()


def test_environment_sets_kv_space_and_runtime_lora() -> None:
    env = EngineSpec(model=Path("/m"), served_name="x", kv_cache_gib=3,
                     device="cpu").environment()
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def test_fractional_kv_space_is_refused_up_front() -> None:
    # vLLM 0.32 parses VLLM_CPU_KVCACHE_SPACE with int(): "1.5" would fail at engine start.
    with pytest.raises(ValidationError, match="kv_cache_gib"):
        EngineSpec(model=Path("/m"), served_name="x", kv_cache_gib=1.5)
