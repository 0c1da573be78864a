"""BERT <-> transformers `BertForMaskedLM` / `BertForPreTraining` /
`BertForSequenceClassification`.

The transformers BERT is the original post-LN encoder with learned positions,
so only a gobig BERT with model.norm=post and model.position=learned exports
faithfully. The class follows the heads: a classifier (model.num_labels > 0,
cls pooling) is BertForSequenceClassification, an NSP head BertForPreTraining,
otherwise BertForMaskedLM. Our fused QKV projection is split into query, key
and value.
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
    fused_qkv,
    layer_pairs,
    mlp_ratio_of,
    pairs_from_hf,
    refuse_unless,
    weight_bias,
    with_prefix,
)

MASKED_LM = "BertForMaskedLM"
PRE_TRAINING = "BertForPreTraining"
CLASSIFIER = "BertForSequenceClassification"
ARCHITECTURES = (MASKED_LM, PRE_TRAINING, CLASSIFIER, "BertModel")


def _block(gobig: str, hf: str) -> list[Pair]:
    return weight_bias(f"transformer.blocks.{{i}}.{gobig}", f"bert.encoder.layer.{{i}}.{hf}")


_QKV = "bert.encoder.layer.{i}.attention.self."
_LAYER = [
    *fused_qkv(_QKV),
    *_block("attn.proj", "attention.output.dense"),
    *_block("ln_1", "attention.output.LayerNorm"),
    *_block("mlp.fc", "intermediate.dense"),
    *_block("mlp.proj", "output.dense"),
    *_block("ln_2", "output.LayerNorm"),
]


class BertConverter(HfConverter):
    family = "bert"
    model_type = "bert"
    cls_sep_inputs = True

    def refusal(self, config: ModelConfig) -> str | None:
        return refuse_unless([
            (config.norm == "post",
             "the transformers BERT is post-LayerNorm; train with model.norm=post to export"),
            (config.position == "learned",
             f"the transformers BERT has learned positions, not model.position={config.position}"),
            (config.num_labels == 0 or config.pooling == "cls",
             "BertForSequenceClassification pools the [CLS] token, not model.pooling=mean"),
            (config.pair_head != "sop" or config.num_labels > 0,
             "a sentence-order (sop) head has no transformers BERT class"),
        ])  # fmt: skip

    def architecture(self, config: ModelConfig) -> str:
        if config.num_labels > 0:
            return CLASSIFIER
        return PRE_TRAINING if config.pair_head == "nsp" else MASKED_LM

    def hf_config(self, config: ModelConfig) -> dict[str, Any]:
        hf = {
            "model_type": "bert",
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head,
            "intermediate_size": config.mlp_ratio * config.d_model,
            "hidden_act": "gelu" if config.activation == "gelu" else "gelu_pytorch_tanh",
            "hidden_dropout_prob": config.dropout,
            "attention_probs_dropout_prob": config.dropout,
            "max_position_embeddings": config.max_seq_len,
            "type_vocab_size": config.type_vocab_size,
            "layer_norm_eps": config.layer_norm_eps,
            "initializer_range": config.init_std,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": True,
        }
        if config.num_labels > 0:
            hf["num_labels"] = config.num_labels
            hf["problem_type"] = "single_label_classification"
        return hf

    def pairs(self, config: ModelConfig, architecture: str) -> list[Pair]:
        emb = "bert.embeddings."
        pairs = [
            Pair("embeddings.word.weight", (emb + "word_embeddings.weight",)),
            Pair("embeddings.positions.embedding.weight", (emb + "position_embeddings.weight",)),
            Pair("embeddings.token_type.weight", (emb + "token_type_embeddings.weight",)),
            *weight_bias("embeddings.ln", emb + "LayerNorm"),
            *layer_pairs(config.n_layer, _LAYER),
        ]
        if architecture in (MASKED_LM, PRE_TRAINING):
            pairs += [
                *weight_bias("mlm_head.dense", "cls.predictions.transform.dense"),
                *weight_bias("mlm_head.ln", "cls.predictions.transform.LayerNorm"),
                Pair("mlm_head.decoder.bias", ("cls.predictions.bias",)),
            ]
        if architecture in (PRE_TRAINING, CLASSIFIER):
            pairs += weight_bias("pooler.dense", "bert.pooler.dense")
        if architecture == PRE_TRAINING:
            pairs += weight_bias("pair_head", "cls.seq_relationship")
        if architecture == CLASSIFIER:
            pairs += weight_bias("classifier.1", "classifier")
        return pairs

    def model_config(self, hf: dict[str, Any]) -> ModelConfig:
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise HfConversionError(
                f"position_embedding_type={hf['position_embedding_type']!r} has no gobig "
                "equivalent (absolute)"
            )
        d = hf.get("hidden_size", 768)
        architecture = self.architecture_of(hf)
        labels = int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)
        return ModelConfig(
            name="hf-bert",
            family="bert",
            vocab_size=hf.get("vocab_size", 30522),
            max_seq_len=hf.get("max_position_embeddings", 512),
            d_model=d,
            n_layer=hf.get("num_hidden_layers", 12),
            n_head=hf.get("num_attention_heads", 12),
            mlp_ratio=mlp_ratio_of(d, hf.get("intermediate_size"), "intermediate_size"),
            activation=activation_of(hf.get("hidden_act", "gelu"), "hidden_act"),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            dropout=hf.get("hidden_dropout_prob", 0.1),
            init_std=hf.get("initializer_range", 0.02),
            type_vocab_size=hf.get("type_vocab_size", 2),
            pair_head="nsp" if architecture == PRE_TRAINING else "none",
            num_labels=labels if architecture == CLASSIFIER else 0,
            pooling="cls",
            position="learned",
            norm="post",
        )

    def architecture_of(self, hf: dict[str, Any]) -> str:
        """The BERT class an HF config.json names (BertModel when it names none)."""
        for name in hf.get("architectures") or ["BertModel"]:
            if name in ARCHITECTURES:
                return name
        raise HfConversionError(
            f"architectures={hf.get('architectures')} is none of {', '.join(ARCHITECTURES)}"
        )

    def canonical(self, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        # Older checkpoints name LayerNorm parameters gamma/beta, and a bare
        # BertModel's names have no "bert." prefix.
        renamed = {
            k.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
                "LayerNorm.beta", "LayerNorm.bias"
            ): v
            for k, v in hf.items()
        }
        return with_prefix(renamed, "bert.", ("cls.", "classifier."))

    def from_hf(
        self, config: ModelConfig, architecture: str, hf: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        if architecture == "BertModel":
            # The encoder alone: gobig's BERT keeps its MLM head freshly initialised.
            pairs = [p for p in self.pairs(config, MASKED_LM) if not p.gobig.startswith("mlm_head")]
            return pairs_from_hf(pairs, self.canonical(hf))
        state = super().from_hf(config, architecture, hf)
        if "mlm_head.decoder.bias" in state:
            state["mlm_head.decoder.weight"] = state["embeddings.word.weight"]
        return state
