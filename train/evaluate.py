"""Validation: loss and the family's headline metric, averaged over all ranks.

What counts as a target and which metric is reported is the family's
(train/families.py: perplexity for GPT, masked-token accuracy for BERT, top-1
accuracy for ViT). Sums are reduced across ranks, so the figure is the mean
over every validation target, not a mean of rank means.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from train.distributed import all_reduce_sum
from train.families import Family
from train.task import to_device


@torch.no_grad()
def evaluate(
    engine: Any,
    batches: Iterable[dict[str, torch.Tensor]],
    family: Family,
    max_batches: int,
    device: torch.device,
) -> dict[str, float]:
    """Run up to `max_batches` validation batches; every rank must call this.

    Args:
        engine: the DeepSpeed engine (its forward returns a ModelOutput).
        batches: this rank's validation batches.
        family: what the targets and the metrics are.
        max_batches: cap on batches per rank.
        device: where batches go.
    """
    was_training = engine.training
    engine.eval()
    loss_sum = correct = count = 0.0
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        batch = to_device(batch, device)
        batch_loss, n, batch_correct = family.eval_counts(engine(batch), batch)
        loss_sum += batch_loss
        count += n
        correct += batch_correct
    if was_training:
        engine.train()
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], device)
    if count == 0:
        return {}
    return family.eval_metrics(loss_sum / count, correct / count)
