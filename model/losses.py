"""Cross entropy with ignored targets (optionally label-smoothed), computed in float32."""

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


def label_smoothed_cross_entropy(
    logits: Tensor, labels: Tensor, smoothing: float, accuracy: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """`cross_entropy_with_stats` with label smoothing, plus the unsmoothed NLL.

    The smoothed target puts 1 - smoothing on the label and smoothing spread
    uniformly over all C classes (the label included), as torch's
    `F.cross_entropy(label_smoothing=...)`: loss = (1 - s) * NLL + s * mean_c(-log p_c).
    The NLL is what perplexity and model comparisons want; the smoothed loss
    is what the model trains on ("Attention Is All You Need", s = 0.1).

    Args:
        logits: [..., C] scores.
        labels: [...] class ids; IGNORE_INDEX (-100) marks positions to skip.
        smoothing: s in [0, 1); 0 gives the plain cross entropy.
        accuracy: count the hits (an argmax over every row).

    Returns:
        (loss, nll, count, correct): the smoothed mean loss with grad; the
        detached mean NLL; detached target and hit counts (None without accuracy).
    """
    log_probs = logits.reshape(-1, logits.shape[-1]).float().log_softmax(dim=-1)
    labels = labels.reshape(-1)
    valid = labels != IGNORE_INDEX
    count = valid.sum()
    nll_sum = F.nll_loss(log_probs, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    total = nll_sum
    if smoothing > 0.0:
        uniform = torch.where(valid, -log_probs.mean(dim=-1), 0.0).sum()
        total = (1.0 - smoothing) * nll_sum + smoothing * uniform
    denominator = count.clamp(min=1)
    loss, nll = total / denominator, nll_sum.detach() / denominator
    if not accuracy:
        return loss, nll, count.detach(), None
    with torch.no_grad():
        correct = ((log_probs.argmax(dim=-1) == labels) & valid).sum()
    return loss, nll, count.detach(), correct
