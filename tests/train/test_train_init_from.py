"""`model.init_from`: a new run starts from another run's weights, under ZeRO-3 with
2 ranks; tensors are matched by name and shape; a resumed run never needs the source;
a ViT fine-tunes onto another number of classes with a fresh head."""

from __future__ import annotations

import dataclasses
import math
import shutil
import tarfile

import pytest
import torch

from data_pipeline import write_image_shards
from model import build_model
from tests.train.conftest import gpt_args, run_train
from train.checkpoint import read_meta
from train.export import ExportError, consolidated_model, resolve_checkpoint
from train.init_weights import load_initial_weights
from train.rng import seed_all


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


VIT = [
    "model.name=vit-tiny", "model.n_layer=2", "model.n_head=2", "model.d_model=64",
    "model.image_size=32", "model.patch_size=8", "model.dropout=0.0",
    "train.micro_batch_size=4", "train.max_steps=2", "train.log_every=1", "train.eval_every=2",
    "train.eval_batches=2", "train.checkpoint_every=2", "optim.warmup_steps=1",
    "logging.wandb.mode=disabled", "cluster.num_workers=1", "zero.stage=2",
]  # fmt: skip


def _image_shards(cifar_tar, out, classes: int):
    """Shards of the first `classes` CIFAR-10 classes (by name), 12 images each."""
    tar = out.with_suffix(".tar")
    with tarfile.open(cifar_tar) as src, tarfile.open(tar, "w") as dst:
        members = [m for m in src.getmembers() if m.isfile()]
        keep = sorted({m.name.split("/")[-2] for m in members})[:classes]
        for m in members:
            if m.name.split("/")[-2] in keep:
                dst.addfile(m, src.extractfile(m))
    write_image_shards(tar, out, val_fraction=0.25, max_per_class=12, shard_size="32KB",
                       progress=False)  # fmt: skip
    return out


def test_vit_fine_tunes_onto_another_number_of_classes(cifar_tar_head, tmp_path):
    ten, three = (_image_shards(cifar_tar_head, tmp_path / f"cifar{n}", n) for n in (10, 3))
    source = run_train([*VIT, "model.num_classes=10", f"data.source={ten}", "optim.lr=2e-3"],
                       tmp_path / "source").check()  # fmt: skip
    # A vanishing lr: after the steps the weights are still the ones the run started from.
    tuned = run_train(
        [*VIT, "model.num_classes=3", f"data.source={three}", f"model.init_from={source.run_dir}",
         "optim.lr=1e-30", "optim.min_lr=0"], tmp_path / "tuned",
    ).check()  # fmt: skip
    src_model, _ = consolidated_model(resolve_checkpoint(source.run_dir))
    got_model, _ = consolidated_model(ckpt := resolve_checkpoint(tuned.run_dir))
    want, got = src_model.state_dict(), got_model.state_dict()
    seed_all(read_meta(ckpt)["config"]["train"]["seed"])  # the run's fresh model, as it built it
    fresh = build_model(dataclasses.replace(got_model.config, init_from=None)).state_dict()

    head = sorted(k for k in want if k.startswith("head."))
    assert head == ["head.bias", "head.weight"] and sorted(got) == sorted(want)
    for name in sorted(set(want) - set(head)):  # loaded: the source's, not a fresh one
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0, msg=name)
        assert not torch.allclose(fresh[name], want[name], atol=1e-6, rtol=0), name
    for name in head:  # new: the fresh 3-class head, not a slice of the 10-class one
        assert want[name].shape[0] == 10 and got[name].shape == (3, *want[name].shape[1:])
        torch.testing.assert_close(got[name], fresh[name], atol=1e-6, rtol=0, msg=name)
    assert not torch.allclose(got["head.weight"], want["head.weight"][:3], atol=1e-3)
    names = ", ".join(head)
    line = (f"init_from {resolve_checkpoint(source.run_dir)}: loaded {len(want) - 2} tensors, "
            f"newly initialised 2 ({names}), dropped 2 ({names})")  # fmt: skip
    assert line in tuned.stdout and tuned.stdout.count("init_from ") == 1

    # It trains on 3 classes: a fresh head predicts about uniformly, then accuracy is logged.
    losses = [r["loss"] for r in tuned.records()]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(3), abs=0.5)
    (evaluation,) = tuned.records("eval")
    assert evaluation["step"] == 2 and 0 <= evaluation["val_accuracy"] <= 1
    assert math.isfinite(evaluation["val_loss"])
