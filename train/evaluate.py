"""Validation: loss and the family's headline metric, averaged over all ranks.

GPT: loss and perplexity. BERT: masked-LM loss and masked-token accuracy.
ViT: loss and top-1 accuracy. Sums are reduced across ranks, so the figure
is the mean over every validation target, not a mean of rank means.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from train.distributed import all_reduce_sum
from train.task import to_device


@torch.no_grad()
def evaluate(
    engine: Any, batches: Iterable[dict[str, torch.Tensor]], family: str, max_batches: int,
    device: torch.device,
) -> dict[str, float]:  # fmt: skip
    """Run up to `max_batches` validation batches; every rank must call this.

    Args:
        engine: the DeepSpeed engine (its forward returns a ModelOutput).
        batches: this rank's validation batches.
        family: gpt, bert or vit.
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
        out = engine(batch)
        labels = batch["labels"]
        if family == "vit":
            n = labels.numel()
            correct += (out.logits.argmax(-1) == labels).sum().item()
        else:
            mask = labels != -100
            n = int(mask.sum().item())
            if family == "bert":
                correct += (out.logits.argmax(-1)[mask] == labels[mask]).sum().item()
        # BERT's loss adds the pair head's (SOP/NSP); val_loss is the masked-LM part.
        loss = out.metrics.get("mlm_loss", out.loss) if family == "bert" else out.loss
        loss_sum += loss.float().item() * n
        count += n
    if was_training:
        engine.train()
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], device)
    if count == 0:
        return {}
    loss = loss_sum / count
    if family == "gpt":
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}
    key = "val_masked_accuracy" if family == "bert" else "val_accuracy"
    return {"val_loss": loss, key: correct / count}
