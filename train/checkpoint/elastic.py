"""Elastic resume: load a checkpoint written at another world size or ZeRO stage.

A ZeRO checkpoint is partitioned for the world size and stage that wrote it.
gobig reads it back whole, stage-independently:

1. DeepSpeed's universal converter (ds_to_universal) writes each parameter's
   fp32 master and Adam moments whole, once, into CHECKPOINT/universal/.
2. The new engine, built normally for the current world size and stage,
   takes those values through DeepSpeed's stage-agnostic fragment API
   (`safe_set_full_fp32_param`, `safe_set_full_optimizer_state`); the
   working (possibly bf16) weights are set from the same fp32 values.

Step counters and the schedule come from the checkpoint's meta. A source at
ZeRO stage 0 is never partitioned, so it needs none of this: any world size
loads it directly (the caller only routes stage changes from 0 here).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

import torch

from train.checkpoint.layout import ENGINE_TAG, UNIVERSAL_TAG, CheckpointError
from train.checkpoint.weights import safe_load

MOMENTS = ("exp_avg", "exp_avg_sq")


def needs_elastic_load(meta: dict[str, Any], world_size: int, zero_stage: int) -> bool:
    """Whether the checkpoint described by `meta` cannot be loaded as it is."""
    if meta["zero_stage"] == 0 and zero_stage == 0:
        return False  # replicated, not partitioned: any world size reads it
    return meta["world_size"] != world_size or meta["zero_stage"] != zero_stage


def convert_to_universal(ckpt: Path) -> Path:
    """Write CHECKPOINT/universal from CHECKPOINT/deepspeed (rank 0, once)."""
    from deepspeed.checkpoint import ds_to_universal

    target = ckpt / UNIVERSAL_TAG
    if target.is_dir():
        return target
    partial = ckpt / (UNIVERSAL_TAG + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=str(ckpt / ENGINE_TAG),
        output_folder=str(partial),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    # The converter prints its own progress; keep the training log readable.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ds_to_universal.main(args)
    partial.rename(target)  # appears whole or not at all
    return target


def _read_full(folder: Path, key: str, shape: torch.Size) -> torch.Tensor:
    # ZeRO-1/2 sources store {"param": tensor}; ZeRO-3 sources a flat tensor.
    value = safe_load(folder / f"{key}.pt", map_location="cpu")
    if isinstance(value, dict):
        value = value["param"]
    return value.reshape(shape).float()


def load_universal_into(engine: Any, ckpt: Path, step: int) -> None:
    """Set every parameter and Adam moment of `engine` from CHECKPOINT/universal.

    Args:
        engine: a freshly initialised DeepSpeed engine (any ZeRO stage).
        ckpt: the checkpoint directory holding universal/.
        step: optimizer steps taken so far (Adam's bias correction needs it).
    """
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    zero_dir = ckpt / UNIVERSAL_TAG / "zero"
    _materialize_adam_state(engine)
    for name, param in engine.module.named_parameters():
        folder = zero_dir / name
        if not folder.is_dir():
            raise CheckpointError(f"{ckpt}: no universal state for parameter {name}")
        shape = param.ds_shape if hasattr(param, "ds_shape") else param.shape
        fp32 = _read_full(folder, "fp32", shape)
        # Working weights (all ranks see the full tensor inside the context).
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if engine.global_rank == 0 or not hasattr(param, "ds_id"):
                param.data.copy_(fp32.to(param.device, param.dtype))
        safe_set_full_fp32_param(param, fp32.to(param.device))
        for key in MOMENTS:
            moment = _read_full(folder, key, shape).to(param.device)
            if hasattr(param, "_hp_mapping") or hasattr(param, "ds_id"):
                safe_set_full_optimizer_state(param, moment, key)
            else:  # no ZeRO, fp32: the optimizer holds the model's own parameters
                engine.optimizer.state[param][key].copy_(moment)
    _set_step(engine, step)


def _materialize_adam_state(engine: Any) -> None:
    # Adam creates its state lazily at the first step, and DeepSpeed links its
    # per-parameter views to that state only then; a resumed engine has taken
    # no step yet, so create the (zero) state and link it now.
    optimizer = engine.optimizer
    base = getattr(optimizer, "optimizer", optimizer)
    for group in base.param_groups:
        for flat in group["params"]:
            state = base.state[flat]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(flat, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(flat, dtype=torch.float32)
    link = getattr(optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


def _set_step(engine: Any, step: int) -> None:
    optimizer = engine.optimizer
    base = getattr(optimizer, "optimizer", optimizer)
    for state in base.state.values():
        if "step" in state:
            if torch.is_tensor(state["step"]):
                state["step"].fill_(step)
            else:
                state["step"] = step
    for group in base.param_groups:
        if "step" in group:
            group["step"] = step
    engine.global_steps = step
    engine.global_samples = step * engine.train_batch_size()
    if engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict({"last_epoch": step})
