"""The worker's data: train and validation loaders derived from the config.

Loaders come from data_pipeline; this module maps `data.*`, `model.*` and
`train.*` keys onto their options (the family adds its own,
train/families.py) and checks that data and model agree (vocabulary, image
size, classes or labels) before any step is taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from data_pipeline import build_loader
from train.config.load import ConfigError
from train.config.schema import ExperimentConfig
from train.distributed import DistInfo
from train.families import family_of


class EvalBatches:
    """Validation batches that start from the same place at every evaluation."""

    def __init__(self, loader: Any):
        self.loader = loader
        self.start = loader.state_dict()

    def __iter__(self) -> Iterator[dict]:
        self.loader.load_state_dict(self.start)
        return iter(self.loader)


def build_loaders(config: ExperimentConfig, dist: DistInfo) -> tuple[Any, EvalBatches]:
    """This rank's (train loader, validation batches)."""
    family = family_of(config.model)
    common: dict[str, Any] = dict(
        batch_size=config.train.micro_batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        seed=config.train.seed,
        num_workers=config.data.num_workers,
        on_error=config.data.on_error,
        tokenizer=config.data.tokenizer,
        **family.loader_options(config),
    )
    train_loader = build_loader(family.name, config.data.source, split="train", **common)
    val_source = config.data.val_source or config.data.source
    # Shuffled with the run's seed and restarted at every evaluation: a subset of
    # `train.eval_batches` batches is the same mixed sample each time, not the first
    # shards' records (which may hold a few classes or one part of the text).
    val_common = {**common, "num_workers": 0, "shuffle": True, **family.val_loader_options()}
    val_loader = build_loader(family.name, val_source, split="val", **val_common)
    family.check_fits_data(config, train_loader)
    if val_loader.classes != train_loader.classes:  # a class index must mean one class
        raise ConfigError(
            f"the validation data {val_source} has classes {val_loader.classes}, the "
            f"training data {config.data.source} has {train_loader.classes}"
        )
    return train_loader, EvalBatches(val_loader)
