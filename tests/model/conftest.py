"""Shared helpers for the model tests: small configs and matching batches."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model import ModelConfig

SMALL = {
    "gpt": dict(n_layer=2, n_head=4, d_model=32, max_seq_len=16, vocab_size=64),
    "bert": dict(n_layer=2, n_head=4, d_model=32, max_seq_len=16, vocab_size=64),
    "vit": dict(n_layer=2, n_head=4, d_model=32, image_size=16, patch_size=4, num_classes=5),
    "seq2seq": dict(n_layer=2, n_head=4, d_model=32, max_seq_len=16, vocab_size=64),
}


def _small_config(family: str = "gpt", **overrides: object) -> ModelConfig:
    return ModelConfig(family=family, **{**SMALL[family], **overrides})


def _make_batch(config: ModelConfig, batch_size: int = 2, seq_len: int = 8, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    if config.family == "vit":
        size = (batch_size, config.in_channels, config.image_size, config.image_size)
        return {
            "images": torch.randn(size, generator=gen),
            "labels": torch.randint(config.num_classes, (batch_size,), generator=gen),
        }
    ids = torch.randint(config.vocab_size, (batch_size, seq_len), generator=gen)
    if config.family == "seq2seq":
        # Source of seq_len (the first one padded at the end), a target as long.
        target = torch.randint(config.vocab_size, (batch_size, seq_len), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, -2:] = 0
        labels = torch.roll(target, -1, dims=1)
        labels[:, -1] = -100
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "decoder_input_ids": target,
            "labels": labels,
        }
    batch = {"input_ids": ids, "labels": torch.roll(ids, -1, dims=1)}
    if config.family == "bert":
        labels = torch.full_like(ids, -100)
        labels[:, 1::3] = ids[:, 1::3]
        batch["labels"] = labels
        batch["token_type_ids"] = (torch.arange(seq_len) >= seq_len // 2).long().expand_as(ids)
        if config.pair_head != "none":
            batch["pair_labels"] = torch.randint(2, (batch_size,), generator=gen)
        if config.num_labels > 0:
            batch["class_labels"] = torch.randint(config.num_labels, (batch_size,), generator=gen)
    return batch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each model test on one intra-op thread.

    These shapes are tiny: a second thread buys nothing, and on a busy 2-core
    machine torch's spinning worker threads made one 150-step overfit take 77 s
    instead of 2 s. Nothing here is about threading; the old count comes back after.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_config() -> Callable[..., ModelConfig]:
    """Factory: a tiny config of the given family, with field overrides."""
    return _small_config


@pytest.fixture
def make_batch() -> Callable[..., dict]:
    """Factory: a random batch in the compute_loss format of config.family."""
    return _make_batch
