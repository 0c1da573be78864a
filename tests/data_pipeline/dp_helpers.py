"""Helpers of the data pipeline tests: data paths, synthetic datasets, batch readers.

(A module of its own, not conftest.py: several conftest modules exist in the test tree,
so `from conftest import ...` would be ambiguous.)
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline.manifest import Manifest
from data_pipeline.shard_writer import SplitShardWriter
from data_pipeline.tokenizer import MODEL_FILE, Tokenizer

# shared/ sits beside the repository (here and in CI's fresh clone)
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare.txt"
CIFAR_TAR = SHARED / "cifar10-train.tar"

# Uneven on purpose: 3 shards of 7, 3 and 11 documents (images: 4 shards).
TEXT_SHARD_DOCS = (7, 3, 11)
IMAGE_SHARD_IMAGES = (9, 2, 7, 5)


def _write_groups(writer: SplitShardWriter, groups: list[list[tuple[dict, int]]]) -> None:
    """Write each group of (sample, tokens) as exactly one shard."""
    for group in groups:
        for i, (sample, tokens) in enumerate(group):
            writer.max_bytes = 0 if i == 0 else 1 << 40  # 0: the first sample opens a shard
            writer.write(sample, tokens=tokens)


def write_token_dataset(
    out: Path, tok: Tokenizer, shard_docs: tuple[int, ...], seed: int = 0, split: str = "train"
) -> list[np.ndarray]:
    """Synthetic text shards (random ids, 1-30 tokens per doc); the documents written."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tok.path, out / MODEL_FILE)
    rng = np.random.default_rng(seed)
    docs: list[np.ndarray] = []
    groups = []
    for n in shard_docs:
        group = []
        for _ in range(n):
            ids = rng.integers(tok.first_normal_id, tok.vocab_size, size=rng.integers(1, 31))
            buf = io.BytesIO()
            np.save(buf, ids.astype("<u2"), allow_pickle=False)
            group.append(({"__key__": f"{len(docs):09d}", "tokens.npy": buf.getvalue()}, len(ids)))
            docs.append(ids)
        groups.append(group)
    writer = SplitShardWriter(out, split, max_bytes=1 << 40, tokenizer=tok.hash)
    _write_groups(writer, groups)
    Manifest(
        kind="text",
        shards=writer.close(),
        dtype="uint16",
        tokenizer={"hash": tok.hash, "vocab_size": tok.vocab_size, "file": MODEL_FILE},
    ).save(out)
    return docs


def write_image_dataset(out: Path, shard_images: tuple[int, ...], size: int = 8) -> int:
    """Synthetic image shards: image i is a solid colour whose red value is i (PNG)."""
    out.mkdir(parents=True, exist_ok=True)
    groups, i = [], 0
    for n in shard_images:
        group = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (size, size), (i, 255 - i, (7 * i) % 256)).save(buf, format="PNG")
            group.append(
                ({"__key__": f"{i:08d}", "png": buf.getvalue(), "cls": str(i % 3).encode()}, 0)
            )
            i += 1
        groups.append(group)
    writer = SplitShardWriter(out, "train", max_bytes=1 << 40)
    _write_groups(writer, groups)
    Manifest(
        kind="image",
        shards=writer.close(),
        classes=["a", "b", "c"],
        image_size=size,
        class_counts={},
    ).save(out)
    return i


def image_ids(batch_images, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> list[int]:
    """Recover the synthetic image ids (red value) from normalised image tensors."""
    red = batch_images[:, 0, 0, 0].numpy() * std[0] + mean[0]
    return [int(round(v * 255)) for v in red]


def gpt_rows(batch) -> list[tuple[int, ...]]:
    """Each GPT row as its full window (inputs + the last label): the item's identity."""
    full = np.concatenate([batch["input_ids"].numpy(), batch["labels"].numpy()[:, -1:]], axis=1)
    return [tuple(r) for r in full.tolist()]


def take(loader, n: int | None = None) -> list[dict]:
    """The next n batches (all remaining of a finite loader when n is None)."""
    out = []
    for batch in loader:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out
