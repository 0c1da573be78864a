"""The Trainer callback through which each Ray Train worker reports to Ray."""

from __future__ import annotations

from typing import Any

from train.callbacks import Callback


class RayReport(Callback):
    """After each committed checkpoint, report its step and the latest loss.

    Every rank commits the same checkpoints, so every rank reports the same
    number of times, as Ray Train requires.
    """

    def on_checkpoint(self, trainer: Any, saved: Any) -> None:
        import ray.train

        metrics = {"step": saved.step, "loss": trainer.final_loss}
        ray.train.report({k: v for k, v in metrics.items() if v is not None})
