"""The house rules of docs/architecture.md, checked on the source: layering, no import cycle, room sizes.

Imports are read with :mod:`ast` (nothing is imported), at module level and
inside functions alike, so a lazy import that closes a cycle is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "workers", "cluster")

#: Modules allowed past the size limit, each with the one purpose that needs the length.
LONG_MODULES: dict[str, str] = {}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Edges ``module -> module it imports`` among ``modules`` (every import statement)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                           else node.module for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                resolved = resolve(target)
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_there_are_modules_to_check() -> None:
    modules = _modules()
    assert {"pipeline.cli", "pipeline.classify.graph", "workers.models", "cluster"} <= set(modules)


def test_no_import_cycle() -> None:
    assert cycles(import_graph(_modules())) == []


@pytest.mark.parametrize("lower", ["workers", "cluster"])
def test_imports_point_down_only(lower: str) -> None:
    graph = import_graph(_modules())
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.split(".")[0] == lower
                    for t in targets if t.split(".")[0] == "pipeline")
    assert upward == [], f"{lower} must never import the pipeline"


def test_workers_and_cluster_do_not_import_each_other() -> None:
    graph = import_graph(_modules())
    crossing = sorted(f"{m} -> {t}" for m, targets in graph.items()
                      for t in targets if {m.split(".")[0], t.split(".")[0]} == {"workers", "cluster"})
    assert crossing == []


def test_modules_stay_small_unless_one_purpose_needs_it() -> None:
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
            for p in _modules().values()}
    too_long = {f: n for f, n in long.items() if n > MAX_LINES and f not in LONG_MODULES}
    assert too_long == {}, f"split these (or say in LONG_MODULES which one purpose needs the length)"
    stale = [f for f in LONG_MODULES if long.get(f, 0) <= MAX_LINES]
    assert stale == [], "these are short now: drop them from LONG_MODULES"
