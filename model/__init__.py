"""Transformer models (GPT, BERT, ViT, Seq2Seq) in plain PyTorch; imports only torch.

The public names load on first use (PEP 562): `model.config` and
`model.presets` need no torch, so the experiment config (and the `gobig`
commands that only read it) can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.attention import KVCache
    from model.bert import BERT
    from model.config import ModelConfig
    from model.gpt import GPT
    from model.output import ModelOutput
    from model.presets import MODEL_PRESETS, get_preset
    from model.registry import analytic_param_count, build_model
    from model.seq2seq import Seq2Seq
    from model.vit import ViT

# public name -> the module that defines it
_SOURCES = {
    "KVCache": "model.attention",
    "BERT": "model.bert",
    "ModelConfig": "model.config",
    "GPT": "model.gpt",
    "ModelOutput": "model.output",
    "MODEL_PRESETS": "model.presets",
    "get_preset": "model.presets",
    "analytic_param_count": "model.registry",
    "build_model": "model.registry",
    "Seq2Seq": "model.seq2seq",
    "ViT": "model.vit",
}

__all__ = [
    "BERT",
    "GPT",
    "MODEL_PRESETS",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "Seq2Seq",
    "ViT",
    "analytic_param_count",
    "build_model",
    "get_preset",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
