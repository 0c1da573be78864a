"""Build a model by registry name or config."""

from __future__ import annotations

from typing import Any

from torch import nn

from model.accounting import analytic_param_count
from model.bert import BERT
from model.config import ModelConfig
from model.gpt import GPT
from model.presets import get_preset
from model.seq2seq import Seq2Seq
from model.vit import ViT

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "gpt": GPT,
    "bert": BERT,
    "vit": ViT,
    "seq2seq": Seq2Seq,
}

__all__ = ["MODEL_CLASSES", "analytic_param_count", "build_model"]


def build_model(name_or_config: str | ModelConfig, **overrides: Any) -> nn.Module:
    """Instantiate the model a preset name or config describes.

    Build under `with torch.device("meta"):` to get shapes without memory.

    Args:
        name_or_config: a MODEL_PRESETS name (e.g. "gpt-tiny") or a ModelConfig.
        **overrides: config fields to replace, e.g. n_layer=2; an unknown
            field name raises ValueError naming it.
    """
    if isinstance(name_or_config, str):
        config = get_preset(name_or_config)
    elif isinstance(name_or_config, ModelConfig):
        config = name_or_config
    else:
        raise TypeError(f"expected a preset name or ModelConfig, got {type(name_or_config)}")
    # replace() copies, so the shared preset is never mutated by the model.
    config = config.replace(**overrides)
    return MODEL_CLASSES[config.family](config)
