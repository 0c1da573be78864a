"""One error boundary: every user-facing error is a GobigError, printed by `report_error`.

`gobig` (cluster/cli.py), `python -m train`, `gobig export` and `gobig data` end a
user error the same way: one `PROG: error: MESSAGE` line on stderr, exit status 2,
no traceback. The failures here are caused for real, through the commands.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.errors import GobigError, report_error
from tests.train.conftest import gpt_args, run_train

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
# Error classes that never reach a user, and why.
INTERNAL_ERRORS = {
    "data_pipeline.tar_stream.TarFormatError": "data_pipeline/reader.py wraps it in a ShardError",
}
# The base each error had before GobigError; callers may still catch by it.
KEPT_BASES = {
    "data_pipeline.errors.DataError": ValueError,
    "train.config.load.ConfigError": ValueError,
    "train.checkpoint.layout.CheckpointError": RuntimeError,  # moved into the package
    "train.export.ExportError": ValueError,
    "cluster.errors.ClusterError": RuntimeError,
    "cluster.errors.UsageError": ValueError,
}


def error_classes() -> dict[str, type]:
    """Every `class ...Error` defined in train/, cluster/ and data_pipeline/, by dotted name."""
    found = {}
    for package in ("train", "cluster", "data_pipeline"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                    found[f"{module}.{node.name}"] = getattr(
                        importlib.import_module(module), node.name
                    )
    return found


def test_every_user_facing_error_derives_from_the_base():
    classes = error_classes()
    assert set(KEPT_BASES) <= set(classes)
    for name, cls in classes.items():
        if name not in INTERNAL_ERRORS:
            assert issubclass(cls, GobigError), f"{name} is not a GobigError"
    for name, base in KEPT_BASES.items():
        assert issubclass(classes[name], base), f"{name} is no longer a {base.__name__}"


def test_report_error_prints_one_line(capsys):
    assert report_error("gobig", GobigError("first\n  second")) == 2
    assert capsys.readouterr().err == "gobig: error: first second\n"
    missing = FileNotFoundError(2, "No such file or directory", "/no/such/file")
    assert report_error("gobig data", missing) == 2
    assert capsys.readouterr().err == "gobig data: error: /no/such/file No such file or directory\n"


def gobig(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def one_error_line(returncode: int, stderr: str, prog: str, *fragments: str, alone: bool = True):
    """Exit 2, no traceback, one `PROG: error:` line holding `fragments` (and nothing else)."""
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    if alone:
        assert stderr.strip() == errors[0], stderr[-3000:]


def test_gobig_config_with_a_bad_key():
    proc = gobig("config", "model.n_layers=2")
    one_error_line(proc.returncode, proc.stderr, "gobig", "model.n_layers", "unknown key")


def test_gobig_usage_error():
    proc = gobig("jobs", "list")  # no --address
    one_error_line(proc.returncode, proc.stderr, "gobig", "--address")


def test_gobig_export_of_a_missing_run(tmp_path):
    proc = gobig("export", str(tmp_path / "no-run"), "--out", str(tmp_path / "out"))
    one_error_line(proc.returncode, proc.stderr, "gobig", str(tmp_path / "no-run"))


def test_gobig_data_text_with_a_missing_input(tmp_path, text_dataset):
    missing = tmp_path / "missing.txt"
    proc = gobig(
        "data", "text", "--input", str(missing), "--tokenizer", str(text_dataset),
        "--out", str(tmp_path / "out"), "--quiet",
    )  # fmt: skip
    one_error_line(proc.returncode, proc.stderr, "gobig data text", "input not found", str(missing))


def test_train_with_wandb_online_and_no_api_key(tmp_path, text_dataset):
    # run_train's environment holds no WANDB_API_KEY.
    args = gpt_args(text_dataset, 1, 0, "train.max_steps=1", "logging.wandb.mode=online")
    run = run_train(args, tmp_path / "run")
    one_error_line(
        run.returncode, run.stderr, "gobig", "logging.wandb.mode", "WANDB_API_KEY", alone=False
    )


def test_train_resume_that_the_checkpoint_refuses(tmp_path, text_dataset):
    run_dir = tmp_path / "run"
    one_step = ["train.max_steps=1", "train.checkpoint_every=1", "train.eval_every=1"]
    run_train(gpt_args(text_dataset, 1, 0, *one_step), run_dir).check()
    # A ZeRO-0 checkpoint resumed at another stage: CheckpointError, raised in the loop.
    run = run_train(["zero.stage=1"], run_dir, resume=True)
    one_error_line(run.returncode, run.stderr, "gobig", "zero.stage 0", alone=False)
