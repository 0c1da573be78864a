"""`gobig --help`, `gobig config` and `gobig jobs --help` start without torch.

DESIGN.md: the experiment config is readable without torch, and cluster/cli.py
imports the heavy packages only in the subcommands that need them. Each case
runs `cluster.cli.main([...])` in a fresh interpreter, so nothing another test
imported can hide an import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "deepspeed", "ray", "wandb")

PROBE = """
import json, sys
import cluster.cli
argv = json.loads(sys.argv[1])
code = None if argv is None else cluster.cli.main(argv)
sys.stdout.flush()
heavy = sorted(name for name in {heavy!r} if name in sys.modules)
print("\\nPROBE " + json.dumps({{"code": code, "heavy": heavy}}))
"""


def probe(argv: list[str] | None) -> tuple[dict, str]:
    """(exit code and heavy modules imported, stdout) of `gobig ARGV` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(argv)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, _, result = proc.stdout.rpartition("\nPROBE ")
    return json.loads(result), out


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (None, None),
        (["--help"], 0),
        (["config"], 0),
        (["config", "model.n_layers=2"], 2),  # the error path too
        (["jobs", "--help"], 0),
    ],
    ids=["import", "help", "config", "config-error", "jobs-help"],
)
def test_cli_starts_without_heavy_imports(argv, code):
    result, _ = probe(argv)
    assert result["heavy"] == [], f"gobig {argv} imported {result['heavy']}"
    assert result["code"] == code


def test_jobs_import_ray_only():
    # Nobody listens on port 1: the client fails at once, with Ray but not torch loaded.
    result, _ = probe(["jobs", "list", "--address", "http://127.0.0.1:1"])
    assert result["code"] == 2
    assert result["heavy"] == ["ray"]


def test_config_prints_the_resolved_config():
    result, out = probe(["config", "model.n_layer=3"])
    assert result["code"] == 0
    assert "n_layer: 3" in out
