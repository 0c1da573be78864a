"""Turning items into batch rows: GPT shift, BERT masking and pairs, ViT augmentation.

Every random choice for item i of epoch e uses a generator seeded with (seed, e, i), so a
row is the same whichever rank or worker builds it and after any resume.

ViT: the loader emits whole normalised images [B, C, H, W]; the model cuts them into
patches (its patch embedding is a strided convolution).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from data_pipeline.errors import DataError
from data_pipeline.order import SALT_TRANSFORM, rng_for

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gpt_batch(rows: list[np.ndarray]) -> dict[str, np.ndarray]:
    """{"input_ids", "labels"} from windows of T+1 tokens: labels are inputs shifted by one."""
    arr = np.stack(rows).astype(np.int64)
    return {
        "input_ids": np.ascontiguousarray(arr[:, :-1]),
        "labels": np.ascontiguousarray(arr[:, 1:]),
    }


@dataclass(frozen=True)
class BertSpec:
    """What BERT masking needs to know."""

    cls_id: int
    sep_id: int
    mask_id: int
    first_normal_id: int  # ids below are special: never selected, never used as noise
    vocab_size: int
    mask_prob: float = 0.15
    pairs: bool = False


def bert_row(
    window: np.ndarray, spec: BertSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(input_ids, token_type_ids, labels, pair_label) of one window.

    Without pairs: [CLS] x [SEP]. With pairs (sentence-order prediction): the window is cut
    at a random point into A and B; with probability 1/2 they are swapped (pair_label 1):
    [CLS] A [SEP] B [SEP], segment ids 0 for [CLS] A [SEP] and 1 for B [SEP].
    Masking: exactly round(mask_prob * n) of the n maskable tokens are selected; of those
    80% become [MASK], 10% a random normal token, 10% stay. Labels are -100 elsewhere.
    """
    toks = window.astype(np.int64)
    pair_label = -1
    if spec.pairs:
        cut = int(rng.integers(1, len(toks)))
        a, b = toks[:cut], toks[cut:]
        pair_label = int(rng.integers(0, 2))
        if pair_label:
            a, b = b, a
        ids = np.concatenate([[spec.cls_id], a, [spec.sep_id], b, [spec.sep_id]])
        types = np.zeros(len(ids), dtype=np.int64)
        types[len(a) + 2 :] = 1
    else:
        ids = np.concatenate([[spec.cls_id], toks, [spec.sep_id]])
        types = np.zeros(len(ids), dtype=np.int64)
    labels = np.full(len(ids), -100, dtype=np.int64)
    candidates = np.flatnonzero(ids >= spec.first_normal_id)
    n_sel = int(round(spec.mask_prob * len(candidates)))
    if n_sel:
        sel = rng.choice(candidates, size=n_sel, replace=False)
        labels[sel] = ids[sel]
        action = rng.random(n_sel)
        ids = ids.copy()
        ids[sel[action < 0.8]] = spec.mask_id
        noise = sel[(action >= 0.8) & (action < 0.9)]
        ids[noise] = rng.integers(spec.first_normal_id, spec.vocab_size, size=len(noise))
    return ids, types, labels, pair_label


def bert_batch(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]], pairs: bool
) -> dict[str, np.ndarray]:
    """Stack BERT rows; no padding is ever needed (windows are packed), so the mask is 1."""
    ids = np.stack([r[0] for r in rows])
    batch = {
        "input_ids": ids,
        "token_type_ids": np.stack([r[1] for r in rows]),
        "attention_mask": np.ones_like(ids),
        "labels": np.stack([r[2] for r in rows]),
    }
    if pairs:
        batch["pair_labels"] = np.array([r[3] for r in rows], dtype=np.int64)
    return batch


@dataclass(frozen=True)
class VitSpec:
    """Image size, augmentation switch and normalisation constants."""

    image_size: int | None
    augment: bool
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def vit_row(data: bytes, spec: VitSpec, rng: np.random.Generator) -> np.ndarray:
    """A normalised CHW float32 image.

    Decode to RGB, resize to image_size when it differs; when augmenting: reflect-pad by
    size/8, take a random size x size crop, flip horizontally with probability 1/2.
    """
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        size = spec.image_size
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.uint8)
    if spec.augment:
        h, w = arr.shape[:2]
        pad = max(1, h // 8)
        padded = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        y, x = rng.integers(0, 2 * pad + 1, size=2)
        arr = padded[y : y + h, x : x + w]
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
    out = arr.astype(np.float32) * (1.0 / 255.0)
    out = (out - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def vit_batch(rows: list[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
    """{"images": [B, C, H, W] float32, "labels": [B] int64}."""
    shapes = {r[0].shape for r in rows}
    if len(shapes) > 1:
        raise DataError(f"images differ in size {sorted(shapes)}; set data.image_size")
    return {
        "images": np.stack([r[0] for r in rows]),
        "labels": np.array([r[1] for r in rows], dtype=np.int64),
    }


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The batch as torch tensors, without copying. Producers hand numpy arrays across
    processes: pickling small arrays is cheaper than torch's shared-memory handles."""
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def transform_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for item `index` of `epoch`."""
    return rng_for(seed, epoch, SALT_TRANSFORM, index)
