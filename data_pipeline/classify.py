"""Sequence-classification batches (loader kind "bert-cls") from labelled text shards.

An item is one record, a labelled text (`gobig data text --labels`), in the record order
of order.py, as a ViT image is: texts are never packed or cut into windows. Its row is
`[CLS] tokens [SEP]`, the tokens cut to `seq_len - 2` (the shards keep every token, so
the same data serves any model length). A batch is padded to its longest row with the
pad id: `input_ids`, `attention_mask` (1 on the row, 0 on padding) and `token_type_ids`
(zeros), all [B, T], and `class_labels` [B]. Nothing here is random, so a row is the same
whichever rank or worker builds it; order, resume and the split across ranks are the
loader's, as for every kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_pipeline.reader import parse_class, parse_tokens

CLASSIFY_KIND = "bert-cls"


@dataclass(frozen=True)
class ClassifySpec:
    """What classification rows need to know."""

    cls_id: int
    sep_id: int
    pad_id: int
    num_classes: int


def decode_labelled(
    sample: dict, dtype: np.dtype, vocab_size: int, num_classes: int
) -> tuple[np.ndarray, int]:
    """(token ids, class index) of a labelled text sample, checked (ValueError if bad)."""
    if "tokens.npy" not in sample:
        raise ValueError("no tokens.npy in sample")
    return parse_tokens(sample["tokens.npy"], dtype, vocab_size), parse_class(sample, num_classes)


def classify_row(
    record: tuple[np.ndarray, int], spec: ClassifySpec, seq_len: int
) -> tuple[np.ndarray, int]:
    """([CLS] tokens [SEP] as int64, at most `seq_len` long; the class index)."""
    ids, label = record
    row = np.empty(min(len(ids), seq_len - 2) + 2, dtype=np.int64)
    row[0], row[-1] = spec.cls_id, spec.sep_id
    row[1:-1] = ids[: len(row) - 2]
    return row, label


def classify_batch(rows: list[tuple[np.ndarray, int]], pad_id: int) -> dict[str, np.ndarray]:
    """Rows padded to the longest: {"input_ids", "attention_mask", "token_type_ids"}
    [B, T] and "class_labels" [B]."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (ids, _) in enumerate(rows):
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": np.zeros_like(input_ids),
        "class_labels": np.array([label for _, label in rows], dtype=np.int64),
    }
