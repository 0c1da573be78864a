"""`model.init_from`: a new run starts from another run's weights, under ZeRO-3 with
2 ranks; tensors are matched by name and shape; a resumed run never needs the source."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from model import build_model
from tests.train.conftest import gpt_args, run_train
from train.export import ExportError, consolidated_model, resolve_checkpoint
from train.init_weights import load_initial_weights


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return consolidated_model(resolve_checkpoint(run_dir))[0].state_dict()


def test_fine_tuning_under_zero3_starts_from_the_source_weights(runs, tmp_path):
    source = shutil.copytree(runs.straight(1, 0).run_dir, tmp_path / "source")
    # A vanishing lr: after one step the weights are still the source's.
    args = gpt_args(runs.text, 2, 3, f"model.init_from={source}", "optim.lr=1e-30",
                    "optim.min_lr=0", "train.max_steps=1", "train.checkpoint_every=1")  # fmt: skip
    run = run_train(args, tmp_path / "tuned", nproc=2).check()
    want, got = _weights(source), _weights(run.run_dir)
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0, msg=name)
    line = f"init_from {resolve_checkpoint(source)}: loaded {len(want)} tensors"
    assert f"{line}, newly initialised 0, dropped 0" in run.stdout
    assert run.stdout.count("init_from ") == 1  # rank 0 says it once

    # Resuming reads the run's own checkpoint: the source may be gone.
    shutil.rmtree(source)
    resumed = run_train(["train.max_steps=2"], run.run_dir, nproc=2, resume=True).check()
    assert "init_from " not in resumed.stdout and sorted(resumed.losses()) == [1, 2]


def test_tensors_of_another_shape_stay_fresh_and_extra_ones_are_dropped(runs):
    source = runs.straight(1, 0).run_dir
    trained = consolidated_model(resolve_checkpoint(source))[0]
    longer = build_model(dataclasses.replace(trained.config, max_seq_len=64, init_from=None))
    fresh = {k: v.clone() for k, v in longer.state_dict().items()}
    report = load_initial_weights(longer, source)
    changed = {k for k, v in longer.state_dict().items() if not torch.equal(v, fresh[k])}
    assert report.new == report.dropped != []  # the position table, in another shape
    assert set(report.new).isdisjoint(changed) and changed <= set(report.loaded)
    assert len(report.loaded) + len(report.new) == len(fresh)


def test_a_source_that_does_not_fit_is_one_line(runs, tmp_path):
    model = build_model(dataclasses.replace(
        consolidated_model(resolve_checkpoint(runs.straight(1, 0).run_dir))[0].config,
        family="vit", name="custom", image_size=16, patch_size=4, num_classes=3))  # fmt: skip
    with pytest.raises(ExportError, match="no such run or checkpoint directory"):
        load_initial_weights(model, tmp_path / "missing")
    with pytest.raises(ExportError, match="holds a gpt model, this run trains a vit model"):
        load_initial_weights(model, runs.straight(1, 0).run_dir)
