"""Redrawing a Performer's random features as training goes (model.performer.redraw_every).

FAVOR+ estimates softmax attention with random features; drawing new ones from
time to time keeps the model from fitting one draw's errors. Each draw is a
function of train.seed, the draw's number (the step's (step - 1) //
redraw_every) and the layer, set before the step that uses it: a run resumed
from any checkpoint, on any number of ranks, uses the very features the
uninterrupted run used, so its losses are identical. Every rank computes the
same draw, so no collective is needed. The features live in the layers'
`projection` buffers, so checkpoints and exports carry the ones in use.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from model.attention_kinds import PerformerAttention, performer_layers
from train.callbacks.base import Callback

_MASK = (1 << 63) - 1


def draw_seed(seed: int, draw: int, layer: int) -> int:
    """The generator seed of one layer's features in one draw: distinct per
    (seed, draw, layer), never negative."""
    mixed = seed * 0x9E3779B97F4A7C15 + draw * 0xBF58476D1CE4E5B9 + layer * 0x94D049BB133111EB
    return mixed & _MASK


class FeatureRedraw(Callback):
    """Sets every Performer layer's features for the step about to run.

    Args:
        layers: the model's Performer attentions, in module order.
        redraw_every: steps per draw; 0 keeps draw 0 for the whole run.
        seed: train.seed.
    """

    def __init__(self, layers: list[PerformerAttention], redraw_every: int, seed: int) -> None:
        self.layers = layers
        self.redraw_every = redraw_every
        self.seed = seed
        self.draw: int | None = None  # the draw the layers hold now

    @classmethod
    def for_model(cls, model: nn.Module, config: Any) -> list[Callback]:
        """[the callback] when the model has Performer layers, else []."""
        layers = performer_layers(model)
        if not layers:
            return []
        return [cls(layers, config.model.performer.redraw_every, config.train.seed)]

    def draw_for(self, step: int) -> int:
        return 0 if self.redraw_every == 0 else (step - 1) // self.redraw_every

    def on_step_begin(self, trainer: Any, step: int) -> None:
        draw = self.draw_for(step)
        if draw == self.draw:
            return
        for index, layer in enumerate(self.layers):
            layer.redraw(draw_seed(self.seed, draw, index))
        self.draw = draw
