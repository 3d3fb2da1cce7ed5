"""``sluice-sim`` (or ``python -m simulator``): serve one simulated vLLM engine.

Every `SimConfig` field is an option (`--decode-step-ms 5`) or a key of the YAML file given
with `--config`; options given on the command line win over the file.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
import uvloop
import yaml
from pydantic import ValidationError

from simulator.config import SimConfig
from simulator.runner import serve

app = typer.Typer(add_completion=False, help=__doc__)


def _doc(name: str) -> str | None:
    """The docstring of a SimConfig field (the single source of the option's help)."""
    return SimConfig.model_fields[name].description


def _field(name: str, **limits: Any) -> Any:
    """A typer option documented by the SimConfig field of the same name."""
    return typer.Option(help=_doc(name), **limits)


@app.command()
def main(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind (0: any free port).")] = 8100,
    config: Annotated[Path | None, typer.Option(help="YAML file of SimConfig fields.")] = None,
    log_level: Annotated[str, typer.Option(help="Python logging level.")] = "INFO",
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    model: Annotated[str | None, _field("model")] = None,
    max_model_len: Annotated[int | None, _field("max_model_len", min=2)] = None,
    prefill_base_ms: Annotated[float | None, _field("prefill_base_ms", min=0.0)] = None,
    prefill_per_token_ms: Annotated[float | None, _field("prefill_per_token_ms", min=0.0)] = None,
    decode_step_ms: Annotated[float | None, _field("decode_step_ms", min=0.0)] = None,
    decode_slowdown_at_max_batch: Annotated[
        float | None, _field("decode_slowdown_at_max_batch", min=1.0)
    ] = None,
    max_num_seqs: Annotated[int | None, _field("max_num_seqs", min=1)] = None,
    kv_capacity_tokens: Annotated[int | None, _field("kv_capacity_tokens", min=1)] = None,
    block_size: Annotated[int | None, _field("block_size", min=1)] = None,
    prefix_caching: Annotated[
        bool | None,
        typer.Option("--prefix-caching/--no-prefix-caching", help=_doc("prefix_caching")),
    ] = None,
    default_max_tokens: Annotated[int | None, _field("default_max_tokens", min=1)] = None,
    error_rate: Annotated[float | None, _field("error_rate", min=0.0, max=1.0)] = None,
    crash_after_tokens: Annotated[int | None, _field("crash_after_tokens", min=0)] = None,
    hang: Annotated[bool | None, typer.Option("--hang/--no-hang", help=_doc("hang"))] = None,
    slow_token_ms: Annotated[float | None, _field("slow_token_ms", min=0.0)] = None,
    seed: Annotated[int | None, _field("seed")] = None,
    max_loras: Annotated[int | None, _field("max_loras", min=0)] = None,
    lora_load_ms: Annotated[float | None, _field("lora_load_ms", min=0.0)] = None,
    api_key: Annotated[str | None, _field("api_key")] = None,
) -> None:
    """Serve a vLLM-compatible simulated engine until interrupted."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options: dict[str, Any] = {
        "model": model, "max_model_len": max_model_len, "prefill_base_ms": prefill_base_ms,
        "prefill_per_token_ms": prefill_per_token_ms, "decode_step_ms": decode_step_ms,
        "decode_slowdown_at_max_batch": decode_slowdown_at_max_batch,
        "max_num_seqs": max_num_seqs, "kv_capacity_tokens": kv_capacity_tokens,
        "block_size": block_size, "prefix_caching": prefix_caching,
        "default_max_tokens": default_max_tokens, "error_rate": error_rate,
        "crash_after_tokens": crash_after_tokens, "hang": hang, "slow_token_ms": slow_token_ms,
        "seed": seed, "max_loras": max_loras, "lora_load_ms": lora_load_ms,
        "api_key": api_key,
    }  # fmt: skip
    fields: dict[str, Any] = {}
    if config is not None:
        loaded = yaml.safe_load(config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise typer.BadParameter("the YAML file must hold a mapping", param_hint="--config")
        fields.update(loaded)
    fields.update({name: value for name, value in options.items() if value is not None})
    try:
        sim_config = SimConfig.model_validate(fields)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(sim_config, host, port, access_log=access_log))
