"""ZeRO stages 0-3 and CPU offload follow the same loss trajectory (2 processes, gloo).

The data order, initial weights and dropout masks do not depend on the stage,
so every stage must reproduce stage 0's losses up to float reassociation.
"""

from __future__ import annotations

import pytest

from tests.train.conftest import STEPS, gpt_args, run_train
from train.checkpoint import newest_complete, read_meta
from train.checkpoint.weights import safe_load

pytestmark = pytest.mark.timeout(600)


def _assert_same_trajectory(run, reference, rtol: float) -> None:
    got, want = run.records(), reference.records()
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["step"] for r in want] == list(range(1, STEPS + 1))
    for mine, ref in zip(got, want, strict=True):
        assert mine["loss"] == pytest.approx(ref["loss"], rel=rtol), mine["step"]
        assert mine["grad_norm"] == pytest.approx(ref["grad_norm"], rel=10 * rtol), mine["step"]
        assert mine["lr"] == pytest.approx(ref["lr"], rel=1e-9)
    got_eval, want_eval = run.records("eval"), reference.records("eval")
    assert [r["step"] for r in got_eval] == [r["step"] for r in want_eval] != []
    for mine, ref in zip(got_eval, want_eval, strict=True):
        assert mine["val_loss"] == pytest.approx(ref["val_loss"], rel=rtol)
    assert got[-1]["loss"] < got[0]["loss"]  # it learns


def _ds_config(run) -> dict:
    # ZeRO-3 names its (weightless) module files per rank; the others have one.
    files = sorted((newest_complete(run.run_dir) / "deepspeed").glob("*model_states.pt"))
    return safe_load(files[0])["ds_config"]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_match_stage_0(runs, stage):
    reference = runs.straight(2, 0)
    run = runs.straight(2, stage)
    _assert_same_trajectory(run, reference, rtol=1e-4)
    assert reference.records()[0]["grad_norm"] > 0  # stage 0 reports a real norm too
    # The stage really was `stage`, with one optimizer shard per rank.
    ckpt = newest_complete(run.run_dir)
    assert read_meta(ckpt)["zero_stage"] == stage
    shards = sorted(p.name for p in (ckpt / "deepspeed").glob("*optim_states.pt"))
    assert len(shards) == 2, shards
    assert _ds_config(run)["zero_optimization"]["stage"] == stage


@pytest.mark.timeout(900)  # DeepSpeedCPUAdam JIT-compiles on first use (cached afterwards)
@pytest.mark.parametrize(
    ("stage", "offload"),
    [
        (2, ["zero.offload_optimizer=true"]),
        (3, ["zero.offload_optimizer=true", "zero.offload_params=true"]),
    ],
    ids=["z2-optimizer", "z3-optimizer-and-params"],
)
def test_cpu_offload_runs_and_matches(runs, tmp_path, stage, offload):
    args = gpt_args(runs.text, 2, stage, *offload)
    run = run_train(args, tmp_path / "offload", nproc=2, timeout=800).check()
    # DeepSpeed's CPU Adam (not torch's AdamW) does the update: close, not bitwise.
    _assert_same_trajectory(run, runs.straight(2, 0), rtol=1e-4)
    zero = _ds_config(run)["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    if stage == 3:
        assert zero["offload_param"]["device"] == "cpu"
