"""Throughput, MFU, data wait, step time and memory, added to every train record.

Counts the family's unit (tokens for text, images for ViT): the rate key and
the counter are the family's (`tokens_per_s` / `tokens_seen`, or
`samples_per_s` / `images_seen`).
"""

from __future__ import annotations

from typing import Any

from train.callbacks.base import Callback, StepResult
from train.distributed import DistInfo
from train.families import Family
from train.peak_flops import PeakFlops


class ThroughputCallback(Callback):
    """Measures the window of steps since the previous train record.

    Args:
        family: names the unit.
        flops_per_unit: training FLOPs per unit (the model's own count).
        peak: the per-worker peak FLOP/s (MFU's denominator).
        dist: this rank (MFU is per worker).
    """

    def __init__(self, family: Family, flops_per_unit: float, peak: PeakFlops, dist: DistInfo):
        self.family = family
        self.flops_per_unit = flops_per_unit
        self.peak = peak
        self.dist = dist
        self._reset()

    def _reset(self) -> None:
        self.units = 0
        self.seconds = 0.0
        self.data_wait_s = 0.0
        self.steps = 0

    def on_step_end(self, trainer: Any, step: StepResult) -> None:
        self.units += step.units
        self.seconds += step.seconds
        self.data_wait_s += step.data_wait_s
        self.steps += 1

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["kind"] != "train":
            return
        rate = self.units / self.seconds if self.seconds > 0 else 0.0
        achieved = rate * self.flops_per_unit / self.dist.world_size
        self.peak.raise_to(achieved)  # nothing runs faster than its peak
        record[self.family.rate_key] = rate
        record["mfu"] = achieved / self.peak.value
        record["step_time_s"] = self.seconds / max(1, self.steps)
        record["data_wait_frac"] = self.data_wait_s / self.seconds if self.seconds else 0.0
        record["peak_mem_gb"] = peak_memory_gb(self.dist)
        record[f"{self.family.unit}_seen"] = trainer.progress.units
        self._reset()


def peak_memory_gb(dist: DistInfo) -> float:
    """Peak memory of this worker: device memory, or the process's RSS on CPU."""
    if dist.device.type == "cpu":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().max_memory_allocated(dist.device) / 2**30
