"""The shape issue 11 set, checked on the source: small signatures in train/, no
formatter opt-outs on signatures, benchmarks that use public names and patch nothing,
and no branch on a model family's name inside train/."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_PARAMS = 6


def sources(folder: str) -> dict[str, ast.Module]:
    return {
        str(path.relative_to(ROOT)): ast.parse(path.read_text(), filename=str(path))
        for path in sorted((ROOT / folder).rglob("*.py"))
    }


def functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def parameter_count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return len([n for n in names if n not in ("self", "cls")])


def test_no_function_in_train_takes_more_than_six_parameters():
    wide = [
        f"{path}:{fn.lineno} {fn.name} ({parameter_count(fn)})"
        for path, tree in sources("train").items()
        for fn in functions(tree)
        if parameter_count(fn) > MAX_PARAMS
    ]
    assert not wide, wide


def test_no_fmt_skip_on_a_signature_in_train():
    skipped = []
    for path, tree in sources("train").items():
        lines = (ROOT / path).read_text().splitlines()
        for fn in functions(tree):
            signature = lines[fn.lineno - 1 : fn.body[0].lineno - 1]
            if any("fmt: skip" in line for line in signature):
                skipped.append(f"{path}:{fn.lineno} {fn.name}")
    assert not skipped, skipped


def _module_names(tree: ast.Module) -> set[str]:
    """Names a file binds to modules (import x, import x as y, from pkg import module)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                try:
                    found = importlib.util.find_spec(f"{node.module}.{alias.name}")
                except (ImportError, ValueError):
                    found = None
                if found is not None:
                    names.add(alias.asname or alias.name)
    return names


def _train_module_names(tree: ast.Module) -> set[str]:
    """Names a file binds to modules of train/ (`from train import loop`, `import train.x as y`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.asname or a.name for a in node.names if a.name.startswith("train"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("train"):
            names.update(a.asname or a.name for a in node.names if a.name[0].islower())
    return names


def test_benchmarks_import_no_private_train_names():
    private = []
    for path, tree in sources("bench").items():
        train_modules = _train_module_names(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in train_modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                private.append(f"{path}:{node.lineno} {node.value.id}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("train"):
                private += [
                    f"{path}: {node.module}.{a.name}" for a in node.names if a.name[0] == "_"
                ]
            if isinstance(node, ast.Import):
                private += [
                    f"{path}: {a.name}"
                    for a in node.names
                    if a.name.startswith("train") and any(p[0] == "_" for p in a.name.split("."))
                ]
    assert not private, private


def test_benchmarks_patch_no_module_attribute():
    patched = []
    for path, tree in sources("bench").items():
        modules = _module_names(tree)
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id in modules
                ):
                    patched.append(f"{path}:{node.lineno} {target.value.id}.{target.attr}")
            is_setattr = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "setattr"
            )
            if is_setattr:
                patched.append(f"{path}:{node.lineno} setattr")
    assert not patched, patched


def test_train_has_no_branch_on_a_family_name():
    """What differs between families is the family object's (train/families.py)."""
    families = {"gpt", "bert", "vit", "seq2seq"}
    branches = []
    for path, tree in sources("train").items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            values = [node.left, *node.comparators]
            names = {v.value for v in values if isinstance(v, ast.Constant)}
            if names & families:
                branches.append(f"{path}:{node.lineno}")
    assert not branches, branches
