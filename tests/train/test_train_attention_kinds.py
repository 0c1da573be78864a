"""Performer and sparse attention in real training runs: the Performer's redrawn features
resume exactly and travel in checkpoints; both kinds (and relative positions) train under
ZeRO-3 with bf16 and activation checkpointing on 2 ranks and resume elastically on 1."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from model.performer import orthogonal_projection
from tests.train.conftest import HALF, STEPS, copy_run, gpt_args, run_train
from train.callbacks.feature_redraw import draw_seed
from train.checkpoint import step_dir
from train.export import consolidated_model

pytestmark = pytest.mark.timeout(600)

SEED = 1337  # train.seed's default
PERFORMER = ["model.attention=performer", "model.performer.features=32",
             "model.performer.redraw_every=2", "model.performer.chunk_size=8"]  # fmt: skip
SPARSE = ["model.attention=sparse", "model.sparse.pattern=strided", "model.sparse.block_size=8",
          "model.sparse.window=2", "model.sparse.stride=2", "model.position=relative"]  # fmt: skip


def _projections(ckpt) -> list[torch.Tensor]:
    model, _ = consolidated_model(ckpt)
    state = model.state_dict()
    return [state[f"transformer.blocks.{i}.attn.kernel.projection"] for i in range(2)]


def test_performer_resumes_exactly_across_feature_redraws(tmp_path, text_dataset):
    args = gpt_args(text_dataset, 1, 0, *PERFORMER)
    straight = run_train(args, tmp_path / "straight").check()
    run_train([*args, f"train.max_steps={HALF}"], tmp_path / "resumed").check()
    resumed = run_train([f"train.max_steps={STEPS}"], tmp_path / "resumed", resume=True).check()
    want, got = straight.losses(), resumed.losses()
    assert all(math.isfinite(x) for x in want.values())
    # Bitwise equal after the resume, across the redraws at steps 3 and 5.
    assert [got[s] for s in range(HALF + 1, STEPS + 1)] == [
        want[s] for s in range(HALF + 1, STEPS + 1)
    ]
    # Each checkpoint holds the draw its last step used: step 3 draw 1, step 6 draw 2,
    # each layer its own, a function of train.seed, the draw and the layer.
    for step, draw in ((HALF, 1), (STEPS, 2)):
        held = _projections(step_dir(straight.run_dir, step))
        for layer, projection in enumerate(held):
            expected = orthogonal_projection(32, 32, draw_seed(SEED, draw, layer))
            assert torch.equal(projection, expected), (step, layer)
    assert not torch.equal(held[0], held[1])


@pytest.mark.parametrize("kind", ["performer", "sparse-relative"])
def test_zero3_bf16_checkpointed_runs_resume_elastically(tmp_path, text_dataset, kind):
    options = PERFORMER if kind == "performer" else SPARSE
    # No dropout: its masks depend on the rank, and the 1-rank run must follow the 2-rank one.
    common = [*options, "train.precision=bf16", "model.activation_checkpointing=true",
              "model.dropout=0.0"]  # fmt: skip
    args = gpt_args(text_dataset, 2, 3, *common)
    straight = run_train(args, tmp_path / "straight", nproc=2).check()
    run_dir = copy_run(straight, tmp_path / "elastic")
    shutil.rmtree(step_dir(run_dir, STEPS))
    resumed = run_train(
        ["zero.stage=2", "cluster.num_workers=1", "train.micro_batch_size=8"],
        run_dir, resume=True,
    ).check()  # fmt: skip
    assert f"resumed elastically from {step_dir(run_dir, HALF)} at step {HALF}" in resumed.stdout
    want, got = straight.losses(), resumed.losses()
    assert want[STEPS] < want[1]  # it learns
    for step in range(HALF + 1, STEPS + 1):  # bf16: the two world sizes round differently
        assert got[step] == pytest.approx(want[step], rel=2e-2), step
