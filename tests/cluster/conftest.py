"""Helpers for driving `gobig` end to end on Ray in tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A small, fast experiment: every Ray test trains this shape.
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.max_seq_len=32",
    "train.micro_batch_size=4", "train.log_every=1", "train.eval_every=4",
    "train.eval_batches=2", "train.checkpoint_every=2", "data.num_workers=0",
    "logging.wandb.mode=offline", "optim.warmup_steps=2",
]  # fmt: skip


def text_overrides(dataset: Path, family: str = "gpt") -> list[str]:
    name = "gpt-tiny" if family == "gpt" else "bert-tiny"
    return [f"model.name={name}", *TINY, f"data.source={dataset}", "model.vocab_size=512"]


def train_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def gobig(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path = ROOT):
    """Run the gobig command in a subprocess; returns CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


BASELINE_STEPS = 8


def two_workers(run_root: Path, name: str) -> list[str]:
    return [
        "cluster.num_workers=2", "zero.stage=2", f"run.dir={run_root}", f"run.name={name}",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def gpt_run(text_dataset, tmp_path_factory) -> Path:
    """An uninterrupted 2-worker GPT run: the reference for the failure tests."""
    root = tmp_path_factory.mktemp("runs")
    proc = gobig(
        "train", *text_overrides(text_dataset), *two_workers(root, "baseline"),
        f"train.max_steps={BASELINE_STEPS}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"run finished at step {BASELINE_STEPS}" in proc.stdout
    return root / "baseline"
