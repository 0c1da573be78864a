"""Transformer blocks (pre- or post-LayerNorm) and the stack that runs them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model.attention import AttentionContext, CrossAttention, SelfAttention
from model.config import ModelConfig
from model.init import ResidualProjection


def layer_norm(config: ModelConfig) -> nn.LayerNorm:
    """A LayerNorm of width d_model honouring config.bias and layer_norm_eps."""
    return nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)


def activation(config: ModelConfig) -> nn.GELU:
    """The GELU config.activation names: exact (erf) or its tanh approximation."""
    return nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")


class MLP(nn.Module):
    """Linear d -> mlp_ratio * d, GELU, Linear back to d.

    Args:
        config: model shape.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.d_model
        self.fc = nn.Linear(config.d_model, hidden, bias=config.bias)
        self.act = activation(config)
        self.proj = ResidualProjection(hidden, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-LN: x + drop(attn(LN(x))), then x + drop(mlp(LN(x))).
    Post-LN (config.norm=post): LN(x + drop(attn(x))), then LN(x + drop(mlp(x))).

    Args:
        config: model shape.
        layer: block index (the attention's KV-cache slot).
    """

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = layer_norm(config)
        self.attn = SelfAttention(config, layer)
        self.ln_2 = layer_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)
        self.post_norm = config.norm == "post"

    def _residual(self, x: Tensor, norm: nn.Module, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """One sub-layer with its residual connection and LayerNorm (pre or post)."""
        if self.post_norm:
            return norm(x + self.dropout(sublayer(x)))
        return x + self.dropout(sublayer(norm(x)))

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        x = self._residual(x, self.ln_1, lambda h: self.attn(h, ctx))
        return self._residual(x, self.ln_2, self.mlp)


class DecoderBlock(Block):
    """A Block with cross-attention between self-attention and the MLP (the
    decoder of "Attention Is All You Need"): three residual sub-layers.

    Args:
        config: model shape.
        layer: block index (the slot in both the self- and cross-attention caches).
    """

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__(config, layer)
        self.ln_cross = layer_norm(config)
        self.cross_attn = CrossAttention(config, layer)

    def forward(
        self, x: Tensor, ctx: AttentionContext, memory: Tensor, memory_ctx: AttentionContext
    ) -> Tensor:
        """x [B, T, d]: causal self-attention under ctx, then attention over the
        encoder output memory [B, S, d] under memory_ctx (source padding), then the MLP."""
        x = self._residual(x, self.ln_1, lambda h: self.attn(h, ctx))
        x = self._residual(x, self.ln_cross, lambda h: self.cross_attn(h, memory, memory_ctx))
        return self._residual(x, self.ln_2, self.mlp)


class TransformerStack(nn.Module):
    """n_layer blocks, then the final LayerNorm that pre-LN needs (post-LN
    blocks end normalised already, so there it is left out).

    Args:
        config: model shape; activation_checkpointing recomputes each block's
            activations in backward while training.
        blocks: the blocks to run (e.g. seq2seq's DecoderBlocks); by default
            config.n_layer `Block`s.
    """

    def __init__(self, config: ModelConfig, blocks: Iterable[nn.Module] | None = None) -> None:
        super().__init__()
        if blocks is None:
            blocks = (Block(config, i) for i in range(config.n_layer))
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = layer_norm(config) if config.norm == "pre" else nn.Identity()
        self.activation_checkpointing = config.activation_checkpointing

    def forward(self, x: Tensor, ctx: AttentionContext, *extra: Any) -> Tensor:
        """Run x [B, T, d] through every block, each called as block(x, ctx, *extra),
        and the final LayerNorm."""
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # Non-reentrant checkpointing accepts the non-tensor ctx and keeps module hooks.
            if recompute:
                x = checkpoint(block, x, ctx, *extra, use_reentrant=False)
            else:
                x = block(x, ctx, *extra)
        return self.ln_f(x)
