"""``sluice versions``: show and change model-version policies through the admin API.

Every command is one call of ``/admin/versions`` on a running gateway (``--url``, with
the admin token from ``--token`` or ``SLUICE_ADMIN_TOKEN``); with Redis, any replica
will do, since the change reaches the others by itself.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer
from rich.console import Console

versions_app = typer.Typer(help="Model versions: show, set, canary, promote, rollback, "
                                "history (calls the admin API).", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

UrlOption = Annotated[str, typer.Option(
    "--url", envvar="SLUICE_ADMIN_URL", help="The gateway's base URL.")]
TokenOption = Annotated[str, typer.Option(
    "--token", envvar="SLUICE_ADMIN_TOKEN", help="The admin token (admin.token).")]
DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 10.0


def call(url: str, token: str, method: str, path: str,
         body: dict[str, Any] | None = None) -> Any:
    """One admin API call; the decoded answer, or exit 1 printing the API's error."""
    if not token:
        err.print("no admin token: pass --token or set SLUICE_ADMIN_TOKEN")
        raise typer.Exit(1)
    request = urllib.request.Request(
        url.rstrip("/") + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        err.print(f"[red]error {exc.code}[/]: {message}", markup=True, highlight=False)
    except (urllib.error.URLError, TimeoutError) as exc:
        err.print(f"[red]cannot reach {url}[/]: {exc}", highlight=False)
    raise typer.Exit(1)


def parse_weights(pairs: list[str]) -> dict[str, float]:
    """``["v1=90", "v2=10"]`` as weights."""
    weights: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r}: write VERSION=WEIGHT (v2=10)")
    return weights


def canary_weights(current: dict[str, float], version: str, percent: float,
                   base: str | None = None) -> dict[str, float]:
    """``percent`` of the traffic on ``version`` and the rest on ``base`` (by default
    the version other than it with the most traffic now)."""
    if not 0 <= percent <= 100:
        raise typer.BadParameter("the percentage must be within 0 and 100")
    if base is None:
        others = {name: weight for name, weight in current.items() if name != version}
        if not others or max(others.values()) <= 0:
            raise typer.BadParameter("no other version has traffic now: name one with --base")
        base = max(others, key=lambda name: others[name])
    if base == version:
        raise typer.BadParameter("--base must be another version")
    return {base: 100 - percent, version: percent}


def _print(data: Any) -> None:
    out.print_json(json.dumps(data))


@versions_app.command()
def show(alias: Annotated[str | None, typer.Argument()] = None,
         url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """Every alias, or one: its versions, stored and applied policy, fallback chain."""
    _print(call(url, token, "GET", "/admin/versions" + (f"/{alias}" if alias else "")))


@versions_app.command("set")
def set_policy(alias: str, weights: Annotated[list[str], typer.Argument(
                   help="VERSION=WEIGHT pairs (relative weights)")],
               url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """Replace an alias's split in one atomic write: set chat v1=90 v2=10."""
    _print(call(url, token, "PUT", f"/admin/versions/{alias}",
                {"weights": parse_weights(weights)}))


@versions_app.command()
def canary(alias: str, version: str,
           percent: Annotated[float, typer.Argument(help="Share of traffic, 0-100.")],
           base: Annotated[str | None, typer.Option(
               help="The version keeping the rest (default: the busiest other one).")] = None,
           url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """Send PERCENT of an alias's traffic to VERSION: canary chat v2 10."""
    current = call(url, token, "GET", f"/admin/versions/{alias}")["policy"]["weights"]
    weights = canary_weights(current, version, percent, base)
    _print(call(url, token, "PUT", f"/admin/versions/{alias}", {"weights": weights}))


@versions_app.command()
def promote(alias: str, version: str,
            url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """All of an alias's traffic to VERSION at once (a blue/green switch)."""
    _print(call(url, token, "PUT", f"/admin/versions/{alias}", {"weights": {version: 100}}))


@versions_app.command()
def rollback(alias: str, url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """Restore an alias's previous policy."""
    _print(call(url, token, "POST", f"/admin/versions/{alias}/rollback"))


@versions_app.command()
def history(alias: str, url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """An alias's earlier policies, newest first."""
    _print(call(url, token, "GET", f"/admin/versions/{alias}/history"))


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``60s``, ``2m``, ``500ms``, ``1h`` or plain seconds, as seconds."""
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            number, scale = text[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = text, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        raise typer.BadParameter(f"{text!r}: write a duration such as 60s, 2m or 500ms") \
            from None
    if seconds <= 0:
        raise typer.BadParameter("the hold must be positive")
    return seconds


def parse_steps(text: str) -> list[float]:
    """``10,50,100`` as percentages."""
    try:
        return [float(step) for step in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: write percentages such as 10,50,100") from None


@versions_app.command()
def rollout(alias: str,
            to: Annotated[str, typer.Option("--to", help="The version to move to.")],
            steps: Annotated[str, typer.Option(help="Its share at each step, in %.")
                             ] = "10,50,100",
            hold: Annotated[str, typer.Option(help="Hold of each step (60s, 5m).")] = "60s",
            base: Annotated[str | None, typer.Option(
                help="The version it replaces (default: the busiest other one).")] = None,
            watch: Annotated[bool, typer.Option(
                help="Print each decision until the rollout ends.")] = False,
            url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """Move ALIAS to a version step by step, promoting within the configured bounds and
    rolling back at once outside them: rollout chat --to v2 --steps 10,50,100 --hold 60s."""
    body = {"to": to, "steps": parse_steps(steps), "hold_s": parse_duration(hold),
            "base": base}
    started = call(url, token, "POST", f"/admin/versions/{alias}/rollout", body)
    if not watch:
        _print(started)
        return
    shown = 0
    while True:
        state = call(url, token, "GET", f"/admin/versions/{alias}/rollout")
        for decision in state["decisions"][shown:]:
            out.print(f"step {decision['step']} ({decision['percent']:g} %): "
                      f"{decision['action']}: {decision['reason']}", highlight=False)
        shown = len(state["decisions"])
        if state["state"] != "running":
            out.print(f"rollout {state['state']}", highlight=False)
            if state["state"] != "done":
                raise typer.Exit(1)
            return
        time.sleep(1.0)


@versions_app.command("rollout-status")
def rollout_status(alias: str, url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """The alias's latest rollout and every decision (any replica answers: rollouts
    live in the shared store)."""
    _print(call(url, token, "GET", f"/admin/versions/{alias}/rollout"))
