"""The import direction of DESIGN.md, checked on the source itself.

model imports only torch; data_pipeline never imports model, train or
cluster; only train imports deepspeed and wandb; only cluster imports ray.
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
