"""Transformer models (GPT, BERT, ViT) in plain PyTorch; imports only torch."""

from model.attention import KVCache
from model.bert import BERT
from model.config import ModelConfig
from model.gpt import GPT
from model.output import ModelOutput
from model.presets import MODEL_PRESETS, get_preset
from model.registry import analytic_param_count, build_model
from model.vit import ViT

__all__ = [
    "BERT",
    "GPT",
    "MODEL_PRESETS",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "ViT",
    "analytic_param_count",
    "build_model",
    "get_preset",
]
