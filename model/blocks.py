"""Pre-LayerNorm transformer blocks and the stack that runs them."""

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


class MLP(nn.Module):
    """Linear d -> mlp_ratio * d, GELU, Linear back to d.

    Args:
        config: model shape.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.d_model
        self.fc = nn.Linear(config.d_model, hidden, bias=config.bias)
        self.act = nn.GELU()
        self.proj = ResidualProjection(hidden, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """x + drop(attn(LN(x))), then x + drop(mlp(LN(x))).

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

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x), ctx))
        return x + self.dropout(self.mlp(self.ln_2(x)))


class TransformerStack(nn.Module):
    """n_layer blocks followed by the final LayerNorm that pre-LN needs.

    Args:
        config: model shape; activation_checkpointing recomputes each block's
            activations in backward while training.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = layer_norm(config)
        self.activation_checkpointing = config.activation_checkpointing

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        """Run x [B, T, d] through every block and the final LayerNorm."""
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # Non-reentrant checkpointing accepts the non-tensor ctx and keeps module hooks.
            x = checkpoint(block, x, ctx, use_reentrant=False) if recompute else block(x, ctx)
        return self.ln_f(x)
