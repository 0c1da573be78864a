"""Turning items into batch rows: GPT shift, BERT masking and pairs, ViT augmentation.

Every random choice for item i of epoch e is a function of (seed, e, i) alone, so a row is
the same whichever rank or worker builds it and after any resume: BERT rows draw from a
generator seeded with them, ViT crops and flips from a counter-based hash of them.

ViT: the loader emits whole normalised images [B, C, H, W]; the model cuts them into
patches (its patch embedding is a strided convolution). Images are decoded (or taken as
stored pixel arrays) one by one, then augmented and normalised a batch at a time.
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


def vit_image(data: bytes | np.ndarray, size: int | None) -> np.ndarray:
    """An HWC uint8 RGB image from encoded bytes or a stored pixel array, resized to
    `size` x `size` when it differs (stored arrays of the right size are used as they are:
    no decode, no copy)."""
    if isinstance(data, np.ndarray):
        if size is None or data.shape[:2] == (size, size):
            return data
        img = Image.fromarray(data)
    else:
        img = Image.open(io.BytesIO(data))
    with img:
        img = img.convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: well-spread 64-bit values from consecutive ones."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def item_bits(seed: int, epochs: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """64 random bits per item, a function of (seed, epoch, item index) only.

    A counter-based hash computed for a whole batch at once: a generator per image
    (what text rows use) costs more than augmenting the image.
    """
    with np.errstate(over="ignore"):
        key = _mix64(np.uint64(seed) + np.uint64(SALT_TRANSFORM << 56))
        x = _mix64(key ^ _mix64(epochs.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))
        return _mix64(x ^ indices.astype(np.uint64))


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored into [0, n) at the edges (-1 -> 1, n -> n - 2), as reflect padding."""
    index = np.abs(index)
    return np.where(index >= n, 2 * (n - 1) - index, index)


def augment_images(images: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Random crops of reflect-padded images and random horizontal flips, returned as
    [B, C, H, W] from [B, H, W, C].

    Each image is (virtually) padded by H // 8 on every side by mirroring and cropped back
    to H x W at an offset taken from its `bits`; another bit flips it. Crop, flip and the
    move to channels-first are one gather through a flat index: numpy's copies with
    negative strides (flips, mirrored edges) cost ten times more on small images.
    """
    b, h, w, c = images.shape
    pad = max(1, h // 8)
    if pad >= min(h, w):
        raise DataError(f"images of {h}x{w} pixels are too small to augment")
    span = np.uint64(2 * pad + 1)
    ys = (bits % span).astype(np.int64) - pad
    xs = ((bits >> np.uint64(16)) % span).astype(np.int64) - pad
    flip = ((bits >> np.uint64(32)) & np.uint64(1)).astype(bool)
    rows = _reflect(ys[:, None] + np.arange(h), h)  # [B, H]
    cols = xs[:, None] + np.arange(w)
    cols = _reflect(np.where(flip[:, None], cols[:, ::-1], cols), w)  # [B, W]
    index = (
        np.arange(b)[:, None, None, None] * (h * w * c)
        + np.arange(c)[None, :, None, None]
        + rows[:, None, :, None] * (w * c)
        + cols[:, None, None, :] * c
    )  # [B, C, H, W] into the flat [B, H, W, C] batch
    return np.take(images.reshape(-1), index)


def vit_batch(
    rows: list[tuple[np.ndarray, int, int, int]], spec: VitSpec, seed: int
) -> dict[str, np.ndarray]:
    """{"images": [B, C, H, W] float32 normalised, "labels": [B] int64} from rows of
    (HWC uint8 image, class, epoch, item index), augmented (when `spec.augment`) and
    normalised for the whole batch at once."""
    shapes = {r[0].shape for r in rows}
    if len(shapes) > 1:
        raise DataError(f"images differ in size {sorted(shapes)}; set data.image_size")
    images = np.stack([r[0] for r in rows])  # [B, H, W, C] uint8
    if spec.augment:
        epochs = np.array([r[2] for r in rows], dtype=np.int64)
        indices = np.array([r[3] for r in rows], dtype=np.int64)
        chw = augment_images(images, item_bits(seed, epochs, indices))
    else:
        chw = images.transpose(0, 3, 1, 2)
    # (x / 255 - mean) / std as one multiply and one subtraction over the batch
    std = np.asarray(spec.std, np.float32)
    scale = (1.0 / (255.0 * std))[:, None, None]
    shift = (np.asarray(spec.mean, np.float32) / std)[:, None, None]
    out = np.empty(chw.shape, np.float32)
    out[...] = chw
    out *= scale
    out -= shift
    return {"images": out, "labels": np.array([r[1] for r in rows], dtype=np.int64)}


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The batch as torch tensors, without copying. Producers hand numpy arrays across
    processes: pickling small arrays is cheaper than torch's shared-memory handles."""
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def transform_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for item `index` of `epoch`."""
    return rng_for(seed, epoch, SALT_TRANSFORM, index)
