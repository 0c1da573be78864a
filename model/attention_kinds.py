"""The kinds of attention a layer can use (model.attention): how queries meet keys.

Each kind is a small module called as kernel(q, k, v, ctx, dropout) on the new
queries, keys and values [B, H, T, Dh] (after rotary rotation). It owns what its
kind keeps while decoding in ctx.kv_cache: keys and values for softmax and
sparse attention, running sums for the Performer. The layers around them
(projections, heads, residuals) are the same for every kind.

  softmax    exact attention (SDPA), O(T^2) time; O(T) memory on flash paths.
  performer  FAVOR+ positive orthogonal random features: O(T) time and memory,
             causal through chunked prefix sums; features redrawn during
             training by train/callbacks/feature_redraw.py.
  sparse     block-sparse local or strided patterns: only the key blocks a
             query block may see are gathered and scored.

Cross-attention (decoder queries over an encoder's output) is softmax under
sparse (a pattern of positions means nothing across two sequences) and FAVOR+
under performer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.attention_context import AttentionContext
from model.config import ModelConfig
from model.performer import favor_attention, favor_decode, orthogonal_projection
from model.sparse_attention import SparsePattern, sparse_attention, sparse_decode


def _cache_keys(layer: int, k: Tensor, v: Tensor, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
    """All keys and values so far: the cached ones followed by the new k, v."""
    if ctx.kv_cache is None:
        return k, v
    return ctx.kv_cache.update(layer, k, v)


class SoftmaxAttention(nn.Module):
    """Exact softmax attention on SDPA under the context's dense mask and bias."""

    def __init__(self, layer: int) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, dropout: float
    ) -> Tensor:
        k, v = _cache_keys(self.layer, k, v, ctx)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=ctx.mask_for(q.dtype), dropout_p=dropout, is_causal=ctx.is_causal
        )


class PerformerAttention(nn.Module):
    """FAVOR+ attention: softmax approximated by positive orthogonal random features.

    The projection [features, head_dim] is a buffer, so a checkpoint or export
    carries the features the weights were trained with; `redraw` replaces it
    with a new draw (a function of the seed it is given). A decoder caches the
    running sums of its keys' features times values instead of the keys and
    values: constant memory per generated token. Attention dropout does not
    apply (no attention matrix is formed).

    Args:
        config: model shape and model.performer options.
        layer: this layer's index, its KV-cache slot and the initial draw's seed.
        cross: attends over an encoder's output (never causal, nothing cached).
    """

    def __init__(self, config: ModelConfig, layer: int, cross: bool) -> None:
        super().__init__()
        self.layer = layer
        self.cross = cross
        self.chunk_size = config.performer.chunk_size
        self.num_features = config.performer_features
        self.head_dim = config.head_dim
        # Where the model is being built: the default device (meta when planning).
        here = torch.empty(0).device
        projection = orthogonal_projection(self.num_features, self.head_dim, layer, here)
        self.register_buffer("projection", projection, persistent=True)

    @torch.no_grad()
    def redraw(self, seed: int) -> None:
        """Draw new random features from `seed`, in place (dtype and device kept)."""
        fresh = orthogonal_projection(self.num_features, self.head_dim, seed, "cpu")
        self.projection.copy_(fresh.to(self.projection.device, self.projection.dtype))

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, dropout: float
    ) -> Tensor:
        projection = self.projection.float()
        if self.cross or not ctx.causal:
            return favor_attention(q, k, v, projection, causal=False, key_keep=ctx.key_keep)
        cache = ctx.kv_cache
        if cache is None:
            return favor_attention(
                q, k, v, projection, causal=True, key_keep=ctx.key_keep, chunk_size=self.chunk_size
            )
        new_keep = None if ctx.key_keep is None else ctx.key_keep[:, -q.shape[2] :]
        out, cache.layers[self.layer] = favor_decode(
            q, k, v, projection, cache.layers[self.layer], key_keep=new_keep
        )
        return out


class SparseAttention(nn.Module):
    """Block-sparse self-attention in the pattern model.sparse describes.

    Training and a whole-sequence forward gather only the key blocks each query
    block may see; decoding with a cache scores the new tokens' few rows
    against the pattern's keys.

    Args:
        config: model shape and model.sparse options.
        layer: this layer's index, its KV-cache slot.
    """

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        options = config.sparse
        self.pattern = SparsePattern(
            kind=options.pattern,
            block_size=options.block_size,
            window=options.window,
            stride=options.stride,
        )

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, dropout: float
    ) -> Tensor:
        positions = ctx.positions
        bias_fn = positions.bias_of if positions is not None and positions.has_bias else None
        k, v = _cache_keys(self.layer, k, v, ctx)
        if k.shape[2] == q.shape[2]:  # nothing cached before these tokens
            return sparse_attention(
                q,
                k,
                v,
                self.pattern,
                causal=ctx.causal,
                key_keep=ctx.key_keep,
                bias_fn=bias_fn,
                dropout_p=dropout,
                training=dropout > 0,
            )
        if not ctx.causal:
            raise ValueError("a KV cache is for causal (decoder) attention only")
        return sparse_decode(
            q, k, v, self.pattern, ctx.q_positions, key_keep=ctx.key_keep, bias_fn=bias_fn
        )


def attention_kernel(config: ModelConfig, layer: int, cross: bool = False) -> nn.Module:
    """The module that attends for one layer, of the kind config.attention names."""
    if config.attention == "performer":
        return PerformerAttention(config, layer, cross)
    if config.attention == "sparse" and not cross:
        return SparseAttention(config, layer)
    return SoftmaxAttention(layer)


def performer_layers(model: nn.Module) -> list[PerformerAttention]:
    """Every Performer attention in the model, in module order."""
    return [m for m in model.modules() if isinstance(m, PerformerAttention)]
