"""How long the real vLLM CPU engine takes to load a small LoRA adapter: the load time the
LoRA placement benchmark (``loadtests/lora_bench.py``) gives its simulated engines.

    python -m loadtests.lora_load_time --out results/lora_load_time.json

Starts the real stack (``loadtests.stack``: the gateway and its managed engine, LoRA on),
makes a rank-8 ``peft`` adapter of the default model (``engines/prepare_model.py
--lora-seed``) unless it exists, then times the engine's own ``POST /v1/load_lora_adapter``
``--tries`` times, unloading it after each; the result is their median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtests.launch import ROOT
from loadtests.stack import CACHE, ENGINE_PYTHON, MODEL_DIR, real_stack

ADAPTER_SEED = 7
TRIES = 5
CONTROL_TIMEOUT_S = 120.0


def make_adapter(out: Path, seed: int) -> None:
    """A rank-8 adapter of the default model in ``out`` (left alone if already made)."""
    subprocess.run([str(ENGINE_PYTHON), str(ROOT / "engines" / "prepare_model.py"),
                    "--out", str(MODEL_DIR), "--lora-out", str(out), "--lora-seed", str(seed)],
                   check=True, timeout=600)


def time_loads(engine: str, adapter: Path, tries: int) -> list[float]:
    """Seconds each ``/v1/load_lora_adapter`` took; each load is unloaded before the next
    (a fresh name each time, so nothing the engine kept by name is reused)."""
    seconds = []
    with httpx.Client(base_url=engine, timeout=CONTROL_TIMEOUT_S) as http:
        for attempt in range(tries):
            name = f"load-time-{attempt}"
            started = time.perf_counter()
            loaded = http.post("/v1/load_lora_adapter",
                               json={"lora_name": name, "lora_path": str(adapter)})
            seconds.append(time.perf_counter() - started)
            loaded.raise_for_status()
            http.post("/v1/unload_lora_adapter", json={"lora_name": name}).raise_for_status()
    return seconds


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the platform's processor otherwise)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, default=CACHE / "adapters" / "sluice-load-time",
                        help="adapter directory (made with --seed when missing)")
    parser.add_argument("--seed", type=int, default=ADAPTER_SEED)
    parser.add_argument("--tries", type=int, default=TRIES)
    parser.add_argument("--out", type=Path, default=Path("results") / "lora_load_time.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    make_adapter(args.adapter, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with real_stack(args.out.with_suffix(".log")) as stack:
        seconds = time_loads(stack.engine, args.adapter, args.tries)
    result: dict[str, Any] = {
        "median_ms": round(statistics.median(seconds) * 1000, 1),
        "loads_ms": [round(s * 1000, 1) for s in seconds],
        "adapter": {"path": str(args.adapter), "rank": 8, "seed": args.seed},
        "date": datetime.now(UTC).date().isoformat(), "cpu": cpu_model(),
        "cpus": os.cpu_count(),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
