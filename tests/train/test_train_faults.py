"""The fault injector's checkpoint faults, through the config as a user would give
them: a full disk where no small file system can be mounted, and a crash in the
middle of a checkpoint write. Both runs resume to the straight run's losses."""

from __future__ import annotations

import signal

import pytest

from tests.train.conftest import HALF, STEPS, gpt_args, run_train
from train.checkpoint import step_dir, verify

pytestmark = pytest.mark.timeout(600)
QUIET = "logging.wandb.mode=disabled"


def test_fill_disk_fails_the_save_in_one_line_and_resume_recovers(runs, tmp_path):
    straight = runs.straight(1, 0)
    fault = f"faults=[{{kind: fill_disk, step: {STEPS}}}]"  # the second checkpoint
    run = run_train(gpt_args(runs.text, 1, 0, fault, QUIET), tmp_path / "full")
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    (line,) = [ln for ln in run.stderr.splitlines() if ln.startswith("gobig: error:")]
    assert "no space left on device" in line and step_dir(run.run_dir, STEPS).name in line
    assert not step_dir(run.run_dir, STEPS).exists()  # the partial checkpoint is gone
    assert verify(step_dir(run.run_dir, HALF)) is None  # the previous one is kept
    resumed = run_train([], run.run_dir, resume=True).check()
    assert resumed.losses() == straight.losses()


def test_kill_during_save_leaves_an_unmarked_checkpoint_that_resume_skips(runs, tmp_path):
    straight = runs.straight(1, 0)
    fault = f"faults=[{{kind: kill_during_save, step: {STEPS}}}]"
    run = run_train(gpt_args(runs.text, 1, 0, fault, QUIET), tmp_path / "killed")
    assert run.returncode == -signal.SIGKILL
    last = step_dir(run.run_dir, STEPS)
    assert last.is_dir() and verify(last) == "not marked complete"
    resumed = run_train([], run.run_dir, resume=True).check()
    assert f"skipping checkpoint {last}" in resumed.stderr
    assert f"resumed from {step_dir(run.run_dir, HALF)}" in resumed.stdout
    assert resumed.losses() == straight.losses()
