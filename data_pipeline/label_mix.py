"""A check that image shards are mixed enough for the loader's shuffle buffer.

The loader shuffles shards and then records within blocks of `shuffle_buffer` records
(order.py). Shards written in class order (an ImageFolder read class by class) give
blocks of one class, and a model trained on them learns nothing. gobig's writers shuffle;
shards from elsewhere may not. The check reads the labels of the first block the loader
would mix and compares them with the split's class distribution from the manifest (a
chi-square statistic far beyond sampling noise), or, when the manifest has no class
counts, looks for one label holding nearly the whole block or for labels in long runs.
A split small enough to fit in one block is never a problem: the block is all of it.
"""

from __future__ import annotations

import math
from collections import Counter

from data_pipeline.errors import ShardError
from data_pipeline.order import ShardRef, shard_order
from data_pipeline.reader import read_shard

DOMINANT_SHARE = 0.9  # without class counts: one label holding this much of the block
MIN_RECORDS = 64  # fewer records say too little to judge


def first_block_labels(shards: list[ShardRef], seed: int, shuffle: bool, block: int) -> list[int]:
    """Class labels of the first `block` records of epoch 0's stream (unreadable: [])."""
    labels: list[int] = []
    try:
        for i in shard_order(len(shards), seed, 0, shuffle):
            shard = shards[i]
            for sample in read_shard(shard.url, shard.name, shard.samples):
                labels.append(int(sample["cls"]))
                if len(labels) >= block:
                    return labels
    except (ShardError, KeyError, ValueError):
        return []  # the loader itself reports a bad shard, with its own rules
    return labels


def describe_mixing_problem(
    labels: list[int], class_counts: list[int] | None, more_follow: bool
) -> str | None:
    """What is wrong with the labels of the first block, or None if they look mixed.

    Args:
        labels: class labels of the block's records, in stream order.
        class_counts: records per class in the split (the manifest), if known.
        more_follow: the split holds more records than the block.
    """
    n = len(labels)
    if n < MIN_RECORDS or not more_follow:
        return None  # too few to judge, or the whole split is shuffled as one block
    seen = Counter(labels)
    if class_counts and sum(class_counts) > 0:
        total = sum(class_counts)
        classes = sum(1 for c in class_counts if c)
        chi2 = 0.0
        for cls in set(seen) | set(range(len(class_counts))):
            expected = n * class_counts[cls] / total if cls < len(class_counts) else 0.0
            if expected == 0.0:
                if seen[cls]:
                    return f"class {cls}, which the manifest does not count"
                continue
            chi2 += (seen[cls] - expected) ** 2 / expected
        dof = max(1, classes - 1)
        if chi2 <= dof + 10 * math.sqrt(2 * dof):  # within ten standard deviations of noise
            return None
        return (
            f"{len(seen)} of {classes} classes (chi-square {chi2:.0f} against the "
            f"manifest's class counts, {dof} expected)"
        )
    label, count = seen.most_common(1)[0]
    if count / n >= DOMINANT_SHARE:
        return f"class {label} for {100 * count / n:.0f}% of them"
    # Runs: in a mixed order the label changes from one record to the next about
    # (n - 1)(1 - sum p^2) times; in class order only at each class boundary.
    changes = sum(a != b for a, b in zip(labels, labels[1:], strict=False))
    expected = (n - 1) * (1 - sum(c * (c - 1) for c in seen.values()) / (n * (n - 1)))
    if expected >= 20 and changes < expected / 2:
        return (
            f"runs of one class ({changes} label changes where a mixed order has about "
            f"{expected:.0f})"
        )
    return None


def check_label_mix(
    shards: list[ShardRef], class_counts: list[int] | None, seed: int, shuffle: bool,
    block: int,
) -> str | None:  # fmt: skip
    """A one-line description of why the shards look unmixed, or None."""
    labels = first_block_labels(shards, seed, shuffle, block)
    more_follow = sum(s.samples for s in shards) > block
    problem = describe_mixing_problem(labels, class_counts, more_follow)
    if problem is None:
        return None
    return f"the first {len(labels)} records the loader shuffles together hold {problem}"
