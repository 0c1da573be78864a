"""GPT-2 style weight initialisation shared by every model family."""

from __future__ import annotations

import math

from torch import nn


class ResidualProjection(nn.Linear):
    """A Linear whose output is added to the residual stream (attention out, MLP out).

    A plain nn.Linear in every respect; the type only tells the initialiser to
    scale it down.
    """


def init_transformer_weights(model: nn.Module, init_std: float, n_layer: int) -> None:
    """Initialise weights in place the way GPT-2 does.

    Linear, Conv2d and Embedding weights ~ N(0, init_std); biases zero;
    LayerNorms weight 1, bias 0. `ResidualProjection`s (attention output,
    second MLP linear) get init_std / sqrt(2 * n_layer), so
    the residual stream's variance does not grow with depth (two writes per
    block). Tied weights are simply initialised twice with the same law.

    Args:
        model: the module tree to initialise.
        init_std: standard deviation of the normal initialisation.
        n_layer: number of blocks (for the residual scaling).
    """
    residual_std = init_std / math.sqrt(2 * n_layer)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            std = residual_std if isinstance(module, ResidualProjection) else init_std
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=init_std)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
