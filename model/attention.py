"""Multi-head self- and cross-attention.

Masks, score biases and rotary angles do not depend on the layer, so a model
builds them once per forward into an `AttentionContext` and every layer reads
it. How queries meet keys is the layer's `kernel` (model/attention_kinds.py):
exact softmax on torch's scaled_dot_product_attention, FAVOR+ (Performer) or
block-sparse. SDPA picks flash / memory-efficient kernels on GPU; the plain
causal case passes `is_causal=True` with no mask tensor, which keeps the flash
path open. The other kernels never need the dense [Tq, Tk] masks, so a model
using them builds its context with dense=False and none is made.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from model.attention_context import AttentionContext, KVCache, build_attention_context
from model.attention_kinds import attention_kernel
from model.config import ModelConfig
from model.init import ResidualProjection
from model.positions import apply_rotary

__all__ = [
    "AttentionContext",
    "CrossAttention",
    "KVCache",
    "SelfAttention",
    "build_attention_context",
]


_HALF = (torch.bfloat16, torch.float16)


class _MultiHeadAttention(nn.Module):
    """What self- and cross-attention share: head split, SDPA, output projection.

    Args:
        config: model shape (d_model, n_head, bias, dropout, attention).
        layer: this layer's index, its slot in a KVCache.
        cross: cross-attention (the kernel then never applies causality or
            block sparsity: every query may read the whole memory).
    """

    proj: ResidualProjection

    def __init__(self, config: ModelConfig, layer: int, cross: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.d_model = config.d_model
        self.dropout = config.dropout
        self.kernel = attention_kernel(config, layer, cross=cross)
        # Subclasses create their input projections and then `self.proj`: the
        # registration order fixes parameter order, which ZeRO's flat
        # partitions and saved optimizer states depend on.

    def _heads(self, x: Tensor) -> Tensor:
        """[B, T, d] -> [B, H, T, Dh]."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, -1).transpose(1, 2)

    def _attend_and_project(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """The kernel over q [B, H, Tq, Dh] and the new k, v [B, H, Tk, Dh] (it
        reads and extends ctx.kv_cache); return proj(out) [B, Tq, d]."""
        b, _, t, _ = q.shape
        dtype = q.dtype
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and dtype in _HALF:
            # CPU attention kernels in bf16/fp16 are slower than in fp32 (the
            # backward most of all) and less exact; the projections around
            # them keep the half precision. Autocast would cast back down.
            with torch.autocast("cpu", enabled=False):
                y = self.kernel(q.float(), k.float(), v.float(), ctx, dropout)
        else:
            y = self.kernel(q, k, v, ctx, dropout)
        return self.proj(y.to(dtype).transpose(1, 2).reshape(b, t, self.d_model))


class SelfAttention(_MultiHeadAttention):
    """Multi-head self-attention with a fused QKV projection.

    Args:
        config: model shape (d_model, n_head, bias, dropout).
        layer: this layer's index, its slot in a KVCache.
    """

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__(config, layer)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.proj = ResidualProjection(config.d_model, config.d_model, bias=config.bias)

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        """Attend over x [B, T, d] (plus cached keys); return [B, T, d]."""
        q, k, v = (self._heads(part) for part in self.qkv(x).split(self.d_model, dim=2))
        if ctx.rotary is not None:
            cos, sin = ctx.rotary
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return self._attend_and_project(q, k, v, ctx)


class CrossAttention(_MultiHeadAttention):
    """Queries from the decoder attend over the encoder output (the "memory").

    No position scheme acts here (rotary and ALiBi are relative positions
    within one sequence); ctx.keep carries the source padding mask.

    Args:
        config: model shape (d_model, n_head, bias, dropout).
        layer: this layer's index, its slot in the cross-attention KVCache.
    """

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__(config, layer, cross=True)
        self.q = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.kv = nn.Linear(config.d_model, 2 * config.d_model, bias=config.bias)
        self.proj = ResidualProjection(config.d_model, config.d_model, bias=config.bias)

    def forward(self, x: Tensor, memory: Tensor, ctx: AttentionContext) -> Tensor:
        """Attend from x [B, T, d] over memory [B, S, d]; return [B, T, d].

        With ctx.kv_cache the memory's keys and values are projected on the
        first call and reused afterwards: they do not change while decoding.
        """
        cache = ctx.kv_cache
        cached = None if cache is None else cache.layers[self.layer]
        if cached is None:
            k, v = (self._heads(part) for part in self.kv(memory).split(self.d_model, dim=2))
            if cache is not None:
                cache.layers[self.layer] = (k, v)
        else:
            k, v = cached
        # The memory's keys are all there is: the kernel must not cache them again.
        ctx = dataclasses.replace(ctx, kv_cache=None)
        return self._attend_and_project(self._heads(self.q(x)), k, v, ctx)
