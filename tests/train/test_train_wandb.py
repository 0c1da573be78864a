"""W&B offline: a resumed run continues the same W&B run, no step is logged twice,
and an API key in the environment is never written anywhere."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.train.conftest import HALF, SECRET, STEPS, wandb_history_steps, wandb_records
from train.checkpoint import list_checkpoints, read_meta

pytestmark = pytest.mark.timeout(600)


def test_resumed_run_continues_the_same_wandb_run(runs):
    run = runs.interrupted(1, 0)  # stopped at N, resumed to 2N, W&B offline
    wandb_id = json.loads((run.run_dir / "run.json").read_text())["wandb_id"]
    assert [read_meta(c)["wandb_run_id"] for c in list_checkpoints(run.run_dir)] == [
        wandb_id,
        wandb_id,
    ]
    attempts = sorted(p.name for p in (run.run_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(name.endswith(f"-{wandb_id}") for name in attempts)
    run_ids = {rec.run.run_id for _, rec in wandb_records(run.run_dir) if rec.HasField("run")}
    assert run_ids == {wandb_id}
    # Each step reached W&B once, across both attempts, in order.
    assert wandb_history_steps(run.run_dir) == list(range(1, STEPS + 1))


def test_metrics_jsonl_has_no_duplicate_steps_after_resume(runs):
    run = runs.interrupted(1, 0)
    counts = Counter((r["kind"], r["step"]) for r in run.records() + run.records("eval"))
    assert max(counts.values()) == 1
    assert sorted(s for k, s in counts if k == "train") == list(range(1, STEPS + 1))
    assert sorted(s for k, s in counts if k == "eval") == [HALF, STEPS]


def test_api_key_is_written_nowhere(runs):
    # Every attempt of these runs had WANDB_API_KEY=SECRET in its environment.
    checked = [runs.straight(1, 0), runs.interrupted(1, 0)]
    for run in checked:
        assert SECRET not in run.stdout and SECRET not in run.stderr
    # Their run directories (config, metrics, checkpoints, W&B files and logs)
    # and W&B's own config/cache directories.
    places = [run.run_dir for run in checked] + sorted(runs.root.glob("wandb-*"))
    files = [p for place in places for p in place.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)  # W&B did write its files
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []


def test_each_attempt_records_its_startup_phases(runs):
    # Operators (and the start-up and recovery benchmarks) read these.
    records = runs.interrupted(1, 0).records("startup")
    assert [r["step"] for r in records] == [0, HALF]  # the first attempt, then the resume
    phases = ("process_to_fit_s", "distributed_init_s", "data_loaders_s",
              "model_and_engine_s", "checkpoint_load_s", "first_step_s")  # fmt: skip
    for record in records:
        assert all(record[p] >= 0 for p in phases)
        assert record["first_step_at"] > record["fit_started_at"]
    # Resuming loads a checkpoint; a fresh start loads nothing.
    assert records[1]["checkpoint_load_s"] > records[0]["checkpoint_load_s"]
