"""Cross entropy with ignored targets, computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def cross_entropy_with_stats(
    logits: Tensor, labels: Tensor, accuracy: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Mean cross entropy over non-ignored targets, plus target and hit counts.

    Logits are upcast to float32 so that bf16/fp16 autocast does not degrade
    the log-softmax. With no target at all the loss is 0 (not NaN), so an
    all-ignored micro-batch cannot poison gradient accumulation.

    Args:
        logits: [..., C] scores.
        labels: [...] class ids; IGNORE_INDEX (-100) marks positions to skip.
        accuracy: count the hits (an argmax over every row); training steps
            that log no accuracy skip it.

    Returns:
        (loss, count, correct): scalar loss with grad; detached number of
        targets and of targets the argmax got right (None without accuracy).
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    valid = labels != IGNORE_INDEX
    count = valid.sum()
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    loss = total / count.clamp(min=1)
    if not accuracy:
        return loss, count.detach(), None
    with torch.no_grad():
        correct = ((logits.argmax(dim=-1) == labels) & valid).sum()
    return loss, count.detach(), correct
