"""The worker's data: train and validation loaders derived from the config.

Loaders come from data_pipeline; this module maps `data.*`, `model.*` and
`train.*` keys onto their options and checks that data and model agree
(vocabulary, image size, classes) before any step is taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from data_pipeline import build_loader
from train.config.load import ConfigError
from train.config.schema import ExperimentConfig
from train.distributed import DistInfo


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
    family = config.model.family
    common: dict[str, Any] = dict(
        batch_size=config.train.micro_batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        seed=config.train.seed,
        num_workers=config.data.num_workers,
        on_error=config.data.on_error,
        tokenizer=config.data.tokenizer,
    )
    if family == "vit":
        common.update(image_size=config.model.image_size, augment=config.data.augment)
    else:
        common.update(seq_len=config.model.max_seq_len, shuffle_buffer=config.data.shuffle_buffer)
    if family == "bert":
        if config.model.pair_head == "nsp":
            raise ConfigError(
                "model.pair_head: the text loader builds sentence-order pairs; use sop, or none"
            )
        common.update(pairs=config.model.pair_head != "none", mask_prob=config.data.mlm_probability)

    train_loader = build_loader(family, config.data.source, split="train", **common)
    val_source = config.data.val_source or config.data.source
    # Shuffled with the run's seed and restarted at every evaluation: a subset of
    # `train.eval_batches` batches is the same mixed sample each time, not the first
    # shards' records (which may hold a few classes or one part of the text).
    val_common = {**common, "num_workers": 0, "shuffle": True}
    if family == "vit":
        val_common["augment"] = False
    val_loader = build_loader(family, val_source, split="val", **val_common)
    _check_model_fits_data(config, train_loader)
    return train_loader, EvalBatches(val_loader)


def _check_model_fits_data(config: ExperimentConfig, loader: Any) -> None:
    m = config.model
    if m.family == "vit":
        classes = len(loader.classes)
        if classes > m.num_classes:
            raise ConfigError(
                f"model.num_classes ({m.num_classes}) is smaller than the {classes} classes "
                f"in {config.data.source}"
            )
    elif loader.vocab_size is not None and loader.vocab_size > m.vocab_size:
        raise ConfigError(
            f"model.vocab_size ({m.vocab_size}) is smaller than the tokenizer's "
            f"vocabulary ({loader.vocab_size}) of {config.data.source}"
        )
