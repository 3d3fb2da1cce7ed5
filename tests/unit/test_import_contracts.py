"""Package boundaries, read statically from every module's source.

* The gateway never imports the simulator or the load-test harness (not even lazily
  inside a function): ``sluice serve`` ships without them.
* The top-level packages import each other without cycles.
* Importing the ``sluice`` command line loads neither.

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "engines", "simulator", "loadtests", "adapters")
GATEWAY_MUST_NOT_IMPORT = ("simulator", "loadtests", "engines.simulator")


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


def package_graph(imports: list[Import]) -> dict[tuple[str, str], list[Import]]:
    """Edges between distinct top-level packages, each with the import statements (one
    per source line) that make it."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    lines: set[tuple[str, int]] = set()
    for imp in imports:
        source, target = imp.module.split(".")[0], imp.target.split(".")[0]
        if target in PACKAGES and target != source and (imp.path, imp.line) not in lines:
            lines.add((imp.path, imp.line))
            edges[(source, target)].append(imp)
    return dict(edges)


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


def describe(edges: dict[tuple[str, str], list[Import]], cyclic: list[tuple[str, str]]) -> str:
    lines = ["import cycles between top-level packages; the edges on a cycle:"]
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
