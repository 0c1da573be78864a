"""Asynchronous checkpoints: a forked child writes a copy-on-write snapshot while
training goes on; the checkpoint is marked complete only once every rank's write
has finished, and a failed write fails loudly instead of being marked."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
import torch

from tests.train.conftest import HALF, STEPS, copy_run, gpt_args, run_train
from train.checkpoint import MARKER, CheckpointError, read_meta, step_dir, verify
from train.checkpoint.background import BackgroundWrite, write_files

pytestmark = pytest.mark.timeout(600)


def test_child_writes_the_state_as_it_was_at_the_fork(tmp_path):
    weights = torch.arange(1_000_000, dtype=torch.float32)
    expected = weights.clone()
    write = BackgroundWrite([(str(tmp_path / "w.pt"), {"w": weights})], tmp_path)
    weights.add_(1.0)  # the next optimizer step, while the child may still be writing
    write.wait()
    assert write.seconds is not None and write.seconds > 0
    saved = torch.load(tmp_path / "w.pt", weights_only=True)["w"]
    assert torch.equal(saved, expected) and not torch.equal(saved, weights)


def test_a_failed_or_killed_write_is_an_error(tmp_path):
    unpicklable = {"f": lambda: 0}
    write = BackgroundWrite([(str(tmp_path / "bad.pt"), unpicklable)], tmp_path)
    with pytest.raises(CheckpointError, match="bad.pt: .*pickle"):  # the child's own line
        write.wait()
    big = {"w": torch.zeros(50_000_000)}
    write = BackgroundWrite([(str(tmp_path / "big.pt"), big)], tmp_path)
    os.kill(write.pid, signal.SIGKILL)
    with pytest.raises(CheckpointError, match="killed by signal 9"):
        while not write.done():
            pass


def test_write_files_flushes_what_it_wrote(tmp_path):
    write_files([(str(tmp_path / "sub" / "a.pt"), {"x": torch.ones(3)})], tmp_path)
    assert torch.equal(torch.load(tmp_path / "sub" / "a.pt", weights_only=True)["x"],
                       torch.ones(3))  # fmt: skip


@pytest.mark.parametrize(("nproc", "stage"), [(1, 0), (2, 2)])
def test_background_checkpoints_change_nothing_and_resume_exactly(runs, text_dataset, tmp_path,
                                                                  nproc, stage):  # fmt: skip
    straight = runs.straight(nproc, stage)  # synchronous checkpoints at N and 2N
    args = gpt_args(text_dataset, nproc, stage, "checkpoint.asynchronous=true")
    run = run_train(args, tmp_path / "async", nproc=nproc).check()
    assert run.losses() == straight.losses()  # training does not see the writer
    records = {r["step"]: r for r in run.records("checkpoint")}
    # The periodic checkpoint is written in the background, the last one at once.
    assert records[HALF]["background"] is True and records[STEPS]["background"] is False
    assert records[HALF]["blocking_s"] < records[HALF]["write_s"] + 1.0
    assert f"checkpoint @ step {HALF}: written in the background" in run.stdout
    half = step_dir(run.run_dir, HALF)
    assert verify(half) is None and read_meta(half)["step"] == HALF
    # The background checkpoint resumes to the same losses as the straight run.
    resumed_dir = copy_run(run, tmp_path / "resumed")
    shutil.rmtree(step_dir(resumed_dir, STEPS))
    resumed = run_train([], resumed_dir, nproc=nproc, resume=True).check()
    got = resumed.losses()
    assert [got[s] for s in range(HALF + 1, STEPS + 1)] == [
        straight.losses()[s] for s in range(HALF + 1, STEPS + 1)
    ]
    assert (step_dir(resumed_dir, STEPS) / MARKER).is_file()
