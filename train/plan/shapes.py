"""A model's sizes for planning, read off the model itself built on the meta device.

Building under `torch.device("meta")` allocates no storage, so a 70B-parameter shape
plans in seconds: the counts and the FLOPs come from the same code the training loop
uses (`count_params`, `training_flops_per_unit`), never from a second formula.
"""

from __future__ import annotations

import torch
from torch import nn

from model.accounting import count_params
from model.config import ModelConfig
from model.registry import build_model
from train.plan.schema import ModelShape

# Per unit of the model's FLOPs (its `flops_unit`): what it is called, and how many of
# them one full-length sample holds: a text sample is max_seq_len tokens (seq2seq: target
# tokens, the source as long), an image one image. Keyed by the unit, not the family: a
# new family with a known unit needs no entry here.
UNITS = {
    "token": ("tokens", lambda config: config.max_seq_len),
    "target_token": ("target tokens", lambda config: config.max_seq_len),
    "image": ("images", lambda config: 1),
}


def largest_layer_params(model: nn.Module) -> int:
    """Parameters of the module holding the most parameters of its own (not its children's).

    ZeRO-3 gathers one module's full parameters at a time; DeepSpeed's estimator
    (`model_to_params` in deepspeed/runtime/zero/stage3.py) sizes that buffer the same way.
    """
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def model_shape(config: ModelConfig) -> ModelShape:
    """Parameter counts, FLOPs per unit and the unit of the model `config` describes.

    Args:
        config: the model section of an experiment.
    """
    with torch.device("meta"):
        model = build_model(config)
    if model.flops_unit not in UNITS:
        raise ValueError(f"model.family {config.family}: no plan for unit {model.flops_unit!r}")
    unit, units_per_sample = UNITS[model.flops_unit]
    return ModelShape(
        name=config.name,
        family=config.family,
        params=count_params(model),
        non_embedding_params=model.num_params(non_embedding=True),
        largest_layer_params=largest_layer_params(model),
        flops_per_unit=model.training_flops_per_unit(),
        unit=unit,
        units_per_sample=units_per_sample(config),
    )
