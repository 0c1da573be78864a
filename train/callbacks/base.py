"""The Trainer's hooks: a small set every extension of the loop goes through.

    on_train_start(trainer)            engine built, checkpoint restored, before step 1
    on_step_begin(trainer, step)       before each optimizer step (its number, from 1)
    on_step_end(trainer, step)         after every optimizer step (StepResult)
    on_log(trainer, record)            before a metrics record is written; may add keys
    on_checkpoint(trainer, saved)      after a checkpoint is committed (SavedCheckpoint)
    on_close(trainer, result)          after the last step (FitResult)

Every rank calls every hook at the same steps, so a hook may run collectives.
Callbacks run in list order: a callback sees the keys earlier ones added to
a record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class StepResult:
    """What one optimizer step did on this rank."""

    step: int
    loss: torch.Tensor  # mean over the step's micro-batches (on the device, not synced)
    units: int  # tokens or images over all ranks
    seconds: float  # wall time of the step
    data_wait_s: float  # of which waiting for batches
    busy_s: float = 0.0  # this rank's own time: waiting for batches plus forward passes


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, trainer: Any) -> None:
        pass

    def on_step_begin(self, trainer: Any, step: int) -> None:
        pass

    def on_step_end(self, trainer: Any, step: StepResult) -> None:
        pass

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        pass

    def on_checkpoint(self, trainer: Any, saved: Any) -> None:
        pass

    def on_close(self, trainer: Any, result: Any) -> None:
        pass


class CallbackList(Callback):
    """Several callbacks called in order, as one."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = list(callbacks)

    def on_train_start(self, trainer: Any) -> None:
        for cb in self.callbacks:
            cb.on_train_start(trainer)

    def on_step_begin(self, trainer: Any, step: int) -> None:
        for cb in self.callbacks:
            cb.on_step_begin(trainer, step)

    def on_step_end(self, trainer: Any, step: StepResult) -> None:
        for cb in self.callbacks:
            cb.on_step_end(trainer, step)

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_log(trainer, record)

    def on_checkpoint(self, trainer: Any, saved: Any) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(trainer, saved)

    def on_close(self, trainer: Any, result: Any) -> None:
        for cb in self.callbacks:
            cb.on_close(trainer, result)
