"""Package boundaries, read statically from every module's source.

* The gateway never imports the simulator or the load-test harness (not even lazily
  inside a function): ``sluice serve`` ships without them.
* The top-level packages import each other without cycles.
* Importing the ``sluice`` command line loads neither.
* Inside ``gateway/`` the subpackages are layers (:data:`LAYERS`): a module imports only
  from its own layer and the layers before it, and no two subpackages (at any depth:
  ``gateway.edge`` and ``gateway.edge.websocket`` count as two) import each other,
  however indirectly. A module directly in ``gateway/`` (``app``) is a node of its own.
* Importing the settings (``gateway.config``) loads nothing but the core and the config.

Imports are every ``import``/``from`` statement anywhere in a module (functions and
methods included) and every ``importlib.import_module("...")``/``__import__("...")`` of
a literal name; only those under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "engines", "simulator", "loadtests", "adapters")
GATEWAY_MUST_NOT_IMPORT = ("simulator", "loadtests", "engines.simulator")
LAYERS = ("core", "config", "observability", "stores", "keys", "upstream", "scheduling",
          "cache", "versions", "pipeline", "edge", "app", "cli")
"""``gateway/``'s layers, lowest first: each may import only itself and those before it."""


@dataclass(frozen=True)
class Import:
    """``module`` (at ``path:line``) imports ``target`` (a dotted module name)."""

    module: str
    path: str
    line: int
    target: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line} ({self.module} imports {self.target})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name ``from <node.module>`` refers to (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _targets(node: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """``(line, imported name)`` of every import in ``node``, outside TYPE_CHECKING."""
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for statement in node.orelse:
            yield from _targets(statement, module, is_package)
        return
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
        base = _resolve(module, is_package, node)
        yield node.lineno, base
        for alias in node.names:  # `from engines import simulator` imports engines.simulator
            yield node.lineno, f"{base}.{alias.name}"
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else \
            func.attr if isinstance(func, ast.Attribute) else ""
        if name in ("import_module", "__import__"):
            yield node.lineno, node.args[0].value
    for child in ast.iter_child_nodes(node):
        yield from _targets(child, module, is_package)


def imports_of_source(source: str, module: str, path: str,
                      is_package: bool = False) -> list[Import]:
    """Every import in one module's source (see the module docstring)."""
    tree = ast.parse(source, filename=path)
    return [Import(module, path, line, target)
            for line, target in _targets(tree, module, is_package)]


def project_imports() -> list[Import]:
    """The imports of every module of every top-level package."""
    found: list[Import] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += imports_of_source(path.read_text(), module_name(path),
                                       str(path.relative_to(ROOT)),
                                       is_package=path.name == "__init__.py")
    return found


def _within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def _top_level(name: str) -> str | None:
    top = name.split(".")[0]
    return top if top in PACKAGES else None


def package_graph(imports: list[Import], node: Callable[[str], str | None] = _top_level
                  ) -> dict[tuple[str, str], list[Import]]:
    """Edges between distinct nodes (by default the top-level packages; ``node`` maps a
    module or imported name to its node, None for names outside the graph), each with
    the import statements (one per source line) that make it."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    lines: set[tuple[str, int]] = set()
    for imp in imports:
        source, target = node(imp.module), node(imp.target)
        if source is not None and target is not None and target != source \
                and (imp.path, imp.line, target) not in lines:
            lines.add((imp.path, imp.line, target))
            edges[(source, target)].append(imp)
    return dict(edges)


def gateway_modules() -> dict[str, bool]:
    """Every module of ``gateway/`` by name, with whether it is a package."""
    return {module_name(path): path.name == "__init__.py"
            for path in (ROOT / "gateway").rglob("*.py")}


def subpackage_of(modules: dict[str, bool]) -> Callable[[str], str | None]:
    """A name's node in the gateway's package graph: the package holding the module it
    names (the longest known prefix), or the module itself directly under ``gateway``."""
    def node(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if len(parts) < 2:
            return None
        found = ".".join(parts)
        if modules[found]:
            return found
        owner = ".".join(parts[:-1])
        return found if owner == "gateway" else owner
    return node


def layer_of(node: str) -> int:
    """The index in :data:`LAYERS` of a gateway node (``gateway.__main__`` is the CLI's)."""
    name = node.split(".")[1]
    return LAYERS.index("cli" if name == "__main__" else name)


def edges_in_cycles(edges: dict[tuple[str, str], list[Import]]) -> list[tuple[str, str]]:
    """The edges ``a -> b`` from which ``a`` can be reached again."""
    successors: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        successors[a].add(b)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for nxt in successors[todo.pop()]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return start == goal

    return sorted(edge for edge in edges if reaches(edge[1], edge[0]))


def describe(edges: dict[tuple[str, str], list[Import]], cyclic: list[tuple[str, str]], *,
             what: str = "top-level packages") -> str:
    lines = [f"import cycles between {what}; the edges on a cycle:"]
    for a, b in cyclic:
        lines.append(f"  {a} -> {b}")
        lines += [f"      {imp.where}" for imp in edges[(a, b)]]
    return "\n".join(lines)


def test_the_gateway_never_imports_the_simulator_or_the_harness() -> None:
    crossing = [imp for imp in project_imports() if _within(imp.module, "gateway")
                and any(_within(imp.target, banned) for banned in GATEWAY_MUST_NOT_IMPORT)]
    assert not crossing, "gateway/ imports what it must not:\n" + "\n".join(
        f"  {imp.where}" for imp in crossing)


def test_top_level_packages_import_each_other_without_cycles() -> None:
    edges = package_graph(project_imports())
    cyclic = edges_in_cycles(edges)
    assert not cyclic, describe(edges, cyclic)


def test_gateway_subpackages_import_each_other_without_cycles() -> None:
    edges = package_graph(project_imports(), subpackage_of(gateway_modules()))
    cyclic = edges_in_cycles(edges)
    assert not cyclic, describe(edges, cyclic, what="gateway subpackages")


def test_each_gateway_layer_imports_only_the_layers_before_it() -> None:
    edges = package_graph(project_imports(), subpackage_of(gateway_modules()))
    against = {edge: found for edge, found in edges.items()
               if layer_of(edge[1]) > layer_of(edge[0])}
    assert not against, "imports against the layer order " + " -> ".join(LAYERS) + ":\n" \
        + "\n".join(f"  {imp.where}" for found in against.values() for imp in found)


def test_every_gateway_subpackage_is_in_a_layer() -> None:
    nodes = {subpackage_of(gateway_modules())(name) for name in gateway_modules()}
    for node in nodes - {None}:
        assert node is not None
        layer_of(node)  # raises for a subpackage no layer names


def test_the_settings_load_only_the_core_and_the_config() -> None:
    probe = ("import sys, gateway.config.settings; print(' '.join(sorted(m for m in "
             "sys.modules if m.startswith('gateway'))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    loaded = result.stdout.split()
    assert "gateway.config.settings" in loaded
    assert [m for m in loaded if m != "gateway" and not m.startswith(
        ("gateway.core", "gateway.config"))] == []


def test_a_cycle_between_two_gateway_subpackages_is_found() -> None:
    modules = {"gateway": True, "gateway.cache": True, "gateway.cache.service": False,
               "gateway.versions": True, "gateway.versions.router": False,
               "gateway.edge": True, "gateway.edge.websocket": True,
               "gateway.edge.websocket.mux": False, "gateway.edge.middleware": False}
    found = [*imports_of_source("from gateway.versions.router import pick\n",
                                "gateway.cache.service", "gateway/cache/service.py"),
             *imports_of_source("def f():\n    import gateway.cache\n",
                                "gateway.versions.router", "gateway/versions/router.py"),
             *imports_of_source("from gateway.edge.middleware import caller\n",
                                "gateway.edge.websocket.mux", "gateway/edge/websocket/mux.py"),
             *imports_of_source("from gateway.edge.websocket import mux\n",
                                "gateway.edge.middleware", "gateway/edge/middleware.py")]
    edges = package_graph(found, subpackage_of(modules))
    assert edges_in_cycles(edges) == [
        ("gateway.cache", "gateway.versions"), ("gateway.edge", "gateway.edge.websocket"),
        ("gateway.edge.websocket", "gateway.edge"), ("gateway.versions", "gateway.cache")]
    assert [edge for edge in edges if layer_of(edge[1]) > layer_of(edge[0])] == [
        ("gateway.cache", "gateway.versions")]


def test_the_sluice_cli_loads_neither_the_simulator_nor_the_harness() -> None:
    probe = ("import sys, gateway.cli.main; print(' '.join(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('simulator', 'loadtests') or m.startswith("
             "'engines.simulator'))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == []


SAMPLE = textwrap.dedent("""
    from __future__ import annotations
    import importlib
    from typing import TYPE_CHECKING
    from . import sibling
    from ...core.errors import Oops
    if TYPE_CHECKING:
        import loadtests.records
    else:
        import engines.spec
    def lazy():
        from simulator import SimConfig
        return importlib.import_module("loadtests.cli")
    class C:
        def method(self):
            import gateway.config.settings as s
""")


def test_the_scanner_sees_lazy_and_relative_imports_and_skips_type_checking() -> None:
    found = imports_of_source(SAMPLE, "gateway.edge.routes.health",
                              "gateway/edge/routes/health.py")
    targets = {imp.target for imp in found}
    assert {"gateway.edge.routes", "gateway.edge.routes.sibling", "gateway.core.errors",
            "engines.spec", "simulator", "loadtests.cli", "gateway.config.settings"} <= targets
    assert "loadtests.records" not in targets
    assert next(imp.line for imp in found if imp.target == "simulator") == 12


def test_a_cycle_is_reported_with_the_imports_that_close_it() -> None:
    found = [*imports_of_source("import engines.spec\n", "gateway.app", "gateway/app.py"),
             *imports_of_source("def f():\n    from gateway import errors\n",
                                "engines.client", "engines/client.py"),
             *imports_of_source("import gateway\n", "loadtests.cli", "loadtests/cli.py")]
    edges = package_graph(found)
    cyclic = edges_in_cycles(edges)
    assert cyclic == [("engines", "gateway"), ("gateway", "engines")]
    message = describe(edges, cyclic)
    assert "engines/client.py:2 (engines.client imports gateway)" in message
    assert "loadtests" not in message
