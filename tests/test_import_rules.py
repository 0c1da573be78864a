"""The import direction of DESIGN.md, checked on the source itself.

model imports only torch; data_pipeline never imports model, train or
cluster; only train imports deepspeed and wandb; only cluster imports ray;
no import cycles inside a package.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "train", "data_pipeline", "cluster")
STDLIB = set(sys.stdlib_module_names)


def imported_roots(package: str) -> dict[str, set[str]]:
    """Top-level module names imported anywhere in a package, per file."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_model_imports_only_torch():
    for path, names in imported_roots("model").items():
        extra = names - STDLIB - {"torch", "model"}
        assert not extra, f"{path} imports {sorted(extra)}"


def test_data_pipeline_imports_no_other_package():
    for path, names in imported_roots("data_pipeline").items():
        bad = names & {"model", "train", "cluster"}
        assert not bad, f"{path} imports {sorted(bad)}"


@pytest.mark.parametrize(
    ("module", "owner"), [("deepspeed", "train"), ("wandb", "train"), ("ray", "cluster")]
)
def test_only_owner_imports(module, owner):
    for package in PACKAGES:
        if package == owner:
            continue
        for path, names in imported_roots(package).items():
            assert module not in names, f"{path} imports {module}; only {owner}/ may"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def intra_package_imports(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, at module level or in a function."""
    files = {module_name(path): path for path in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1])
                    source = f"{base}.{source}" if source else base
                # `from pkg import sub` imports the submodule when there is one
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                while target not in files and "." in target:  # a name inside a module
                    target = target.rsplit(".", 1)[0]
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a closed path of modules) per strongly connected group of the graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
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
    return [_closed_path(graph, group) for group in groups]


def _closed_path(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    # Shortest way from the group's first module back to itself, inside the group.
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                frontier.append(nxt)
    raise AssertionError(f"{sorted(group)} is not a cycle")


def test_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles_inside_a_package(package):
    cycles = import_cycles(intra_package_imports(package))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
