"""AdamW with decoupled weight decay, and the warmup-then-decay schedules.

Norms, biases, embeddings (token, position, CLS) are excluded from weight
decay: decaying them hurts quality and buys no regularisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from train.config.schema import ExperimentConfig, OptimConfig

_NO_DECAY_MODULES = (nn.LayerNorm, nn.Embedding, nn.RMSNorm)
_NO_DECAY_NAME_PARTS = ("embed", "token", "pos")
# Device types torch's AdamW has a fused kernel for (torch >= 2.4).
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices, and everything exempt from decay.

    Args:
        model: the model whose trainable parameters are grouped (tied
            parameters appear once).
        weight_decay: decay for the first group.
    """
    exempt: set[int] = set()
    for module in model.modules():
        for attr, param in module.named_parameters(recurse=False):
            if (
                isinstance(module, _NO_DECAY_MODULES)
                or param.ndim < 2
                or any(part in attr for part in _NO_DECAY_NAME_PARTS)
            ):
                exempt.add(id(param))
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (no_decay if id(param) in exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: ExperimentConfig) -> torch.optim.Optimizer:
    """AdamW over `param_groups` (fused where the device has the kernel); DeepSpeed's
    CPU Adam when the optimizer is offloaded."""
    o = config.optim
    groups = param_groups(model, o.weight_decay)
    if config.zero.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=o.lr, betas=o.betas, eps=o.eps, adamw_mode=True)
    fused = o.fused and _device_type() in FUSED_ADAMW_DEVICES
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=fused or None)


def _device_type() -> str:
    # Where DeepSpeed will put the parameters (they are still on the CPU here).
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Linear warmup from 0 to `optim.lr` over `warmup_steps`, then cosine or
    linear decay to `optim.min_lr` at `decay_steps` (default `max_steps`),
    constant afterwards; or `optim.lr` for good (constant); or inverse_sqrt,
    `optim.lr * sqrt(warmup_steps / (step + 1))`: the Transformer paper's
    d_model ** -0.5 * min(n ** -0.5, n * warmup ** -1.5) (n = step + 1) with its
    peak, reached at the end of the warmup, given as `optim.lr`.
    """
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule == "inverse_sqrt":
        return optim.lr * math.sqrt(max(1, optim.warmup_steps) / (step + 1))
    decay_end = optim.decay_steps or max_steps
    span = max(1, decay_end - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    if optim.schedule == "cosine":
        weight = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        weight = 1.0 - progress
    return optim.min_lr + weight * (optim.lr - optim.min_lr)


class WarmupDecaySchedule(torch.optim.lr_scheduler.LRScheduler):
    """`lr_at` as a torch scheduler (state_dict-able; DeepSpeed steps it)."""

    def __init__(self, optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int):
        self.optim_config = optim
        self.max_steps = max_steps
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        lr = lr_at(self.last_epoch, self.optim_config, self.max_steps)
        return [lr for _ in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        # The schedule is a pure function of the config; only the position is state.
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = self.get_lr()
