"""Evaluation over a subset (`train.eval_batches`) draws a mixed sample of the
validation split, and the same one at every evaluation."""

from __future__ import annotations

import pytest
import torch

from data_pipeline import write_image_shards
from train.config import load_config
from train.data import build_loaders
from train.distributed import DistInfo

pytestmark = pytest.mark.timeout(120)


def test_evaluation_subset_covers_every_class_and_repeats(tmp_path, cifar_tar_head):
    data = tmp_path / "cifar"
    # validation shards in class order, as shards written elsewhere may be: ~20 per shard
    write_image_shards(
        cifar_tar_head, data, val_fraction=0.5, max_per_class=60, shard_size="100KB",
        shuffle_seed=None, progress=False,
    )  # fmt: skip
    config = load_config(
        None,
        ["model.name=vit-tiny", f"data.source={data}", "train.micro_batch_size=16",
         "train.eval_batches=4", "cluster.num_workers=1"],
    )  # fmt: skip
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    _, val = build_loaders(config, dist)

    def subset() -> list[int]:
        labels = []
        for i, batch in enumerate(val):
            if i == config.train.eval_batches:
                break
            labels += batch["labels"].tolist()
        return labels

    first = subset()
    assert len(first) == 64 and set(first) == set(range(10))  # in file order: 3 classes
    assert subset() == first
