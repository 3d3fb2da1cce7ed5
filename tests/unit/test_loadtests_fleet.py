"""loadtests.fleet and loadtests.real_engines: command lines, configs and environments
(no process is started here)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from loadtests.fleet import gateway_launch, sim_command, vllm_launch
from loadtests.launch import environment
from loadtests.real_engines import ENV, engine_spec, kv_bytes_per_token
from simulator.cli import main as sim_main
from simulator.config import SimConfig

SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "head_dim": 64, "hidden_size": 576}


def test_sim_command_spells_every_given_field_as_an_option() -> None:
    argv = sim_command(18101, {"model": "m", "decode_step_ms": 12, "prefix_caching": False,
                               "hang": True, "crash_after_tokens": None})
    assert argv[1:3] == ["-m", "simulator"]
    assert argv[argv.index("--port") + 1] == "18101"
    assert argv[argv.index("--model") + 1] == "m"
    assert argv[argv.index("--decode-step-ms") + 1] == "12"
    assert "--no-prefix-caching" in argv
    assert "--hang" in argv
    assert "--crash-after-tokens" not in argv


def test_every_sim_config_field_is_a_simulator_option() -> None:
    options = set(inspect.signature(sim_main).parameters)
    assert set(SimConfig.model_fields) <= options


def test_sim_command_validates_the_fields() -> None:
    with pytest.raises(ValidationError):
        sim_command(1, {"decode_step_msec": 12})
    with pytest.raises(ValidationError):  # one max-length request must fit in the KV cache
        sim_command(1, {"max_model_len": 4096, "kv_capacity_tokens": 1024})


def test_gateway_launch_writes_its_config_with_host_and_port(tmp_path: Path) -> None:
    settings = {"default_engine": False, "engines": [{"name": "a", "url": "http://x:1"}],
                "routing": {"default": {"strategy": "prefix"}}}
    launch = gateway_launch(settings, tmp_path, "gw-prefix")
    config = yaml.safe_load((tmp_path / "gw-prefix.yaml").read_text())
    assert config["host"] == "127.0.0.1"
    assert launch.url == f"http://127.0.0.1:{config['port']}"
    assert config["routing"] == {"default": {"strategy": "prefix"}}
    assert launch.argv[-2:] == ["--config", str(tmp_path / "gw-prefix.yaml")]
    assert launch.ready_path == "/ready"
    assert launch.log == tmp_path / "gw-prefix.log"


def test_gateway_launch_keeps_a_given_port(tmp_path: Path) -> None:
    assert gateway_launch({"port": 18000}, tmp_path).url == "http://127.0.0.1:18000"


def test_kv_bytes_per_token_of_smollm2_in_fp32() -> None:
    assert kv_bytes_per_token(SMOLLM2) == 2 * 30 * 3 * 64 * 4 == 46_080
    assert kv_bytes_per_token(SMOLLM2, "bfloat16") == 23_040
    no_head_dim = {k: v for k, v in SMOLLM2.items() if k != "head_dim"}
    assert kv_bytes_per_token(no_head_dim) == 46_080


def test_real_engine_is_sized_in_bytes_and_drops_the_gib_variable(tmp_path: Path) -> None:
    spec = engine_spec(4096, 2048, 8, 46_080)
    argv = spec.command()
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(4096 * 46_080)
    assert "--enable-lora" not in argv
    launch = vllm_launch(spec, tmp_path / "e.log", ENV)
    env = environment({"VLLM_CPU_KVCACHE_SPACE": "4", "PATH": "/bin"}, launch.env or {})
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["VLLM_SERVER_DEV_MODE"] == "1"
    assert launch.url == spec.url


def test_real_engine_must_hold_one_longest_request() -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        engine_spec(1024, 2048, 8, 46_080)
