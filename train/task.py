"""The module DeepSpeed wraps: a model plus its loss, one batch dict in.

DeepSpeed's engine calls `forward(batch)`; routing the loss through it keeps
ZeRO-3's parameter gathering and DeepSpeed's precision handling in the path.
"""

from __future__ import annotations

import torch
from torch import nn

from model import ModelOutput


class TrainingModule(nn.Module):
    """Wraps a gobig model so that `forward(batch)` returns its ModelOutput."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        # Under bf16/fp16 DeepSpeed casts the weights; float inputs (images)
        # must follow, integer inputs (token ids, labels) must not.
        dtype = next(self.model.parameters()).dtype
        batch = {
            k: v.to(dtype) if torch.is_floating_point(v) and v.dtype != dtype else v
            for k, v in batch.items()
        }
        # Training steps log no accuracy: skip its argmax over the vocabulary.
        return self.model.compute_loss(batch, accuracy=not self.training)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    non_blocking = device.type != "cpu"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def batch_units(batch: dict[str, torch.Tensor], flops_unit: str) -> int:
    """Tokens (text) or images (ViT) in a batch: the unit of throughput and MFU."""
    if flops_unit == "image":
        return int(batch["images"].shape[0])
    return int(batch["input_ids"].numel())


def strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model weights as `model/` names them (without TrainingModule's prefix)."""
    return {k.removeprefix("model."): v for k, v in state_dict.items()}
