"""Quantize a local Hugging Face model with llm-compressor, on the CPU, for vLLM.

Run this with the QUANTIZE virtualenv's python (``make quantize``: llmcompressor, torch,
transformers); it imports nothing from the project::

    .venv-quantize/bin/python engines/quantize.py --model DIR --scheme w8a8 --out DIR2

Schemes (both one-shot, calibrated on ``engines/data/calibration.jsonl``, packed into
rows of 512 tokens):

* ``w8a8``: int8 weights (per output channel) and int8 activations (per token, dynamic).
  SmoothQuant first moves activation outliers into the weights, then GPTQ rounds the
  weights layer by layer against the calibration activations; ``lm_head`` stays fp32.
* ``w4a16``: int4 weights in groups of 64 (GPTQ), activations left in 16 bits. The group
  is 64 because the default model's hidden size (576) is not a multiple of 128.

The checkpoint is saved compressed (compressed-tensors format: ``quantization_config`` in
``config.json``), which vLLM loads without a ``--quantization`` flag. It is written to
``<out>.tmp`` and renamed into place once complete, with a ``.sluice-ready`` marker and
``sluice-quantize.json`` (scheme, calibration samples, seconds) inside; an output that
already carries the marker is left alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

MARKER = ".sluice-ready"
RECORD = "sluice-quantize.json"
CALIBRATION = Path(__file__).with_name("data") / "calibration.jsonl"
SCHEMES = ("w8a8", "w4a16")
GROUP_SIZE = 64
SEQUENCE_LENGTH = 512
BATCH_SIZE = 8
SMOOTHING_STRENGTH = 0.8
SEED = 0

_START = time.monotonic()


def log(stage: str) -> None:
    """Print a progress line with the seconds elapsed since the script started."""
    print(f"[quantize {time.monotonic() - _START:7.1f}s] {stage}", flush=True)


def read_calibration(path: Path) -> list[dict[str, Any]]:
    """The calibration samples: one JSON object a line, ``{"text": ...}`` (plain text) or
    ``{"messages": [...]}`` (a chat, rendered with the model's chat template)."""
    samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for number, sample in enumerate(samples, 1):
        if not isinstance(sample.get("text"), str) and not isinstance(
                sample.get("messages"), list):
            raise SystemExit(f"{path}:{number}: neither 'text' nor 'messages'")
    return samples


def recipe(scheme: str) -> list[Any]:
    """llm-compressor modifiers for ``scheme``."""
    from llmcompressor.modifiers.quantization import GPTQModifier

    if scheme == "w8a8":
        from llmcompressor.modifiers.transform import SmoothQuantModifier

        return [SmoothQuantModifier(smoothing_strength=SMOOTHING_STRENGTH),
                GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])]
    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
               "group_size": GROUP_SIZE}
    return [GPTQModifier(ignore=["lm_head"], config_groups={
        "group_0": {"targets": ["Linear"], "weights": weights}})]


def pack(samples: list[dict[str, Any]], tokenizer: Any) -> Any:
    """A ``datasets.Dataset`` of ``SEQUENCE_LENGTH``-token rows: the samples' tokens one
    after another, each ending with the end-of-text token, cut into equal rows (the last,
    shorter one dropped). Equal rows batch without padding, and a few long rows calibrate
    several times faster on a CPU than many short ones, for the same tokens."""
    from datasets import Dataset
    from tqdm import tqdm

    stream: list[int] = []
    for sample in tqdm(samples, desc="tokenizing calibration samples", unit="sample"):
        text = sample["text"] if "text" in sample else tokenizer.apply_chat_template(
            sample["messages"], tokenize=False)
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        stream.append(tokenizer.eos_token_id)
    rows = [stream[start:start + SEQUENCE_LENGTH]
            for start in range(0, len(stream) - SEQUENCE_LENGTH + 1, SEQUENCE_LENGTH)]
    return Dataset.from_dict({"input_ids": rows,
                              "attention_mask": [[1] * SEQUENCE_LENGTH for _ in rows]})


def quantize(model_dir: Path, scheme: str, calibration: Path, tmp: Path) -> dict[str, Any]:
    """Quantize ``model_dir`` into ``tmp``; return what ``sluice-quantize.json`` records."""
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(SEED)
    log(f"loading {model_dir}")
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
    samples = read_calibration(calibration)
    dataset = pack(samples, tokenizer)
    tokens = len(dataset) * SEQUENCE_LENGTH
    log(f"calibrating {scheme} on {len(samples)} samples from {calibration}: {len(dataset)} "
        f"rows of {SEQUENCE_LENGTH} tokens")
    began = time.monotonic()
    oneshot(model=model, dataset=dataset, recipe=recipe(scheme),
            max_seq_length=SEQUENCE_LENGTH, num_calibration_samples=len(dataset),
            batch_size=BATCH_SIZE, shuffle_calibration_samples=False)
    seconds = round(time.monotonic() - began, 1)
    log(f"calibrated in {seconds} s; saving compressed")
    model.save_pretrained(tmp, save_compressed=True)
    tokenizer.save_pretrained(tmp)
    return {"scheme": scheme, "source": str(model_dir), "calibration": calibration.name,
            "calibration_samples": len(samples), "calibration_rows": len(dataset),
            "calibration_tokens": tokens,
            "calibration_seconds": seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, required=True, help="HF model directory to read")
    parser.add_argument("--scheme", choices=SCHEMES, required=True)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--calibration", type=Path, default=CALIBRATION,
                        help="JSON lines of {'text'} or {'messages'} samples")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Quantize once; return the process exit status."""
    args = parse_args(argv)
    model: Path = args.model.expanduser().resolve()
    out: Path = args.out.expanduser().resolve()
    if not (model / "config.json").is_file():
        raise SystemExit(f"{model} is not a Hugging Face model directory (no config.json)")
    if (out / MARKER).is_file():
        log(f"{out} is already quantized (found {MARKER}); nothing to do")
        return 0
    if out.exists():
        raise SystemExit(f"{out} exists without {MARKER}; remove it or choose another path")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        log(f"removing leftover {tmp}")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        record = quantize(model, args.scheme, args.calibration.resolve(), tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        (tmp / MARKER).write_text(f"written by {Path(__file__).name}\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
