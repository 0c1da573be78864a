"""The run's guards, caused for real with the fault injector (train/faults.py):
non-finite losses under each anomaly policy, a diverging run, a hung rank and a
straggler, with real DeepSpeed in 1 and 2 processes.

The reference runs are the session's straight runs (tests/train/conftest.py):
a fault at step 5 leaves steps 1-4 identical to them.
"""

from __future__ import annotations

import json
import math
import shutil
import time

import pytest

from tests.train.conftest import (
    STEPS,
    copy_run,
    gpt_args,
    run_train,
    wandb_history_steps,
    wandb_records,
)
from train.checkpoint import newest_complete, step_dir
from train.guards.record import GUARDS_FILE

pytestmark = pytest.mark.timeout(600)
FAULT_STEP = 5


def _faults(*specs: str) -> str:
    return "faults=[" + ", ".join(specs) + "]"


def _one_line_error(run) -> str:
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("gobig: error:")]
    assert len(set(lines)) == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    return lines[0]


def test_nan_loss_on_one_rank_withholds_the_update_on_every_rank(runs, tmp_path):
    """Policy skip, 2 ranks at ZeRO-2, NaN on rank 1 only; rank 1 is also slow (a
    straggler). The update is withheld everywhere, training goes on healthy, and a
    replay from the checkpoint before it withholds the same update."""
    straight = runs.straight(2, 2)
    faults = _faults(
        f"{{kind: nan_loss, step: {FAULT_STEP}, rank: 1}}",
        "{kind: slow, step: 1, rank: 1, seconds: 0.25}",
    )
    args = gpt_args(runs.text, 2, 2, faults, "guards.straggler_patience=2")
    run = run_train(args, tmp_path / "nan", nproc=2).check()
    anomalies = run.records("anomaly")
    assert [(a["step"], a["reason"]) for a in anomalies] == [(FAULT_STEP, "non-finite loss")]
    losses, want = run.losses(), straight.losses()
    assert {s: losses[s] for s in range(1, FAULT_STEP)} == {
        s: want[s] for s in range(1, FAULT_STEP)
    }
    assert math.isfinite(losses[STEPS])  # no NaN reached the weights or the moments
    assert losses[STEPS] != want[STEPS]  # one update fewer than the straight run
    record = json.loads((run.run_dir / GUARDS_FILE).read_text())
    assert record["skipped_updates"] == [FAULT_STEP]
    assert "gobig: straggler: rank 1 (host" in run.stderr

    # Replay from the checkpoint before the anomaly: no fault this time, the
    # record alone withholds the update, and step 6 comes out bit for bit.
    replay_dir = copy_run(run, tmp_path / "replay")
    shutil.rmtree(step_dir(replay_dir, STEPS))
    replay = run_train([], replay_dir, nproc=2, resume=True).check()
    assert replay.losses()[STEPS] == losses[STEPS]


def test_rollback_skips_the_batches_and_a_fresh_run_reproduces_it(runs, tmp_path):
    """Policy rollback: back to the step-3 checkpoint, the batches of step 5
    skipped; a new run given the same guard record trains the same losses."""
    straight = runs.straight(1, 0)
    extra = [_faults(f"{{kind: nan_loss, step: {FAULT_STEP}}}"), "guards.anomaly_policy=rollback",
             "logging.wandb.mode=offline"]  # fmt: skip
    run = run_train(gpt_args(runs.text, 1, 0, *extra), tmp_path / "rollback").check()
    assert f"resumed from {step_dir(run.run_dir, 3)} at step 3" in run.stdout
    losses, want = run.losses(), straight.losses()
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert [losses[s] for s in range(1, FAULT_STEP)] == [want[s] for s in range(1, FAULT_STEP)]
    assert losses[FAULT_STEP] != want[FAULT_STEP]  # trained on the next batches
    record = json.loads((run.run_dir / GUARDS_FILE).read_text())
    (skipped,) = record["skipped_batches"]
    assert skipped["step"] == FAULT_STEP and skipped["micro_batches"] == 1
    assert skipped["from"]["cursor"] != skipped["to"]["cursor"]  # the skipped sample range
    assert [a["step"] for a in run.records("anomaly")] == [FAULT_STEP]
    # W&B: each step sent once, in order, though steps 4-5 were trained twice; the
    # anomaly is in the run's summary.
    assert wandb_history_steps(run.run_dir) == list(range(1, STEPS + 1))
    summary = {
        item.key: json.loads(item.value_json)
        for _, rec in wandb_records(run.run_dir)
        if rec.WhichOneof("record_type") == "summary"
        for item in rec.summary.update
    }
    assert summary["anomalies"] == 1
    assert summary["last_anomaly"].startswith(f"step {FAULT_STEP}: non-finite loss")

    # The same record, no fault: the run that skips those samples from the start.
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    (fresh_dir / GUARDS_FILE).write_text(json.dumps({"skipped_batches": [skipped]}))
    extra = ["logging.wandb.mode=disabled"]
    fresh = run_train(gpt_args(runs.text, 1, 0, *extra), fresh_dir).check()
    assert fresh.losses() == losses


def test_stop_policy_ends_with_one_line_naming_the_step(runs, tmp_path):
    extra = [_faults("{kind: nan_loss, step: 4}"), "guards.anomaly_policy=stop"]
    run = run_train(gpt_args(runs.text, 1, 0, *extra), tmp_path / "stop")
    assert run.returncode == 2
    line = _one_line_error(run)
    assert "step 4: training diverged: non-finite loss (guards.anomaly_policy=stop)" in line
    assert f"newest healthy checkpoint: {step_dir(run.run_dir, 3)}" in line


def test_a_loss_spike_is_an_anomaly(runs, tmp_path):
    """Six standard deviations over the window of healthy losses: withheld, recorded."""
    extra = [_faults(f"{{kind: loss_spike, step: {FAULT_STEP}, factor: 100}}"),
             "guards.spike_min_steps=3", "logging.wandb.mode=disabled"]  # fmt: skip
    run = run_train(gpt_args(runs.text, 1, 0, *extra), tmp_path / "spike").check()
    (anomaly,) = run.records("anomaly")
    assert anomaly["step"] == FAULT_STEP and anomaly["reason"].startswith("loss spike (")
    assert math.isfinite(anomaly["loss"])
    assert "anomaly @ step 5: loss spike" in run.stdout


def test_the_spike_window_survives_a_resume(runs, tmp_path):
    """Three healthy losses before the stop at step 3 are the window that judges a
    spike at step 5 after the resume (the window is in each rank's checkpoint file)."""
    extra = ["guards.spike_min_steps=3", "logging.wandb.mode=disabled", "train.max_steps=3"]
    run_dir = tmp_path / "window"
    run_train(gpt_args(runs.text, 1, 0, *extra), run_dir).check()
    spike = _faults(f"{{kind: loss_spike, step: {FAULT_STEP}}}")
    resumed = run_train([f"train.max_steps={STEPS}", spike], run_dir, resume=True).check()
    assert [a["step"] for a in resumed.records("anomaly")] == [FAULT_STEP]


def test_a_diverging_run_stops_with_one_clear_line(runs, tmp_path):
    """The classic blow-up: a huge lr, no clipping, bf16 under ZeRO-2."""
    extra = ["optim.lr=1e4", "optim.grad_clip=0", "train.precision=bf16", "train.max_steps=60",
             "train.checkpoint_every=2"]  # fmt: skip
    run = run_train(gpt_args(runs.text, 1, 2, *extra), tmp_path / "diverge")
    assert run.returncode == 2
    line = _one_line_error(run)
    assert "training diverged: 5 anomalies within 100 steps" in line
    first = run.records("anomaly")[0]["step"]
    # Checkpoints due at anomalous steps were never written: the newest is healthy.
    newest = newest_complete(run.run_dir, warn=False)
    assert newest is not None and int(newest.name.split("_")[1]) < first
    assert f"newest healthy checkpoint: {newest}" in line and "lower optim.lr" in line


def test_a_rank_stuck_inside_a_step_ends_the_run_naming_it(runs, tmp_path):
    """Without Ray: rank 1 blocks in its step; rank 0's collective times out after
    train.hang_timeout_s and names rank 1; the stuck rank's watchdog ends it."""
    extra = [_faults("{kind: hang, step: 2, rank: 1}"), "train.hang_timeout_s=8"]
    started = time.monotonic()
    run = run_train(gpt_args(runs.text, 2, 2, *extra), tmp_path / "hung", nproc=2, timeout=180)
    assert run.returncode != 0
    assert time.monotonic() - started < 150
    pid = json.loads((run.run_dir / "workers" / "beacons" / "rank_00001.json").read_text())["pid"]
    assert (
        "step 2: rank 0 (host " in run.stderr
        and "gave up waiting after 8 s for rank 1 (host " in run.stderr
        and f"pid {pid}): at step 1" in run.stderr
    ), run.stderr[-3000:]
    assert "(train.hang_timeout_s=8)" in run.stderr
    assert "rank 1 (host " in run.stderr and "stuck at faults.py" in run.stderr
