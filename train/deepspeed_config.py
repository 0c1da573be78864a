"""Derive the DeepSpeed JSON from the experiment config.

This is the only place DeepSpeed settings are written; `config.deepspeed`
(an optional pass-through) is deep-merged over the result for advanced keys.
The optimizer and scheduler are passed to DeepSpeed as objects (see
train/optim.py), so they do not appear here.
"""

from __future__ import annotations

from typing import Any

from train.config.load import merge
from train.config.schema import ExperimentConfig


def deepspeed_config(config: ExperimentConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for `config` at `world_size` data-parallel ranks.

    Args:
        config: the experiment.
        world_size: number of processes actually running (may differ from
            cluster.num_workers when resuming elastically or under torchrun).
    """
    t, z = config.train, config.zero
    zero: dict[str, Any] = {"stage": z.stage}
    if z.stage >= 1:
        zero.update(
            overlap_comm=False,  # no overlap stream on CPU; harmless on GPU at this size
            contiguous_gradients=True,
            reduce_bucket_size=int(5e7),
            allgather_bucket_size=int(5e7),
        )
    if z.offload_optimizer:
        zero["offload_optimizer"] = _offload_target(config, pin_memory=config.cluster.use_gpu)
    if z.offload_params:
        zero["offload_param"] = _offload_target(config, pin_memory=config.cluster.use_gpu)

    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.micro_batch_size * t.grad_accum_steps * world_size,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,  # gobig prints its own metrics
        "wall_clock_breakdown": False,
        # The loop keeps its own counters and RNG; DeepSpeed need not dump config.
        "dump_state": False,
    }
    if z.offload_optimizer:
        # A torch optimizer with offload is allowed but slow; DeepSpeed's CPU Adam
        # is built from the same AdamW settings by train/optim.py.
        ds["zero_force_ds_cpu_optimizer"] = True
    return merge(ds, config.deepspeed)


def _offload_target(config: ExperimentConfig, pin_memory: bool) -> dict[str, Any]:
    if config.zero.nvme_path:
        return {"device": "nvme", "nvme_path": config.zero.nvme_path, "pin_memory": pin_memory}
    return {"device": "cpu", "pin_memory": pin_memory}
