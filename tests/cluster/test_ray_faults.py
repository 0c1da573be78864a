"""Hung workers on an embedded local Ray: the group is torn down, restarted from the
newest complete checkpoint, and finishes with the uninterrupted run's losses.

Two workers at ZeRO-2, real DeepSpeed on CPU with gloo; `train.hang_timeout_s`
is scaled down so each recovery takes well under a minute here.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from tests.cluster.conftest import (
    BASELINE_STEPS,
    gobig,
    text_overrides,
    train_losses,
    two_workers,
    wait_for,
)
from train.metrics_log import read_metrics

pytestmark = pytest.mark.timeout(600)
HANG_TIMEOUT_S = 15
TARGET_S = 240  # from the hang to training again


def _resumed_at(run_dir) -> float:
    """When the restarted group finished its first step (its start-up record)."""
    starts = [r for r in read_metrics(run_dir) if r["kind"] == "startup" and r["step"] > 0]
    assert starts, "the run never restarted"
    return starts[-1]["first_step_at"]


def _train(text_dataset, tmp_path, name: str, *extra: str):
    return gobig(
        "train", *text_overrides(text_dataset), *two_workers(tmp_path, name),
        f"train.max_steps={BASELINE_STEPS}", "cluster.max_failures=2",
        f"train.hang_timeout_s={HANG_TIMEOUT_S}", *extra, timeout=480,
    )  # fmt: skip


def test_sigstopped_worker_is_torn_down_and_the_run_recovers(gpt_run, text_dataset, tmp_path):
    run_dir = tmp_path / "stopped"
    stopped: dict[str, float] = {}

    def stop_rank_one() -> None:
        wait_for(lambda: (run_dir / "metrics.jsonl").is_file()
                 and max(train_losses(run_dir), default=0) >= 3, 300, "step 3")  # fmt: skip
        record = json.loads((run_dir / "workers" / "rank_00001.json").read_text())
        stopped["pid"] = record["pid"]
        stopped["at"] = time.time()
        os.kill(record["pid"], signal.SIGSTOP)

    stopper = threading.Thread(target=stop_rank_one, daemon=True)
    stopper.start()
    proc = _train(text_dataset, tmp_path, "stopped")
    stopper.join(timeout=5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pid" in stopped, "the worker was never stopped"
    output = proc.stdout + proc.stderr
    assert f"pid {stopped['pid']}): silent for" in output  # named by the rank that waited
    restarted = json.loads((run_dir / "workers" / "rank_00001.json").read_text())
    assert restarted["pid"] != stopped["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(stopped["pid"], 0)  # the stopped process is gone, not left behind
    assert _resumed_at(run_dir) - stopped["at"] < TARGET_S
    assert train_losses(run_dir) == train_losses(gpt_run)


def test_rank_stuck_while_alive_is_restarted(gpt_run, text_dataset, tmp_path):
    """Rank 1 blocks inside step 5 (alive, its threads running): the waiting rank
    times out, the stuck one is ended by its watchdog, the group restarts."""
    proc = _train(text_dataset, tmp_path, "stuck", "faults=[{kind: hang, step: 5, rank: 1}]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "gobig: fault injected: hang on rank 1 at step 5" in output
    assert "step 5: rank 0 (host" in output and "for rank 1 (host" in output
    assert "at faults.py" in output  # where the stuck rank was
    run_dir = tmp_path / "stuck"
    hung_at = (run_dir / "faults" / "fault_000").stat().st_mtime  # written as it hangs
    assert _resumed_at(run_dir) - hung_at < TARGET_S
    assert train_losses(run_dir) == train_losses(gpt_run)


def test_a_diverged_run_on_ray_ends_in_one_line_without_retries(text_dataset, tmp_path):
    """Every rank stops at the same step; Ray is told, not made to retry it."""
    proc = _train(
        text_dataset, tmp_path, "diverged", "optim.lr=1e4", "optim.grad_clip=0",
        "train.precision=bf16", "train.max_steps=40",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("gobig: error:")]
    assert len(errors) == 1 and "training diverged: 5 anomalies" in errors[0], proc.stderr[-3000:]
    starts = [r for r in read_metrics(tmp_path / "diverged") if r["kind"] == "startup"]
    assert len(starts) == 1  # one attempt: no restart met the same divergence again
