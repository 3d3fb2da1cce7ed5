"""``sluice-bench``: run scenarios, sweeps and side-by-side comparisons; compare results.

    sluice-bench run loadtests/scenarios/sim_smoke.yaml --target sim=http://127.0.0.1:8100
    sluice-bench run loadtests/scenarios/real_sweep.yaml --stack       # starts make run's stack
    sluice-bench compare results/a/result.json results/b/result.json

``sluice bench ...`` and ``python -m loadtests ...`` are the same command. It needs the
``bench`` extra (``pip install 'sluice[bench]'``); without it, it says so in one line and
exits 2.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from rich.console import Console

if TYPE_CHECKING:  # the harness (numpy, aiohttp) loads only when a bench command runs
    from loadtests.metrics import Slo
    from loadtests.records import RunResult
    from loadtests.runner import Scenario

BENCH_MODULES = ("numpy", "matplotlib", "httpx")
"""What the ``bench`` extra brings that a plain install lacks."""

app = typer.Typer(help="Load tests: TTFT, ITL, TPOT, throughput and goodput.",
                  no_args_is_help=True, add_completion=False)
console = Console(soft_wrap=True)


def parse_targets(targets: list[str]) -> list[tuple[str, str]]:
    """``name=url`` pairs (a bare URL is named ``target``)."""
    pairs = []
    for item in targets:
        name, sep, url = item.partition("=")
        pairs.append((name, url) if sep else ("target", item))
    return pairs


@contextmanager
def _stack_targets(use_stack: bool, targets: list[tuple[str, str]],
                   scrape: list[str]) -> Iterator[tuple[list[tuple[str, str]], list[str]]]:
    if not use_stack:
        yield targets, scrape
        return
    from loadtests.stack import real_stack  # starts processes: only when asked

    with tempfile.TemporaryDirectory() as tmp, real_stack(Path(tmp) / "stack.log") as stack:
        console.print(f"stack ready: gateway {stack.gateway}, engine {stack.engine}")
        yield ([("gateway", stack.gateway), *targets],
               [stack.gateway, stack.engine, *scrape])


async def _run_all(scenario: Scenario, targets: list[tuple[str, str]], scrape: list[str],
                   progress: bool, api_key: str | None, allow_remote: bool
                   ) -> list[RunResult]:
    from loadtests.runner import run, sweep

    results: list[RunResult] = []
    for name, url in targets:
        if scenario.levels:
            results += await sweep(name, url, scenario, scrape_urls=scrape, progress=progress,
                                   api_key=api_key, allow_remote=allow_remote)
        else:
            results.append(await run(name, url, scenario, scrape_urls=scrape, progress=progress,
                                     api_key=api_key, allow_remote=allow_remote))
    return results


@app.command("run")
def run_command(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML.")],
    target: Annotated[list[str] | None, typer.Option(
        help="NAME=URL of an OpenAI-compatible server (repeat to compare targets).")] = None,
    scrape: Annotated[list[str] | None, typer.Option(
        help="Base URL whose /metrics is scraped during the run (repeatable).")] = None,
    stack: Annotated[bool, typer.Option(
        help="Start the real stack (gateway + managed vLLM engine) and target the gateway.")]
    = False,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/bench"),
    slo: Annotated[str | None, typer.Option(help='Goodput SLOs, e.g. "ttft:500 tpot:50".')]
    = None,
    records: Annotated[bool, typer.Option(help="Keep per-request records in the JSON.")]
    = True,
    progress: Annotated[bool, typer.Option(help="Live progress bar.")] = True,
    api_key: Annotated[str | None, typer.Option(
        envvar="SLUICE_BENCH_API_KEY", show_envvar=True,
        help="Sent to every target as Authorization: Bearer (and with scrapes of a "
             "target's own /metrics).")] = None,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Accept targets and scrape URLs that are not on this host "
        "(loopback only by default).")] = False,
) -> None:
    """Run a scenario (or its sweep) against each target; write JSON, Markdown and plots."""
    from loadtests.metrics import Slo
    from loadtests.runner import Scenario, check_target

    scenario = Scenario.model_validate(yaml.safe_load(scenario_file.read_text()))
    slos = Slo.parse(slo) if slo else None
    targets = parse_targets(target or [])
    if not targets and not stack:
        raise typer.BadParameter("give at least one --target, or --stack")
    for url in [url for _, url in targets] + list(scrape or []):
        try:
            check_target(url, allow_remote=allow_remote)
        except ValueError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from exc
    with _stack_targets(stack, targets, list(scrape or [])) as (all_targets, all_scrape):
        results = asyncio.run(_run_all(scenario, all_targets, all_scrape, progress, api_key,
                                       allow_remote))
    refused = unauthorized(results)
    if refused:
        console.print(f"[bold red]error:[/] {', '.join(refused)} refused every request as "
                      "unauthorized (401/403): give its key with --api-key or "
                      "SLUICE_BENCH_API_KEY")
        raise typer.Exit(1)
    write_report(results, out, slos=slos, include_records=records)


def unauthorized(results: list[RunResult]) -> list[str]:
    """The targets that answered every request of a run with 401 or 403."""
    return sorted({r.target for r in results if r.records and all(
        record.error in ("http_401", "http_403") for record in r.records)})


def write_report(results: list[RunResult], out: Path, *, slos: Slo | None,
                 include_records: bool) -> None:
    """``result.json``, ``summary.md`` and PNG plots in ``out``."""
    from loadtests.metrics import summarize
    from loadtests.plots import write_plots
    from loadtests.report import markdown, run_document, write_runs_json

    out.mkdir(parents=True, exist_ok=True)
    runs = [(r, summarize(r, slos=slos)) for r in results]
    write_runs_json(runs, out / "result.json", include_records=include_records)
    table = markdown([run_document(r, s) for r, s in runs])
    (out / "summary.md").write_text(table + "\n")
    plots = write_plots(results, out)
    console.print(table)
    console.print(f"wrote {out / 'result.json'}, {out / 'summary.md'}, "
                  + ", ".join(p.name for p in plots))


@app.command("compare")
def compare_command(
    a: Annotated[Path, typer.Argument(help="Baseline result.json.")],
    b: Annotated[Path, typer.Argument(help="Result to compare with the baseline.")],
) -> None:
    """Key metrics of two result files side by side, with B's change against A."""
    from loadtests.report import compare

    console.print(compare(a, b))


def missing_modules() -> list[str]:
    """The modules of the ``bench`` extra that cannot be imported here."""
    return [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]


def main() -> None:
    """``sluice-bench``: the commands above, or one line naming the extra they need."""
    missing = missing_modules()
    if missing:
        print(f"sluice bench needs the bench extra: pip install 'sluice[bench]' "
              f"(missing: {', '.join(missing)})", file=sys.stderr)
        raise SystemExit(2)
    app(prog_name="sluice-bench")
