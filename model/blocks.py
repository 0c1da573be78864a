"""Transformer blocks (pre- or post-LayerNorm) and the stack that runs them."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model.attention import AttentionContext, SelfAttention
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

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        if self.post_norm:
            x = self.ln_1(x + self.dropout(self.attn(x, ctx)))
            return self.ln_2(x + self.dropout(self.mlp(x)))
        x = x + self.dropout(self.attn(self.ln_1(x), ctx))
        return x + self.dropout(self.mlp(self.ln_2(x)))


class TransformerStack(nn.Module):
    """n_layer blocks, then the final LayerNorm that pre-LN needs (post-LN
    blocks end normalised already, so there it is left out).

    Args:
        config: model shape; activation_checkpointing recomputes each block's
            activations in backward while training.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = layer_norm(config) if config.norm == "pre" else nn.Identity()
        self.activation_checkpointing = config.activation_checkpointing

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        """Run x [B, T, d] through every block and the final LayerNorm."""
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # Non-reentrant checkpointing accepts the non-tensor ctx and keeps module hooks.
            x = checkpoint(block, x, ctx, use_reentrant=False) if recompute else block(x, ctx)
        return self.ln_f(x)
