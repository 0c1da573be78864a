"""What the batches hold: GPT packing and shift, BERT masking and pairs, ViT images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from dp_helpers import take
from PIL import Image

from data_pipeline import build_loader
from data_pipeline.transforms import VitSpec, vit_batch, vit_image

pytestmark = pytest.mark.timeout(120)


def test_gpt_packs_documents_with_eos_and_shifts(token_ds, tokenizer):
    path, docs = token_ds
    T = 7
    loader = build_loader("gpt", str(path), batch_size=4, seq_len=T, shuffle=False, infinite=False)
    batches = take(loader)
    assert set(batches[0]) == {"input_ids", "labels"}
    inputs = torch.cat([b["input_ids"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert inputs.dtype == labels.dtype == torch.long and inputs.shape[1] == T
    assert torch.equal(inputs[:, 1:], labels[:, :-1])  # targets are inputs shifted by one
    # the rows tile the stream "doc EOS doc EOS ..." with no padding and no gap
    stream = np.concatenate([np.append(d, tokenizer.eos_id) for d in docs])
    n = (len(stream) - 1) // T
    assert len(inputs) == n == loader.items_per_epoch()
    assert np.array_equal(inputs.flatten().numpy(), stream[: n * T])
    assert np.array_equal(labels.flatten().numpy(), stream[1 : n * T + 1])
    assert tokenizer.pad_id not in inputs


def test_bert_masking_statistics(token_ds, tokenizer):
    path, _ = token_ds
    loader = build_loader("bert", str(path), batch_size=32, seq_len=64, seed=1)
    batches = take(loader, 40)
    ids = torch.cat([b["input_ids"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert set(batches[0]) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert (ids[:, 0] == tokenizer.cls_id).all() and (ids[:, -1] == tokenizer.sep_id).all()
    assert (torch.cat([b["attention_mask"] for b in batches]) == 1).all()
    assert (torch.cat([b["token_type_ids"] for b in batches]) == 0).all()
    selected = labels != -100
    maskable = ids.numel() - 2 * len(ids)
    assert abs(selected.sum().item() / maskable - 0.15) < 0.005
    # loss only on selected tokens, labels are the original tokens there
    assert (labels[selected] >= tokenizer.first_normal_id).all()
    masked = (ids == tokenizer.mask_id) & selected
    kept = (ids == labels) & selected
    noise = selected & ~masked & ~kept
    total = selected.sum().item()
    assert abs(masked.sum().item() / total - 0.8) < 0.03
    assert abs(kept.sum().item() / total - 0.1) < 0.03  # (a random token may equal the original)
    assert abs(noise.sum().item() / total - 0.1) < 0.03
    assert (ids[noise] >= tokenizer.first_normal_id).all()
    assert not (ids[~selected] == tokenizer.mask_id).any()


def test_bert_pairs_have_segment_ids(token_ds, tokenizer):
    path, _ = token_ds
    loader = build_loader("bert", str(path), batch_size=64, seq_len=16, seed=4, pairs=True)
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "pair_labels"}
    assert batch["pair_labels"].shape == (64,)
    assert 10 < batch["pair_labels"].sum().item() < 54  # about half the pairs are swapped
    for ids, types in zip(batch["input_ids"], batch["token_type_ids"], strict=True):
        seps = (ids == tokenizer.sep_id).nonzero().flatten().tolist()
        assert ids[0] == tokenizer.cls_id and seps[-1] == 15
        first_sep = seps[0]
        assert (types[: first_sep + 1] == 0).all() and (types[first_sep + 1 :] == 1).all()
        assert first_sep >= 2 and types[-1] == 1


def test_vit_images_augmented_and_normalised(image_ds):
    path, n = image_ds
    train = build_loader("vit", str(path), batch_size=n, seed=0, image_size=16)
    batch = next(iter(train))
    assert set(batch) == {"images", "labels"}
    assert batch["images"].shape == (n, 3, 16, 16) and batch["images"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long and set(batch["labels"].tolist()) == {0, 1, 2}
    plain = build_loader(
        "vit",
        str(path),
        batch_size=n,
        split="train",
        augment=False,
        image_size=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    images = next(iter(plain))["images"]
    assert images.min() >= -1.0 and images.max() <= 1.0  # (x - 0.5) / 0.5 of [0, 1]
    # augmentation: a random crop of a padded image and a random flip, seeded per item
    gradient = np.tile(np.arange(32, dtype=np.float32), (32, 1))

    buf = io.BytesIO()
    Image.fromarray(np.stack([gradient * 8] * 3, axis=2).astype(np.uint8)).save(buf, "PNG")
    image = vit_image(buf.getvalue(), 32)
    spec = VitSpec(32, augment=True)
    rows = vit_batch([(image, 0, 0, i) for i in range(20)], spec, seed=0)["images"]
    assert len({r.tobytes() for r in rows}) > 5
    again = vit_batch([(image, 0, 0, 3)], spec, seed=0)["images"][0]
    assert np.array_equal(again, rows[3])  # item 3's crop, whatever batch it is in
    off = vit_batch([(image, 0, 0, 3)], VitSpec(32, augment=False), seed=0)["images"][0]
    assert off[0, 0, 1] > off[0, 0, 0]  # untouched: left-to-right gradient kept
