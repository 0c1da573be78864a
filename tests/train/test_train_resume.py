"""Resume: exact (same world size and stage), elastic (another world size and stage),
and falling back past a truncated checkpoint.

Reference runs train 2N steps straight; the others stop at N (or lose their
step-2N checkpoint) and resume. `optim.decay_steps=2N` keeps the lr schedule
of both identical.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.train.conftest import HALF, STEPS, base_env, copy_run, run_train, wandb_history_steps
from train.checkpoint import newest_complete, rank_file, read_meta, step_dir, verify

pytestmark = pytest.mark.timeout(600)


def _data_state(ckpt, rank: int = 0) -> dict:
    return torch.load(rank_file(ckpt, rank), weights_only=True)["data"]


@pytest.mark.parametrize(("nproc", "stage"), [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_exact_resume_gives_identical_losses(runs, nproc, stage):
    straight = runs.straight(nproc, stage)
    resumed = runs.interrupted(nproc, stage)
    assert f"resumed from {step_dir(resumed.run_dir, HALF)} at step {HALF}" in resumed.stdout
    want, got = straight.losses(), resumed.losses()
    assert sorted(got) == list(range(1, STEPS + 1))  # each step once, none lost
    # Bitwise equal, dropout (p=0.1) included: weights, optimizer, schedule,
    # data position and every RNG came back exactly.
    assert [got[s] for s in range(HALF + 1, STEPS + 1)] == [
        want[s] for s in range(HALF + 1, STEPS + 1)
    ]
    assert resumed.records("eval")[-1]["val_loss"] == straight.records("eval")[-1]["val_loss"]
    end_straight = step_dir(straight.run_dir, STEPS)
    end_resumed = step_dir(resumed.run_dir, STEPS)
    assert read_meta(end_resumed)["tokens"] == read_meta(end_straight)["tokens"]
    for rank in range(nproc):
        assert _data_state(end_resumed, rank) == _data_state(end_straight, rank)


def test_elastic_resume_from_2proc_zero3_to_1proc_zero2(runs, tmp_path):
    # Same global batch (2 x 4 = 1 x 8) and no dropout (its masks depend on the
    # rank), so the 1-process continuation must follow the 2-process run.
    straight = runs.straight(2, 3, dropout=0.0)
    run_dir = copy_run(straight, tmp_path / "elastic")
    shutil.rmtree(step_dir(run_dir, STEPS))
    resumed = run_train(
        ["zero.stage=2", "cluster.num_workers=1", "train.micro_batch_size=8"],
        run_dir, resume=True,
    ).check()  # fmt: skip
    assert f"resumed elastically from {step_dir(run_dir, HALF)} at step {HALF}" in resumed.stdout
    want, got = straight.losses(), resumed.losses()
    for step in range(HALF + 1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-4), step
    want_eval, got_eval = straight.records("eval")[-1], resumed.records("eval")[-1]
    assert got_eval["val_loss"] == pytest.approx(want_eval["val_loss"], rel=1e-4)
    # The loader continued the global sample sequence: same position at 2N.
    end = step_dir(run_dir, STEPS)
    assert read_meta(end)["world_size"] == 1 and read_meta(end)["zero_stage"] == 2
    assert read_meta(end)["tokens"] == read_meta(step_dir(straight.run_dir, STEPS))["tokens"]
    assert _data_state(end) == _data_state(step_dir(straight.run_dir, STEPS))


def test_resume_falls_back_past_a_truncated_checkpoint(runs, tmp_path):
    straight = runs.straight(1, 0)
    run_dir = copy_run(straight, tmp_path / "fallback")
    newest = step_dir(run_dir, STEPS)
    victim = newest / "deepspeed" / "mp_rank_00_model_states.pt"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert "truncated" in verify(newest)
    assert newest_complete(run_dir, warn=False) == step_dir(run_dir, HALF)

    resumed = run_train([], run_dir, resume=True, env=base_env(tmp_path, secret=True)).check()
    warning = next(line for line in resumed.stderr.splitlines() if "skipping checkpoint" in line)
    assert str(newest) in warning and "mp_rank_00_model_states.pt" in warning
    assert f"resumed from {step_dir(run_dir, HALF)} at step {HALF}" in resumed.stdout
    want, got = straight.losses(), resumed.losses()
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in range(HALF + 1, STEPS + 1)] == [
        want[s] for s in range(HALF + 1, STEPS + 1)
    ]
    assert verify(newest) is None  # rewritten whole and marked complete again
    # W&B had already seen steps up to 2N: none of them is sent twice.
    steps = wandb_history_steps(run_dir)
    assert sorted(steps) == list(range(1, STEPS + 1))
