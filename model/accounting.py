"""Parameter and FLOP accounting shared by the model families.

"Embedding" parameters here are the lookup-only tables: position embeddings,
BERT's token-type embeddings, ViT's CLS token and an unshared seq2seq source
embedding. Token embeddings tied to the output head are not among them: the
head is a real matmul.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor, nn

from model.config import ModelConfig


def count_params(module: nn.Module, exclude: Iterable[Tensor] = ()) -> int:
    """Number of unique parameters of `module` (tied weights once), minus `exclude`.

    Args:
        module: the model.
        exclude: parameters to leave out (e.g. lookup tables).
    """
    excluded = {id(p) for p in exclude}
    # DeepSpeed ZeRO-3 swaps each parameter's data for an empty shard and keeps
    # the full size in ds_numel; reading it keeps the count right there too.
    return sum(
        getattr(p, "ds_numel", p.numel()) for p in module.parameters() if id(p) not in excluded
    )


def training_flops_per_token(
    non_embedding_params: int, n_layer: int, d_model: int, seq_len: float
) -> float:
    """Training FLOPs per token: 6 * N + 12 * L * H * Q * T (PaLM, appendix B).

    6 * N covers forward (2 FLOPs per multiply-add) and backward (twice the
    forward) of every weight matmul; 12 * L * (H * Q = d_model) * T adds the
    attention score and value matmuls over a full context of T tokens, with no
    discount for the causal mask. Activation recomputation is not counted, so
    this is the "model FLOPs" of MFU.

    Args:
        non_embedding_params: N, parameters that take part in matmuls.
        n_layer: L.
        d_model: H * Q.
        seq_len: T, the context length.
    """
    return 6.0 * non_embedding_params + 12.0 * n_layer * d_model * seq_len


def attended_keys(config: ModelConfig, seq_len: int, causal: bool, cross: bool = False) -> float:
    """The T of the attention term 12 * L * d_model * T: keys each query is scored
    against, by model.attention.

    softmax: every key of the context (no discount for a causal mask). performer:
    2 * features, since FAVOR+ does four matmuls of M * Dh per token and head where
    softmax does two of T * Dh. sparse: the keys of the blocks a query block is
    scored against (window, or 2 * window - 1 without a causal mask, plus a
    summary block per stride group when strided); cross-attention stays exact.
    """
    if config.attention == "performer":
        return 2.0 * config.performer_features
    if config.attention == "sparse" and not cross:
        options = config.sparse
        blocks = math.ceil(seq_len / options.block_size)
        visible = options.window if causal else 2 * options.window - 1
        if options.pattern == "strided":
            visible += blocks // options.stride
        return float(min(seq_len, min(blocks, visible) * options.block_size))
    return float(seq_len)


def analytic_param_count(config: ModelConfig, non_embedding: bool = False) -> int:
    """Parameter count of the model `config` describes, from the formula alone.

    Args:
        config: model shape.
        non_embedding: leave out lookup-only tables (see module docstring).
    """
    d, b = config.d_model, int(config.bias)
    hidden = config.mlp_ratio * d
    ln = d + d * b
    attention = (d * 3 * d + 3 * d * b) + (d * d + d * b)
    mlp = (d * hidden + hidden * b) + (hidden * d + d * b)
    final_ln = ln if config.norm == "pre" else 0
    stack = config.n_layer * (2 * ln + attention + mlp) + final_ln

    seq_len = config.image_seq_len if config.family == "vit" else config.max_seq_len
    lookup = seq_len * d if config.position == "learned" else 0
    if config.position == "relative":
        lookup = config.relative_buckets * config.n_head
    if config.family == "gpt":
        # The LM head is tied to the token embedding and has no bias.
        total = config.vocab_size * d + stack
    elif config.family == "bert":
        lookup += config.type_vocab_size * d
        mlm_head = (d * d + d * b) + ln + config.vocab_size * b
        total = config.vocab_size * d + ln + stack + mlm_head
        if config.pair_head != "none" or config.num_labels > 0:
            total += d * d + d * b
        if config.pair_head != "none":
            total += d * 2 + 2 * b
        total += config.num_labels * d + config.num_labels * b
    elif config.family == "seq2seq":
        # Decoder blocks add a LayerNorm and a cross-attention (same shapes as
        # self-attention: q, fused kv, output); each side has its own learned
        # position table; the output projection is tied to the target embedding.
        decoder = config.decoder_layers * (3 * ln + 2 * attention + mlp) + final_ln
        total = config.vocab_size * d + stack + decoder
        lookup *= 2
        lookup += 0 if config.share_embeddings else config.vocab_size * d
    else:
        lookup += d if config.pooling == "cls" else 0
        patch = config.in_channels * config.patch_size**2 * d + d * b
        head = d * config.num_classes + config.num_classes * b
        total = patch + stack + head
    return total if non_embedding else total + lookup


class TokenFlops:
    """FLOP accounting shared by the token models (GPT, BERT).

    Needs `self.config` and `self.num_params(non_embedding=True)`.
    """

    flops_unit = "token"

    def training_flops_per_unit(self) -> float:
        """Training FLOPs per token, 6 * N + 12 * L * d_model * T.

        N is `num_params(non_embedding=True)`, T the keys a query attends to
        (max_seq_len for softmax; see `attended_keys`); see `training_flops_per_token`.
        """
        c = self.config
        return training_flops_per_token(
            self.num_params(non_embedding=True),
            c.n_layer,
            c.d_model,
            attended_keys(c, c.max_seq_len, causal=c.family == "gpt"),
        )

    def training_flops_per_token(self) -> float:
        """Alias of `training_flops_per_unit` (the unit is a token)."""
        return self.training_flops_per_unit()
