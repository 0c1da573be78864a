"""The result type of every model's `compute_loss`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """Loss plus what the training loop logs.

    Args:
        loss: scalar float32 loss to backpropagate.
        logits: the model's main output (token logits for GPT/BERT, class
            logits for ViT).
        metrics: detached scalar tensors to log (counts, accuracies, loss parts).
    """

    loss: Tensor
    logits: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
