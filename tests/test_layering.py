"""The package's one-way layers, checked on the import statements written in each module.

Edges are exactly the imports a file writes (module level or inside functions, relative ones
resolved); ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg``. Only edges between modules of ``mmq_eval`` count.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable
from pathlib import Path

from mmq_eval.cli import SUBCOMMAND_MODULES

PACKAGE = "mmq_eval"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
ALONE_LAYERS = ("mmq_eval.quant", "mmq_eval.data")  # may import only mmq_eval.errors and themselves
MODELS_MUST_NOT_IMPORT = ("mmq_eval.sweep", "mmq_eval.report", "mmq_eval.export")


def within(module: str, package: str) -> bool:
    """Whether ``module`` is ``package`` or one of its submodules."""
    return module == package or module.startswith(package + ".")


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file of every module of the package at ``root`` (symlinked folders included)."""
    modules = {}
    for folder, _, files in os.walk(root, followlinks=True):
        parts = [package, *Path(folder).relative_to(root).parts]
        for name in files:
            if name.endswith(".py"):
                stem = name[:-3]
                modules[".".join(parts if stem == "__init__" else [*parts, stem])] = Path(folder) / name
    return modules


def imports_of(source: str, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``source`` (the text of ``module``) imports, itself excepted."""

    def known(name: str) -> str | None:
        while name and name not in modules:  # ``import a.b.X`` where X is no module file
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                anchor = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else known(base))
    return {name for name in found if name and name != module}


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, for every module of the package at ``root``."""
    files = module_files(root, package)
    return {
        name: imports_of(path.read_text(), name, path.name == "__init__.py", set(files))
        for name, path in files.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle (its modules in import order) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(graph, group) for group in groups]


def _cycle_through(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A path from the group's first module back to itself, staying inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first: the shortest cycle through ``start``
        node = frontier.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return paths[node]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                frontier.append(nxt)
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def violations(graph: dict[str, set[str]], applies: Callable[[str], bool],
               forbidden: Callable[[str, str], bool]) -> list[str]:
    """``"importer -> imported"`` for every edge from a module ``applies`` holds for that
    ``forbidden(importer, imported)`` rejects."""
    return [f"{src} -> {dst}" for src in sorted(graph) if applies(src)
            for dst in sorted(graph[src]) if forbidden(src, dst)]


def cli_modules(modules) -> set[str]:
    """The command-line modules: mmq_eval.cli, mmq_eval.<package>.cli and every subcommand module."""
    pattern = [m for m in modules if m.count(".") == 2 and m.startswith(PACKAGE + ".") and m.endswith(".cli")]
    return {f"{PACKAGE}.cli", *pattern, *SUBCOMMAND_MODULES.values()}


def alone_layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports from quant/ or data/ of anything of mmq_eval but mmq_eval.errors and their own package."""
    def layer(module: str) -> str | None:
        return next((p for p in ALONE_LAYERS if within(module, p)), None)

    return violations(graph, lambda src: layer(src) is not None,
                      lambda src, dst: dst != "mmq_eval.errors" and not within(dst, layer(src)))


def cli_import_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a command-line module by a library (non-CLI) module."""
    cli = cli_modules(graph)
    return violations(graph, lambda src: src not in cli, lambda src, dst: dst in cli)


def models_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports from mmq_eval.models of the sweep, report or export layers above it."""
    return violations(graph, lambda src: within(src, "mmq_eval.models"),
                      lambda src, dst: any(within(dst, p) for p in MODELS_MUST_NOT_IMPORT))


# ---- the checker itself ------------------------------------------------------------------------
def test_resolver_on_a_small_package(tmp_path):
    root = tmp_path / "pkg"
    sources = {
        "__init__.py": "from pkg.sub import tool\n",
        "sub/__init__.py": "from .helpers import X\n",
        "sub/helpers.py": "import json\nimport pkg.base.Thing\nX = 1\n",
        "sub/tool.py": "from . import helpers\nfrom .. import base\nfrom ..sub import X\n"
                       "def late():\n    from pkg import other\n",
        "base.py": "",
        "other.py": "import pkg.sub.tool as tool\n",
    }
    for name, text in sources.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = import_graph(root, "pkg")
    assert graph == {
        "pkg": {"pkg.sub.tool"},
        "pkg.sub": {"pkg.sub.helpers"},
        "pkg.sub.helpers": {"pkg.base"},
        "pkg.sub.tool": {"pkg.sub.helpers", "pkg.base", "pkg.sub", "pkg.other"},
        "pkg.base": set(),
        "pkg.other": {"pkg.sub.tool"},
    }
    assert find_cycles(graph) == [["pkg.other", "pkg.sub.tool"]]


def test_checkers_report_planted_cycles_and_violations():
    graph = {
        "mmq_eval.quant.a": {"mmq_eval.quant.b", "mmq_eval.errors", "mmq_eval.models.base"},
        "mmq_eval.quant.b": {"mmq_eval.quant.c"},
        "mmq_eval.quant.c": {"mmq_eval.quant.a"},
        "mmq_eval.data.d": {"mmq_eval.data", "mmq_eval.tasks"},
        "mmq_eval.models.base": {"mmq_eval.tasks.retrieval_metrics", "mmq_eval.export.schemes"},
        "mmq_eval.tasks": set(),
        "mmq_eval.tasks.retrieval_metrics": {"mmq_eval.sweep.cli"},
        "mmq_eval.sweep.cli": {"mmq_eval.regress"},
        "mmq_eval.sweep.spec": {"mmq_eval.data.prepare"},
    }
    graph.update({dst: set() for edges in list(graph.values()) for dst in edges if dst not in graph})
    assert find_cycles(graph) == [["mmq_eval.quant.a", "mmq_eval.quant.b", "mmq_eval.quant.c"]]
    assert alone_layer_violations(graph) == [
        "mmq_eval.data.d -> mmq_eval.tasks", "mmq_eval.quant.a -> mmq_eval.models.base",
    ]
    assert cli_import_violations(graph) == [
        "mmq_eval.sweep.spec -> mmq_eval.data.prepare", "mmq_eval.tasks.retrieval_metrics -> mmq_eval.sweep.cli",
    ]
    assert models_violations(graph) == ["mmq_eval.models.base -> mmq_eval.export.schemes"]


# ---- the package -------------------------------------------------------------------------------
def test_the_graph_covers_the_package():
    graph = import_graph()
    assert {"mmq_eval.cli", "mmq_eval.quant.spec", "mmq_eval.tasks.retrieval"} <= set(graph)
    assert "mmq_eval.tasks" in graph["mmq_eval.sweep.spec"]
    assert {"mmq_eval.sweep.cli", "mmq_eval.regress", "mmq_eval.data.prepare"} <= cli_modules(graph)


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join([*c, c[0]]) for c in cycles)


def test_quant_and_data_import_only_errors_and_themselves():
    found = alone_layer_violations(import_graph())
    assert not found, "quant/ and data/ may import only mmq_eval.errors and their own package:\n" + "\n".join(found)


def test_no_library_module_imports_a_cli_module():
    found = cli_import_violations(import_graph())
    assert not found, "library modules importing command-line modules:\n" + "\n".join(found)


def test_models_do_not_import_sweep_report_or_export():
    found = models_violations(import_graph())
    assert not found, "mmq_eval.models importing a layer above it:\n" + "\n".join(found)
