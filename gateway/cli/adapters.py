"""``sluice adapters``: list, register and remove LoRA adapters through the admin API.

Each command is one call of ``/admin/adapters`` on a running gateway (``--url``, the admin
token from ``--token`` or ``SLUICE_ADMIN_TOKEN``); with Redis any replica will do.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from gateway.cli.versions import DEFAULT_URL, TokenOption, UrlOption, call, out

adapters_app = typer.Typer(help="LoRA adapters: list, add, remove (calls the admin API).",
                           no_args_is_help=True)


@adapters_app.command("list")
def list_adapters(url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """Every adapter, configured and registered."""
    table = Table("name", "base", "path", "rank", "source")
    for spec in call(url, token, "GET", "/admin/adapters")["data"]:
        table.add_row(spec["name"], spec["base"], spec["path"],
                      "" if spec["rank"] is None else str(spec["rank"]), spec["source"])
    out.print(table)


@adapters_app.command()
def add(name: str, base: Annotated[str, typer.Option(help="Its base model.")],
        path: Annotated[str, typer.Option(help="Its directory, as the engines see it.")],
        rank: Annotated[int | None, typer.Option(help="Its LoRA rank.")] = None,
        url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """Register an adapter: add sql-lora --base smollm2 --path /models/adapters/sql."""
    body = {"name": name, "base": base, "path": path, "rank": rank}
    spec = call(url, token, "POST", "/admin/adapters", body)
    out.print(f"registered {spec['name']} on {spec['base']}")


@adapters_app.command()
def remove(name: str, url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """Unregister an adapter (engines holding it unload it once it is idle)."""
    call(url, token, "DELETE", f"/admin/adapters/{name}")
    out.print(f"removed {name}")
