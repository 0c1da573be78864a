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
    family_callbacks,
)
from train.callbacks.feature_redraw import FeatureRedraw
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
from train.faults import Faults
from train.guards.anomaly import AnomalyGuard
from train.guards.hang import HangWatch, default_hang_timeout, is_timeout
from train.guards.policy import AnomalyPolicy
from train.guards.record import GuardRecord
from train.guards.straggler import StragglerCallback
from train.metrics_log import MetricsLog
from train.peak_flops import PeakFlops
from train.progress import Progress
from train.rng import seed_all
from train.run_dir import RunInfo, keep_tokenizer, prepare_run_dir
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
        self.family = family_of(config.model)
        self.storage = RunStorage(run_dir)
        self.run_dir = self.storage.local  # where this rank writes; the home is `storage`
        self.control = control or Control(self.run_dir)
        self.control.install_signal_handlers()
        cfg = config.train
        self.hang_watch = HangWatch(
            self.run_dir, self.dist.rank, self.dist.world_size,
            cfg.hang_timeout_s or default_hang_timeout(self.dist.device.type),
            cfg.slow_phase_timeout_s,
        )  # fmt: skip
        try:
            self._build(config, resume, callbacks)
        except BaseException:
            self.hang_watch.close()
            raise

    def _build(self, config: ExperimentConfig, resume: bool, callbacks: Sequence[Callback]):
        self.faults = Faults(config.faults, self.run_dir, self.dist.rank)
        self.checkpointer = Checkpointer(self.storage, config, self.dist, self.family.unit)
        self.checkpointer.before_write = self.faults.before_checkpoint_file if self.faults else None
        meta = self.checkpointer.locate() if resume else None
        run_info = prepare_run_dir(self.run_dir, config, self.dist, meta, self.storage.name)
        self.checkpointer.run_id = run_info.wandb_id
        # Data first: a bad source or a model that does not fit the data fails in
        # seconds, before the engine is built.
        self.train_loader, self.val_loader = build_loaders(config, self.dist)
        if self.dist.is_main:
            keep_tokenizer(self.run_dir, self.train_loader)
        self.timeline.mark("data_loaders")
        # A run that restores a checkpoint of its own never reads model.init_from.
        init_from = None if meta is not None else config.model.init_from
        self.engine = build_engine(config, self.dist, init_from)
        self.timeline.mark("model_and_engine")
        self.guard_record = GuardRecord(self.storage, self.dist.is_main)
        self.anomalies = AnomalyGuard(
            config.guards, self.engine, self.guard_record, config.train.precision,
            self.dist.device,
        )  # fmt: skip
        self.anomaly_policy = AnomalyPolicy(config.guards, config.train.grad_accum_steps)
        self.checkpointer.components["anomaly_guard"] = self.anomalies
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
        self.anomaly: dict[str, Any] | None = None  # of the latest step
        self._save_owed = False  # a checkpoint was due at an anomalous step

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
        guards = config.guards
        if guards.straggler_factor > 0 and dist.world_size > 1:
            own.append(StragglerCallback(guards.straggler_factor, guards.straggler_patience, dist))
        # What the family's runs write beside the losses (GPT: samples; seq2seq: BLEU).
        own += family_callbacks(self.family, config, getattr(self.train_loader, "tokenizer", None))
        own += FeatureRedraw.for_model(model, config)  # a Performer's features, redrawn
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
        try:
            self.callbacks.on_train_start(self)
            self.batches = iter(self.train_loader)
            first_step, self.units_at_start = self.progress.step, self.progress.units
            self.started = time.perf_counter()
            while self.progress.step < self.config.train.max_steps:
                self.callbacks.on_step_begin(self, self.progress.step + 1)
                step = self.train_step()
                if step.step == first_step + 1:
                    self.timeline.mark("first_step")
                    self.record(self.timeline.record(first_step))
                self.callbacks.on_step_end(self, step)
                if self.after_step() == STOP:
                    break
                self.hang_watch.progress(self.progress.step)
            with self.hang_watch.slow_phase("close"):  # W&B's finish, a URI's uploads
                return self.close()
        except RuntimeError as exc:
            if is_timeout(exc):  # a collective gave up waiting for a rank
                raise self.hang_watch.error() from None
            raise
        finally:
            self.hang_watch.close()

    def train_step(self) -> StepResult:
        """One optimizer step over `train.grad_accum_steps` micro-batches.

        Before the update the anomaly guard sees the step's global loss and grad
        norm and may withhold it (train/guards/anomaly.py).
        """
        t0 = time.perf_counter()
        accum, step = self.config.train.grad_accum_steps, self.progress.step + 1
        self._skip_recorded_batches(step)
        loss = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        data_wait, busy, units = 0.0, 0.0, 0
        for _ in range(accum):
            t_data = time.perf_counter()
            self.faults.before_batch(step)
            with record_function("gobig.data"):
                batch = next(self.batches)
            data_wait += time.perf_counter() - t_data
            units += self.family.count_units(batch)
            batch = to_device(batch, self.dist.device)
            with record_function("gobig.forward"):
                out = self.engine(batch)
            busy += time.perf_counter() - t_data
            micro_loss = self.faults.poison_loss(step, out.loss)
            with record_function("gobig.backward"):
                self.engine.backward(micro_loss)
            loss += micro_loss.detach().double()
            if self.engine.is_gradient_accumulation_boundary():
                with record_function("gobig.grad_norm"):
                    self.grad_norm = untracked_grad_norm(self.engine)
                self.anomalies.before_update(step, loss / accum, self.grad_norm)
            with record_function("gobig.optimizer"):
                self.engine.step()
        self.anomaly = self.anomalies.after_update()
        self.progress.step = step
        # Every rank's micro-batches have the same shape (the loaders guarantee
        # it), so the global count needs no collective.
        units *= self.dist.world_size
        self.progress.units += units
        self._loss_sum += loss / accum
        self._loss_steps += 1
        seconds = time.perf_counter() - t0
        return StepResult(step, loss / accum, units, seconds, data_wait, busy)

    def _skip_recorded_batches(self, step: int) -> None:
        # A rollback skipped the batches that led to an anomaly; every later
        # attempt that reaches this step skips the same ones.
        skip = self.guard_record.batches_to_skip(step)
        if skip is None:
            return
        before = self.train_loader.state_dict()
        for _ in range(skip["micro_batches"]):
            next(self.batches)
        if "from" not in skip:
            skip["from"], skip["to"] = before, self.train_loader.state_dict()
            self.guard_record.save()
        if self.dist.is_main:
            print(f"gobig: skipped {skip['micro_batches']} micro-batch(es) before step {step} "
                  f"(recorded in {self.guard_record.path.name})", flush=True)  # fmt: skip

    def after_step(self) -> int:
        """Anomaly policy, then log, evaluate and checkpoint as due; returns the agreed
        control request."""
        cfg, step = self.config.train, self.progress.step
        if self.anomaly is not None and self.anomaly_policy.handle(self, self.anomaly):
            return CONTINUE  # rolled back: the steps since the checkpoint are replayed
        self.faults.after_step(step)
        is_last = step == cfg.max_steps
        request, committed = self.checkpointer.agree(self.control.poll(step))
        self._announce(committed)
        if step % cfg.log_every == 0 or is_last or request == STOP:
            self.log_train()
        if step % cfg.eval_every == 0 or is_last:
            with self.hang_watch.slow_phase("evaluation"):
                self.run_eval()
        due = self.checkpointer.due(step, request, is_last) or self._save_owed
        if due and self.anomaly is not None:
            self._save_owed = True  # never a checkpoint of a step whose loss was anomalous
        elif due:
            self._save_owed = False
            final = is_last or request != CONTINUE  # the run ends (or stops) right after
            self.faults.begin_save(step)
            with self.hang_watch.slow_phase("checkpoint"):
                saved = self.checkpointer.save(self.engine, self.train_loader, self.progress, final)
            self._announce(saved)
        return request

    def commit_pending(self) -> None:
        """Commit a checkpoint still being written (every rank)."""
        if self.checkpointer.pending is not None:
            self._announce([self.checkpointer.commit()])

    def reload(self) -> None:
        """Continue from the checkpoint the Checkpointer has located (a rollback)."""
        self.progress = self._restore()
        self.log.rewind_to(self.progress.step)
        self.batches = iter(self.train_loader)
        self._loss_sum, self._loss_steps = 0.0, 0

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
            self.faults.after_checkpoint(saved.path, saved.step)
