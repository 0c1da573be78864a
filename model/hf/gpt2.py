"""GPT <-> transformers `GPT2LMHeadModel`.

GPT-2 is a pre-LN decoder with learned positions and a tied LM head, which is
gobig's GPT with model.position=learned; its Conv1D layers store weights as
[in, out], so those are transposed on the way.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from model.config import ModelConfig
from model.hf.base import (
    HfConversionError,
    HfConverter,
    Pair,
    activation_of,
    layer_pairs,
    mlp_ratio_of,
    refuse_unless,
    with_prefix,
)


def _block(gobig: str, hf: str, kind: str = "copy") -> Pair:
    return Pair(f"transformer.blocks.{{i}}.{gobig}", (f"transformer.h.{{i}}.{hf}",), kind)


_LAYER = [
    *(_block(f"{ln}.{p}", f"{ln}.{p}") for ln in ("ln_1", "ln_2") for p in ("weight", "bias")),
    _block("attn.qkv.weight", "attn.c_attn.weight", "transpose"),
    _block("attn.qkv.bias", "attn.c_attn.bias"),
    _block("attn.proj.weight", "attn.c_proj.weight", "transpose"),
    _block("attn.proj.bias", "attn.c_proj.bias"),
    _block("mlp.fc.weight", "mlp.c_fc.weight", "transpose"),
    _block("mlp.fc.bias", "mlp.c_fc.bias"),
    _block("mlp.proj.weight", "mlp.c_proj.weight", "transpose"),
    _block("mlp.proj.bias", "mlp.c_proj.bias"),
]


class Gpt2Converter(HfConverter):
    family = "gpt"
    model_type = "gpt2"

    def refusal(self, config: ModelConfig) -> str | None:
        return refuse_unless([
            (config.position == "learned",
             f"GPT-2 has learned positions; this model has model.position={config.position}"),
            (config.norm == "pre", "GPT-2 is pre-LayerNorm; this model has model.norm=post"),
        ])  # fmt: skip

    def architecture(self, config: ModelConfig) -> str:
        return "GPT2LMHeadModel"

    def hf_config(self, config: ModelConfig) -> dict[str, Any]:
        return {
            "model_type": "gpt2",
            "vocab_size": config.vocab_size,
            "n_positions": config.max_seq_len,
            "n_embd": config.d_model,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.mlp_ratio * config.d_model,
            "activation_function": "gelu" if config.activation == "gelu" else "gelu_new",
            "layer_norm_epsilon": config.layer_norm_eps,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
            "initializer_range": config.init_std,
            "scale_attn_weights": True,
            "tie_word_embeddings": True,
        }

    def pairs(self, config: ModelConfig, architecture: str) -> list[Pair]:
        return [
            Pair("wte.weight", ("transformer.wte.weight",)),
            Pair("positions.embedding.weight", ("transformer.wpe.weight",)),
            *layer_pairs(config.n_layer, _LAYER),
            Pair("transformer.ln_f.weight", ("transformer.ln_f.weight",)),
            Pair("transformer.ln_f.bias", ("transformer.ln_f.bias",)),
        ]

    def model_config(self, hf: dict[str, Any]) -> ModelConfig:
        for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if hf.get(key):
                raise HfConversionError(f"{key}=true has no gobig equivalent")
        if hf.get("scale_attn_weights") is False:
            raise HfConversionError("scale_attn_weights=false has no gobig equivalent")
        if hf.get("tie_word_embeddings") is False:
            raise HfConversionError(
                "an untied LM head (tie_word_embeddings=false) has no gobig equivalent"
            )
        d = hf.get("n_embd", 768)
        act = activation_of(hf.get("activation_function", "gelu_new"), "activation_function")
        return ModelConfig(
            name="hf-gpt2",
            family="gpt",
            vocab_size=hf.get("vocab_size", 50257),
            max_seq_len=hf.get("n_positions", 1024),
            d_model=d,
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            mlp_ratio=mlp_ratio_of(d, hf.get("n_inner"), "n_inner"),
            activation=act,
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            dropout=hf.get("resid_pdrop", 0.0),
            init_std=hf.get("initializer_range", 0.02),
            position="learned",
            norm="pre",
        )  # fmt: skip

    def canonical(self, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        # The original GPT-2 checkpoints are GPT2Model's: no "transformer." prefix.
        return with_prefix(hf, "transformer.", ("lm_head.",))

    def from_hf(
        self, config: ModelConfig, architecture: str, hf: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        state = super().from_hf(config, architecture, hf)
        state["lm_head.weight"] = state["wte.weight"]
        return state
