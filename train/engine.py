"""The DeepSpeed engine of a run: model, optimizer, schedule, ZeRO, precision.

`build_engine` is the one place an engine is built: the Trainer and the
benchmarks call it, so what they measure is what training runs.
"""

from __future__ import annotations

from typing import Any

import torch

from model import build_model
from train.checkpoint.weights import use_safe_checkpoint_loading
from train.config.schema import ExperimentConfig
from train.deepspeed_config import deepspeed_config
from train.distributed import DistInfo
from train.optim import WarmupDecaySchedule, build_optimizer
from train.rng import seed_all
from train.task import TrainingModule


def build_engine(config: ExperimentConfig, dist: DistInfo, init_from: str | None = None) -> Any:
    """A DeepSpeed engine around a freshly initialised model of `config`.

    Every rank seeds the same way first, so initial weights are identical
    everywhere. The engine loads checkpoints weights-only; `engine.module.model`
    is the gobig model.

    Args:
        config: the experiment.
        dist: this rank.
        init_from: weights to start from (`model.init_from` of a run that is not
            resuming; train/init_weights.py).
    """
    import deepspeed

    seed_all(config.train.seed)
    module = TrainingModule(build_model(config.model))
    if init_from:
        from train.init_weights import load_initial_weights

        report = load_initial_weights(module.model, init_from)
        if dist.is_main:
            print(report.line(), flush=True)
    optimizer = build_optimizer(module, config)
    scheduler = WarmupDecaySchedule(optimizer, config.optim, config.train.max_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(config, dist.world_size),
    )
    use_safe_checkpoint_loading(engine)
    if config.train.compile:
        engine.compile()
    return engine


def untracked_grad_norm(engine: Any) -> torch.Tensor | None:
    """The global grad norm where DeepSpeed does not record it, else None.

    DeepSpeed's optimizers (ZeRO, bf16/fp16 wrappers) record the global grad
    norm; a plain torch optimizer (ZeRO-0 in fp32) does not, so measure it
    here, after backward (gradients already averaged over ranks), before step.
    """
    if hasattr(engine.optimizer, "_global_grad_norm"):
        return None
    norms = [
        p.grad.detach().float().norm() for p in engine.module.parameters() if p.grad is not None
    ]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else None
