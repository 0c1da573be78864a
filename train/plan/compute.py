"""FLOPs per step and the time a training budget takes at an assumed MFU.

A step's FLOPs are the model's own `training_flops_per_unit()` (6N + 12LHQT per token,
PaLM appendix B; see model/accounting.py) times the units the training loop counts in
a step: tokens for GPT and BERT, target tokens for seq2seq, images for ViT, every sample
taken at full length. MFU is in these model FLOPs, so activation recomputation is not
in the count: it shows as a lower MFU.
"""

from __future__ import annotations

import math

from train.plan.schema import Compute, Hardware, ModelShape


def step_units(shape: ModelShape, global_batch: int) -> int:
    """Units (tokens or images) the training loop counts in one step of `global_batch` samples."""
    return global_batch * shape.units_per_sample


def compute_estimate(
    shape: ModelShape, hardware: Hardware, global_batch: int, total_units: tuple[int, str]
) -> Compute:
    """Step FLOPs, step time, throughput and the time to train on `total_units`.

    Args:
        shape: the model (its FLOPs per unit and units per sample).
        hardware: devices, their peak and the assumed MFU.
        global_batch: samples per optimizer step.
        total_units: (units to train on, where that figure came from).
    """
    units_per_step = step_units(shape, global_batch)
    step_flops = shape.flops_per_unit * units_per_step
    achieved = hardware.devices * hardware.peak_tflops * 1e12 * hardware.mfu  # FLOP/s
    step_time = step_flops / achieved
    total, source = total_units
    steps = math.ceil(total / units_per_step)
    wall = steps * step_time
    return Compute(
        flops_per_unit=shape.flops_per_unit,
        units_per_step=units_per_step,
        step_flops=step_flops,
        step_time_s=step_time,
        units_per_s=units_per_step / step_time,
        total_units=total,
        total_units_source=source,
        steps=steps,
        wall_clock_s=wall,
        gpu_hours=wall * hardware.devices / 3600,
    )
