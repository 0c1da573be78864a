"""Fixtures for the data pipeline tests: a small tokenizer, real and synthetic datasets.

Everything is built under pytest's tmp directories from ../shared/data or from numbers;
nothing is copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dp_helpers import (
    IMAGE_SHARD_IMAGES,
    SHAKESPEARE,
    TEXT_SHARD_DOCS,
    write_image_dataset,
    write_token_dataset,
)

from data_pipeline.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="session")
def shakespeare_part(tmp_path_factory) -> Path:
    """The first 150 kB of tinyshakespeare (enough to train and shard quickly)."""
    path = tmp_path_factory.mktemp("text") / "shakespeare-part.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:150_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory, shakespeare_part) -> Tokenizer:
    """A 400-piece BPE tokenizer trained on `shakespeare_part`."""
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer([shakespeare_part], out, vocab_size=400, model_type="bpe")


@pytest.fixture
def token_ds(tmp_path, tokenizer) -> tuple[Path, list[np.ndarray]]:
    """A synthetic 3-shard (7/3/11 docs) text dataset and its documents."""
    out = tmp_path / "tokens"
    return out, write_token_dataset(out, tokenizer, TEXT_SHARD_DOCS)


@pytest.fixture
def image_ds(tmp_path) -> tuple[Path, int]:
    """A synthetic 4-shard (9/2/7/5 images) image dataset and its image count."""
    out = tmp_path / "images"
    return out, write_image_dataset(out, IMAGE_SHARD_IMAGES)
