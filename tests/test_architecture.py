"""The package layout's rules, read from the source with ``ast`` (nothing is imported).

- No import cycle inside ``xlpref/`` and ``harness/``, counting imports inside functions too.
- The method (``xlpref/``) never imports the harness, nor names it in a string (a registry target).
- At most ten modules directly under ``harness/``: the rest is grouped by noun in subpackages.
- The harness imports ``benchmarks.perf`` only inside functions (``xlpref bench``), never at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("xlpref", "harness", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def known_module(name: str) -> str | None:
    """The project module an import of ``name`` runs: the longest known prefix (None: a third-party module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> list[tuple[str, bool]]:
    """The project modules ``module`` imports, each with whether the import is at module level."""
    path = MODULES[module]
    return imports_in(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")


def imports_in(source: str, module: str, *, is_package: bool = False) -> list[tuple[str, bool]]:
    """The project modules a module's source imports, anywhere in it (functions included).

    ``from pkg import mod`` counts as an import of ``pkg.mod`` when that is a module; relative imports
    are resolved against the importing module's package.
    """
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                       for alias in node.names]
        for target in targets:
            resolved = known_module(target)
            if resolved and resolved != module:
                found.append((resolved, id(node) in top_level))
    return found


def import_graph(prefixes: tuple[str, ...] = ("xlpref", "harness")) -> dict[str, set[str]]:
    inside = {name for name in MODULES if name.split(".")[0] in prefixes}
    return {name: {target for target, _ in imports_of(name) if target in inside} for name in sorted(inside)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_reports_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_relative_imports_and_submodules_are_counted():
    source = ("from harness import store\n"
              "from . import base\n"
              "from .api import OpenAICompatibleJudge\n"
              "def load():\n"
              "    import xlpref.training\n"
              "    from xlpref.data import MINI_DIR\n"
              "    import numpy\n")
    edges = imports_in(source, "harness.judges.loading")
    assert edges == [("harness.store", True), ("harness.judges.base", True), ("harness.judges.api", True),
                     ("xlpref.training", False), ("xlpref.data", False)]


def test_there_is_no_import_cycle_in_xlpref_or_harness():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_method_package_never_imports_or_names_the_harness():
    offenders = []
    for name, path in MODULES.items():
        if not name.startswith("xlpref"):
            continue
        offenders += [f"{name} imports {target}" for target, _ in imports_of(name) if target.startswith("harness")]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{name}:{node.lineno} names {node.value!r}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and isinstance(node.value, str)
                      and "harness." in node.value]
    assert not offenders, "\n".join(offenders)


def test_harness_keeps_at_most_ten_modules_at_its_top_level():
    top = sorted(path.name for path in (REPO / "harness").glob("*.py"))
    assert len(top) <= 10, f"{len(top)} modules directly under harness/: {top}; group them in a subpackage"


def test_the_harness_imports_the_performance_suite_only_inside_functions():
    offenders = [f"{name} imports {target} at module level"
                 for name in MODULES if name.startswith("harness")
                 for target, is_top_level in imports_of(name)
                 if is_top_level and target.startswith("benchmarks.perf")]
    assert not offenders, "\n".join(offenders)
