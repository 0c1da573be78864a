"""ViT <-> transformers `ViTForImageClassification`.

The transformers ViT is a pre-LN encoder with a learned CLS token, learned
positions and a final LayerNorm, classifying from the CLS token: gobig's ViT
with model.pooling=cls and model.position=learned. Exports use the names the
published ViT checkpoints use (transformers of every version reads them);
imports also take the newer names (`layers.N.attention.q_proj`, ...).
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from model.config import ModelConfig
from model.hf.base import (
    HfConverter,
    Pair,
    activation_of,
    fused_qkv,
    layer_pairs,
    mlp_ratio_of,
    refuse_unless,
    weight_bias,
    with_prefix,
)


def _block(gobig: str, hf: str) -> list[Pair]:
    return weight_bias(f"transformer.blocks.{{i}}.{gobig}", f"vit.encoder.layer.{{i}}.{hf}")


_QKV = "vit.encoder.layer.{i}.attention.attention."
_LAYER = [
    *_block("ln_1", "layernorm_before"),
    *fused_qkv(_QKV),
    *_block("attn.proj", "attention.output.dense"),
    *_block("ln_2", "layernorm_after"),
    *_block("mlp.fc", "intermediate.dense"),
    *_block("mlp.proj", "output.dense"),
]
# Newer transformers names -> the published checkpoints' names the pairs use.
_RENAMES = [
    (r"\.layers\.(\d+)\.", r".encoder.layer.\1."),
    (r"attention\.q_proj", "attention.attention.query"),
    (r"attention\.k_proj", "attention.attention.key"),
    (r"attention\.v_proj", "attention.attention.value"),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"mlp\.fc1", "intermediate.dense"),
    (r"mlp\.fc2", "output.dense"),
]


class VitConverter(HfConverter):
    family = "vit"
    model_type = "vit"
    takes_images = True

    def refusal(self, config: ModelConfig) -> str | None:
        return refuse_unless([
            (config.pooling == "cls",
             "the transformers ViT classifies from the CLS token, not model.pooling=mean"),
            (config.position == "learned",
             f"the transformers ViT has learned positions, not model.position={config.position}"),
            (config.norm == "pre", "the transformers ViT is pre-LayerNorm, not model.norm=post"),
        ])  # fmt: skip

    def architecture(self, config: ModelConfig) -> str:
        return "ViTForImageClassification"

    def hf_config(self, config: ModelConfig) -> dict[str, Any]:
        return {
            "model_type": "vit",
            "hidden_size": config.d_model,
            "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head,
            "intermediate_size": config.mlp_ratio * config.d_model,
            "hidden_act": "gelu" if config.activation == "gelu" else "gelu_pytorch_tanh",
            "hidden_dropout_prob": config.dropout,
            "attention_probs_dropout_prob": config.dropout,
            "initializer_range": config.init_std,
            "layer_norm_eps": config.layer_norm_eps,
            "image_size": config.image_size,
            "patch_size": config.patch_size,
            "num_channels": config.in_channels,
            "qkv_bias": True,
            "num_labels": config.num_classes,
        }

    def pairs(self, config: ModelConfig, architecture: str) -> list[Pair]:
        return [
            Pair("embeddings.cls_token", ("vit.embeddings.cls_token",)),
            Pair(
                "embeddings.positions.embedding.weight",
                ("vit.embeddings.position_embeddings",),
                "unsqueeze",
            ),
            *weight_bias("embeddings.proj", "vit.embeddings.patch_embeddings.projection"),
            *layer_pairs(config.n_layer, _LAYER),
            *weight_bias("transformer.ln_f", "vit.layernorm"),
            *weight_bias("head", "classifier"),
        ]

    def model_config(self, hf: dict[str, Any]) -> ModelConfig:
        d = hf.get("hidden_size", 768)
        labels = int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)
        return ModelConfig(
            name="hf-vit",
            family="vit",
            d_model=d,
            n_layer=hf.get("num_hidden_layers", 12),
            n_head=hf.get("num_attention_heads", 12),
            mlp_ratio=mlp_ratio_of(d, hf.get("intermediate_size"), "intermediate_size"),
            activation=activation_of(hf.get("hidden_act", "gelu"), "hidden_act"),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            dropout=hf.get("hidden_dropout_prob", 0.0),
            init_std=hf.get("initializer_range", 0.02),
            image_size=hf.get("image_size", 224),
            patch_size=hf.get("patch_size", 16),
            in_channels=hf.get("num_channels", 3),
            num_classes=labels,
            pooling="cls",
            position="learned",
            norm="pre",
        )

    def canonical(self, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        renamed = {}
        for key, value in hf.items():
            for pattern, new in _RENAMES:
                key = re.sub(pattern, new, key)
            renamed[key] = value
        return with_prefix(renamed, "vit.", ("classifier.",))
