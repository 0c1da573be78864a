"""The worker: one Trainer that owns a run's engine, loaders, checkpoints, log and counters.

`fit()` runs identically in one plain process, under torchrun, or as a Ray
Train worker: every rank calls it with the same config. What differs between
model families is the family object's (train/families.py); what watches or
reports on training is a callback (train/callbacks/); a checkpoint's life is
the Checkpointer's (train/checkpoint/).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import record_function

from train.callbacks import (
    Callback,
    CallbackList,
    ProfilerCallback,
    StepResult,
    ThroughputCallback,
    WandbCallback,
)
from train.callbacks.wandb_log import start_wandb
from train.checkpoint.checkpointer import Checkpointer, SavedCheckpoint
from train.checkpoint.storage import RunStorage
from train.config.schema import ExperimentConfig
from train.control import CONTINUE, STOP, Control
from train.data import build_loaders
from train.distributed import all_reduce_sum, init_distributed
from train.engine import build_engine, untracked_grad_norm
from train.evaluate import evaluate
from train.families import family_of
from train.metrics_log import MetricsLog
from train.peak_flops import PeakFlops
from train.progress import Progress
from train.rng import seed_all
from train.run_dir import RunInfo, prepare_run_dir
from train.startup import StartupTimeline
from train.summary import write_result
from train.task import to_device


@dataclass
class FitResult:
    """What a finished (or stopped) fit reports back."""

    run_dir: Path
    step: int
    final_loss: float | None
    throughput: float  # `unit` per second over this attempt's steps
    last_checkpoint: Path | None
    unit: str = "tokens"
    is_main: bool = True
    stopped_early: bool = False
    eval_metrics: dict[str, float] = field(default_factory=dict)


def fit(
    config: ExperimentConfig,
    run_dir: str | Path,
    resume: bool = True,
    callbacks: Sequence[Callback] = (),
    control: Control | None = None,
) -> FitResult:
    """Train `config` in `run_dir`, continuing from its newest complete checkpoint.

    Args:
        config: the experiment (identical on every rank).
        run_dir: the run directory (config snapshot, metrics, checkpoints, W&B):
            a path, or a URI the ranks work towards through a local staging
            directory (train/checkpoint/storage.py).
        resume: continue from the newest complete checkpoint if there is one.
        callbacks: extra hooks (the Ray worker's reporting), after gobig's own.
        control: outside requests (signals, STOP file, preemption notices);
            default: signals and the run directory's STOP file.
    """
    return Trainer(config, run_dir, resume, control, callbacks).train()


class Trainer:
    """One rank's training run: built from the config, then `train()`.

    Args: as `fit`.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path,
        resume: bool = True,
        control: Control | None = None,
        callbacks: Sequence[Callback] = (),
    ):
        self.config = config
        self.timeline = StartupTimeline()
        self.dist = init_distributed()
        self.timeline.mark("distributed_init")
        self.family = family_of(config.model.family)
        self.storage = RunStorage(run_dir)
        self.run_dir = self.storage.local  # where this rank writes; the home is `storage`
        self.control = control or Control(self.run_dir)
        self.control.install_signal_handlers()
        self.checkpointer = Checkpointer(self.storage, config, self.dist, self.family.unit)
        meta = self.checkpointer.locate() if resume else None
        run_info = prepare_run_dir(self.run_dir, config, self.dist, meta, self.storage.name)
        self.checkpointer.run_id = run_info.wandb_id
        # Data first: a bad source or a model that does not fit the data fails in
        # seconds, before the engine is built.
        self.train_loader, self.val_loader = build_loaders(config, self.dist)
        self.timeline.mark("data_loaders")
        self.engine = build_engine(config, self.dist)
        self.timeline.mark("model_and_engine")
        self.progress = self._restore()
        self.timeline.mark("checkpoint_load")
        self.log = MetricsLog(self.run_dir, config.train.max_steps, enabled=self.dist.is_main)
        self.log.rewind_to(self.progress.step)
        self.callbacks = CallbackList([*self._own_callbacks(run_info), *callbacks])
        self.timeline.mark("logging_setup")
        self.final_loss: float | None = None
        self.eval_metrics: dict[str, float] = {}
        self.grad_norm: torch.Tensor | None = None  # see untracked_grad_norm
        self._loss_sum: torch.Tensor | float = 0.0  # since the last train record
        self._loss_steps = 0

    def _restore(self) -> Progress:
        progress = self.checkpointer.restore(self.engine, self.train_loader)
        if progress is not None and self.dist.is_main:
            how = "elastically " if self.checkpointer.elastic else ""
            where = self.checkpointer.home_of(self.checkpointer.resume_from)
            print(f"resumed {how}from {where} at step {progress.step}", flush=True)
        if progress is None or self.checkpointer.elastic:
            # No RNG state to continue: dropout differs per rank but is a function
            # of (seed, rank, step). An exact resume restored the saved states.
            step = progress.step if progress else 0
            seed_all(self.config.train.seed * 1000 + self.dist.rank + 7919 * step)
        return progress or Progress()

    def _own_callbacks(self, run_info: RunInfo) -> list[Callback]:
        config, dist = self.config, self.dist
        model = self.engine.module.model
        peak = PeakFlops(dist.device, config.train.precision, config.train.peak_tflops)
        own: list[Callback] = [
            ThroughputCallback(self.family, model.training_flops_per_unit(), peak, dist)
        ]
        profile = config.logging.profile
        if profile.enabled:
            out = self.run_dir / "profile"
            own.append(ProfilerCallback(out, profile.wait, profile.warmup, profile.active))
        if dist.is_main:
            run = start_wandb(config, self.run_dir, run_info.wandb_id, run_info.name)
            if run is not None:
                own.append(WandbCallback(run, skip_through=self.log.wandb_last_step))
        return own

    # -- the loop -----------------------------------------------------------------

    def train(self) -> FitResult:
        """Train to `train.max_steps` (or a stop request); every rank calls this."""
        self.callbacks.on_train_start(self)
        self.batches = iter(self.train_loader)
        first_step, self.units_at_start = self.progress.step, self.progress.units
        self.started = time.perf_counter()
        while self.progress.step < self.config.train.max_steps:
            step = self.train_step()
            if step.step == first_step + 1:
                self.timeline.mark("first_step")
                self.record(self.timeline.record(first_step))
            self.callbacks.on_step_end(self, step)
            if self.after_step() == STOP:
                break
        return self.close()

    def train_step(self) -> StepResult:
        """One optimizer step over `train.grad_accum_steps` micro-batches."""
        t0 = time.perf_counter()
        accum = self.config.train.grad_accum_steps
        loss = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        data_wait, units = 0.0, 0
        for _ in range(accum):
            t_data = time.perf_counter()
            with record_function("gobig.data"):
                batch = next(self.batches)
            data_wait += time.perf_counter() - t_data
            units += self.family.count_units(batch)
            batch = to_device(batch, self.dist.device)
            with record_function("gobig.forward"):
                out = self.engine(batch)
            with record_function("gobig.backward"):
                self.engine.backward(out.loss)
            if self.engine.is_gradient_accumulation_boundary():
                with record_function("gobig.grad_norm"):
                    self.grad_norm = untracked_grad_norm(self.engine)
            with record_function("gobig.optimizer"):
                self.engine.step()
            loss += out.loss.detach().double()
        self.progress.step += 1
        # Every rank's micro-batches have the same shape (the loaders guarantee
        # it), so the global count needs no collective.
        units *= self.dist.world_size
        self.progress.units += units
        self._loss_sum += loss / accum
        self._loss_steps += 1
        seconds = time.perf_counter() - t0
        return StepResult(self.progress.step, loss / accum, units, seconds, data_wait)

    def after_step(self) -> int:
        """Log, evaluate and checkpoint as due; returns the agreed control request."""
        cfg, step = self.config.train, self.progress.step
        is_last = step == cfg.max_steps
        request, committed = self.checkpointer.agree(self.control.poll(step))
        self._announce(committed)
        if step % cfg.log_every == 0 or is_last or request == STOP:
            self.log_train()
        if step % cfg.eval_every == 0 or is_last:
            self.run_eval()
        if self.checkpointer.due(step, request, is_last):
            final = is_last or request != CONTINUE  # the run ends (or stops) right after
            self._announce(
                self.checkpointer.save(self.engine, self.train_loader, self.progress, final)
            )
        return request

    def close(self) -> FitResult:
        """End the attempt: the result record, the callbacks' close, the final upload."""
        elapsed = time.perf_counter() - self.started
        result = FitResult(
            run_dir=self.run_dir,
            step=self.progress.step,
            final_loss=self.final_loss,
            throughput=(self.progress.units - self.units_at_start) / elapsed
            if elapsed > 0
            else 0.0,
            last_checkpoint=self.checkpointer.last,
            unit=self.family.unit,
            is_main=self.dist.is_main,
            stopped_early=self.progress.step < self.config.train.max_steps,
            eval_metrics=self.eval_metrics,
        )
        self.callbacks.on_close(self, result)
        if self.dist.is_main:
            write_result(self.run_dir, result)
            self.storage.upload_run_files(final=True)  # a URI's home gets metrics, result, W&B
        return result

    # -- records --------------------------------------------------------------------

    def record(self, record: dict[str, Any]) -> None:
        """Through the callbacks (which may add keys), then into the metrics log."""
        self.callbacks.on_log(self, record)
        self.log.log(record)

    def log_train(self) -> None:
        """The train record of the steps since the previous one (a collective)."""
        world = self.dist.world_size
        loss_sum = all_reduce_sum([float(self._loss_sum)], self.dist.device)[0]
        self.final_loss = loss_sum / (self._loss_steps * world)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None:
            grad_norm = self.grad_norm
        self.record(
            {
                "kind": "train",
                "step": self.progress.step,
                "loss": self.final_loss,
                "lr": self.engine.get_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
            }
        )
        self._loss_sum, self._loss_steps = 0.0, 0

    def run_eval(self) -> None:
        cfg = self.config.train
        metrics = evaluate(
            self.engine, self.val_loader, self.family, cfg.eval_batches, self.dist.device
        )
        if metrics:
            self.eval_metrics = metrics
            self.record({"kind": "eval", "step": self.progress.step, **metrics})

    def _announce(self, committed: list[SavedCheckpoint]) -> None:
        for saved in committed:
            self.record(
                {
                    "kind": "checkpoint",
                    "step": saved.step,
                    "background": saved.background,
                    "blocking_s": saved.blocking_s,
                    "write_s": saved.write_s,
                }
            )
            self.callbacks.on_checkpoint(self, saved)
