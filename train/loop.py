"""The worker loop: build the engine, train, evaluate, log, checkpoint, resume.

`fit()` runs identically in one plain process, under torchrun, or as a Ray
Train worker: every rank calls it with the same config. Callbacks let the
caller (the Ray orchestrator) see each checkpoint without this module
knowing about Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model import build_model
from train import checkpoint as ckpt_io
from train.async_checkpoint import BackgroundWrite, can_fork, capture_engine_writes
from train.config.schema import ExperimentConfig
from train.control import CONTINUE, STOP, Control
from train.data import build_loaders
from train.deepspeed_config import deepspeed_config
from train.distributed import DistInfo, all_reduce_max, all_reduce_sum, barrier, init_distributed
from train.elastic import convert_to_universal, load_universal_into, needs_elastic_load
from train.engine_safety import use_safe_checkpoint_loading
from train.evaluate import evaluate
from train.metrics_log import MetricsLog
from train.optim import WarmupDecaySchedule, build_optimizer
from train.peak_flops import PeakFlops
from train.rng import capture_rng, restore_rng, seed_all
from train.run_dir import prepare_run_dir
from train.startup import StartupTimeline
from train.storage import RunStorage
from train.summary import write_result
from train.task import TrainingModule, batch_units, to_device
from train.wandb_run import start_wandb


@dataclass
class FitResult:
    """What a finished (or stopped) fit reports back."""

    run_dir: Path
    step: int
    final_loss: float | None
    tokens_per_s: float
    last_checkpoint: Path | None
    unit: str = "tokens"
    is_main: bool = True
    stopped_early: bool = False
    eval_metrics: dict[str, float] = field(default_factory=dict)


CheckpointCallback = Callable[[Path, dict[str, Any]], None]


def fit(
    config: ExperimentConfig,
    run_dir: str | Path,
    resume: bool = True,
    on_checkpoint: CheckpointCallback | None = None,
    control: Control | None = None,
) -> FitResult:
    """Train `config` in `run_dir`, continuing from its newest complete checkpoint.

    Args:
        config: the experiment (identical on every rank).
        run_dir: the run directory (config snapshot, metrics, checkpoints, W&B):
            a path, or a URI the ranks work towards through a local staging
            directory (train/storage.py).
        resume: continue from the newest complete checkpoint if there is one.
        on_checkpoint: called on every rank after each complete checkpoint
            with its path and the latest metrics.
        control: outside requests (signals, STOP file, preemption notices);
            default: signals and the run directory's STOP file.
    """
    timeline = StartupTimeline()
    dist = init_distributed()
    timeline.mark("distributed_init")
    storage = RunStorage(run_dir)
    run_dir = storage.local  # where this rank writes; the run's home is `storage`
    control = control or Control(run_dir)
    control.install_signal_handlers()

    resume_from = storage.checkpoint_to_resume(dist) if resume else None
    meta = ckpt_io.read_meta(resume_from) if resume_from else None
    elastic = bool(meta) and needs_elastic_load(meta, dist.world_size, config.zero.stage)
    run_info = prepare_run_dir(run_dir, config, dist, meta, name=storage.name)

    # Data first: a bad source or a model that does not fit the data fails in
    # seconds, before the engine is built.
    train_loader, val_loader = build_loaders(config, dist)
    timeline.mark("data_loaders")
    # Same seed on every rank: identical initial weights everywhere.
    seed_all(config.train.seed)
    model = build_model(config.model)
    module = TrainingModule(model)
    optimizer = build_optimizer(module, config)
    scheduler = WarmupDecaySchedule(optimizer, config.optim, config.train.max_steps)
    ds_config = deepspeed_config(config, dist.world_size)

    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    use_safe_checkpoint_loading(engine)
    if config.train.compile:
        engine.compile()
    timeline.mark("model_and_engine")

    step = tokens = 0
    rank_state = None
    if resume_from is not None:
        step, tokens, rank_state = _restore(engine, train_loader, resume_from, meta, elastic, dist)
        if dist.is_main:
            how = "elastically " if elastic else ""
            print(f"resumed {how}from {storage.home_of(resume_from)} at step {step}", flush=True)
    timeline.mark("checkpoint_load")
    if rank_state is not None and not elastic:
        restore_rng(rank_state["rng"])  # exact resume: dropout continues as it would have
    else:
        # Dropout differs per rank but is a function of (seed, rank, step).
        seed_all(config.train.seed * 1000 + dist.rank + 7919 * step)

    wandb_run = (
        start_wandb(config, run_dir, run_info.wandb_id, run_info.name) if dist.is_main else None
    )
    log = MetricsLog(run_dir, config.train.max_steps, wandb_run, enabled=dist.is_main)
    log.rewind_to(step)

    flops_per_unit = model.training_flops_per_unit()
    peak = PeakFlops(dist.device, config.train.precision, config.train.peak_tflops)
    state = _LoopState(step=step, tokens=tokens)
    last_ckpt: Path | None = resume_from
    final_loss: float | None = None
    eval_metrics: dict[str, float] = {}
    batches = iter(train_loader)
    t_start = time.perf_counter()
    units_at_start = tokens
    pending: PendingCheckpoint | None = None
    timeline.mark("logging_setup")

    while state.step < config.train.max_steps:
        t0 = time.perf_counter()
        loss_acc = torch.zeros((), dtype=torch.float64, device=dist.device)
        data_wait = 0.0
        units = 0
        for _ in range(config.train.grad_accum_steps):
            t_data = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - t_data
            units += batch_units(batch, model.flops_unit)
            batch = to_device(batch, dist.device)
            out = engine(batch)
            engine.backward(out.loss)
            if engine.is_gradient_accumulation_boundary():
                state.grad_norm = _untracked_grad_norm(engine)
            engine.step()
            loss_acc += out.loss.detach().double()
        state.step += 1
        # Every rank's micro-batches have the same shape (the loaders guarantee
        # it), so the global count needs no collective.
        step_units = units * dist.world_size
        state.tokens += step_units
        state.window_units += step_units
        state.window_loss += loss_acc / config.train.grad_accum_steps
        state.window_steps += 1
        state.window_data += data_wait
        state.window_time += time.perf_counter() - t0
        is_last = state.step == config.train.max_steps
        if state.step == step + 1:
            timeline.mark("first_step")
            log.log(timeline.record(step))
        request, writing = _agree(control.poll(state.step), pending, dist)
        stop_now = request == STOP
        if pending is not None and writing == _WRITE_DONE:
            last_ckpt = _finish(pending, storage, config, dist, log, on_checkpoint, final_loss)
            pending = None

        if state.step % config.train.log_every == 0 or is_last or stop_now:
            record = _train_record(engine, state, config, dist, model, flops_per_unit, peak)
            final_loss = record["loss"]
            log.log(record)
            state.reset_window()
        if state.step % config.train.eval_every == 0 or is_last:
            eval_metrics = evaluate(
                engine, val_loader, config.model.family, config.train.eval_batches, dist.device
            )
            if eval_metrics:
                log.log({"kind": "eval", "step": state.step, **eval_metrics})
        if state.step % config.train.checkpoint_every == 0 or is_last or request != CONTINUE:
            if pending is not None:  # the previous one is still being written: wait
                last_ckpt = _finish(pending, storage, config, dist, log, on_checkpoint, final_loss)
            # The last and stop checkpoints are synchronous: the run ends right after.
            background = (
                config.checkpoint.asynchronous and can_fork() and not is_last
                and request == CONTINUE and config.zero.nvme_path is None
            )  # fmt: skip
            pending = start_checkpoint(
                engine, train_loader, storage, state, config, dist, run_info.wandb_id, background
            )
            if not background:
                last_ckpt = _finish(pending, storage, config, dist, log, on_checkpoint, final_loss)
                pending = None
        if stop_now:
            break

    elapsed = time.perf_counter() - t_start
    if wandb_run is not None:
        wandb_run.finish()
    result = FitResult(
        run_dir=run_dir,
        step=state.step,
        final_loss=final_loss,
        tokens_per_s=(state.tokens - units_at_start) / elapsed if elapsed > 0 else 0.0,
        last_checkpoint=last_ckpt,
        stopped_early=state.step < config.train.max_steps,
        eval_metrics=eval_metrics,
        unit="images" if model.flops_unit == "image" else "tokens",
        is_main=dist.is_main,
    )
    if dist.is_main:
        write_result(run_dir, result)
        storage.upload_run_files(final=True)  # a URI's home gets metrics, result, W&B
    return result


@dataclass
class _LoopState:
    step: int
    tokens: int
    window_units: int = 0
    window_steps: int = 0
    window_data: float = 0.0
    window_time: float = 0.0
    window_loss: torch.Tensor | float = 0.0
    grad_norm: torch.Tensor | None = None  # see _untracked_grad_norm

    def reset_window(self) -> None:
        self.window_units = self.window_steps = 0
        self.window_data = self.window_time = 0.0
        self.window_loss = 0.0


def _untracked_grad_norm(engine: Any) -> torch.Tensor | None:
    # DeepSpeed's optimizers (ZeRO, bf16/fp16 wrappers) record the global grad
    # norm; a plain torch optimizer (ZeRO-0 in fp32) does not, so measure it
    # here, after backward (gradients already averaged over ranks), before step.
    if hasattr(engine.optimizer, "_global_grad_norm"):
        return None
    norms = [
        p.grad.detach().float().norm() for p in engine.module.parameters() if p.grad is not None
    ]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else None


_WRITE_DONE, _WRITE_RUNNING, _WRITE_FAILED = 0, 1, 2


def _agree(request: int, pending: PendingCheckpoint | None, dist: DistInfo) -> tuple[int, int]:
    """(strongest control request, state of the background write) over all ranks.

    Every rank must act at the same step: a stop any rank was asked for, and
    the commit of a background checkpoint only once every rank's write is done.
    """
    writing = _WRITE_DONE
    if pending is not None and pending.write is not None:
        try:
            writing = _WRITE_DONE if pending.write.done() else _WRITE_RUNNING
        except ckpt_io.CheckpointError:
            writing = _WRITE_FAILED
    agreed = all_reduce_max([float(request), float(writing)], dist.device)
    if agreed[1] == _WRITE_FAILED:
        raise ckpt_io.CheckpointError(
            f"{pending.path}: a rank's background checkpoint write failed (see its stderr)"
        )
    return int(agreed[0]), int(agreed[1])


def _train_record(
    engine: Any, state: _LoopState, config: ExperimentConfig, dist: DistInfo, model: Any,
    flops_per_unit: float, peak: PeakFlops,
) -> dict[str, Any]:  # fmt: skip
    loss_sum = float(state.window_loss)
    loss = all_reduce_sum([loss_sum], dist.device)[0] / (state.window_steps * dist.world_size)
    step_time = state.window_time / max(1, state.window_steps)
    rate = state.window_units / state.window_time if state.window_time > 0 else 0.0
    grad_norm = engine.get_global_grad_norm()
    if grad_norm is None:
        grad_norm = state.grad_norm
    record: dict[str, Any] = {
        "kind": "train",
        "step": state.step,
        "loss": loss,
        "lr": engine.get_lr()[0],
        "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
        "mfu": _mfu(rate * flops_per_unit / dist.world_size, peak),
        "step_time_s": step_time,
        "data_wait_frac": state.window_data / state.window_time if state.window_time else 0.0,
        "peak_mem_gb": _peak_memory_gb(dist),
        "tokens_seen": state.tokens,
    }
    record["samples_per_s" if model.flops_unit == "image" else "tokens_per_s"] = rate
    return record


def _mfu(achieved_per_worker: float, peak: PeakFlops) -> float:
    peak.raise_to(achieved_per_worker)  # nothing runs faster than its peak
    return achieved_per_worker / peak.value


def _peak_memory_gb(dist: DistInfo) -> float:
    if dist.device.type == "cpu":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().max_memory_allocated(dist.device) / 2**30


@dataclass
class PendingCheckpoint:
    """A checkpoint whose files are written (or being written) but not yet marked."""

    path: Path
    meta: dict[str, Any]
    write: BackgroundWrite | None  # None: written synchronously
    blocking_s: float  # time training waited for it so far


def start_checkpoint(
    engine: Any, train_loader: Any, storage: RunStorage, state: _LoopState,
    config: ExperimentConfig, dist: DistInfo, wandb_id: str, background: bool = False,
) -> PendingCheckpoint:  # fmt: skip
    """Write this rank's part of the checkpoint of the current step, or (background)
    capture it and leave the writing to a forked child (train/async_checkpoint.py)."""
    t0 = time.perf_counter()
    ckpt = ckpt_io.step_dir(storage.local, state.step)
    # Rewriting a step in place (after falling back past a broken checkpoint):
    # the old marker must not vouch for half-rewritten files.
    (ckpt / ckpt_io.MARKER).unlink(missing_ok=True)
    if dist.is_main:
        storage.begin_checkpoint(ckpt)  # the same, for the remote copy
    rank_state = {"data": train_loader.state_dict(), "rng": capture_rng()}
    write = None
    if background:
        with capture_engine_writes(engine) as files:
            engine.save_checkpoint(str(ckpt), tag=ckpt_io.ENGINE_TAG, save_latest=False)
        files.append((str(ckpt_io.rank_file(ckpt, dist.rank)), rank_state))
        write = BackgroundWrite(files, ckpt)
    else:
        engine.save_checkpoint(str(ckpt), tag=ckpt_io.ENGINE_TAG, save_latest=False)
        ckpt_io.save_rank_state(ckpt, dist.rank, rank_state)
        ckpt_io.fsync_tree(ckpt)
    meta = {
        "step": state.step,
        "tokens": state.tokens,
        "world_size": dist.world_size,
        "zero_stage": config.zero.stage,
        "config": config.to_dict(),
        "tokenizer_hash": getattr(getattr(train_loader, "tokenizer", None), "hash", None),
        "wandb_run_id": wandb_id,
        "time": time.time(),
    }
    return PendingCheckpoint(ckpt, meta, write, time.perf_counter() - t0)


def finish_checkpoint(
    pending: PendingCheckpoint, storage: RunStorage, config: ExperimentConfig, dist: DistInfo
) -> Path:
    """Every rank: wait for its write; then (rank 0) mark complete and prune.

    For a URI run the local checkpoint is then uploaded (every rank its share)
    and rank 0 marks the remote copy complete, last.
    """
    t0 = time.perf_counter()
    ckpt = pending.path
    if pending.write is not None:
        pending.write.wait()
    barrier()
    if storage.is_remote:
        storage.upload_share(ckpt, dist)
        barrier()
    if dist.is_main:
        ckpt_io.mark_complete(ckpt, pending.meta)
        ckpt_io.prune(storage.local, config.checkpoint.keep)
        storage.publish_checkpoint(ckpt, dist.world_size, config.checkpoint.keep)
    barrier()
    pending.blocking_s += time.perf_counter() - t0
    return ckpt


def _finish(
    pending: PendingCheckpoint, storage: RunStorage, config: ExperimentConfig, dist: DistInfo,
    log: MetricsLog, on_checkpoint: CheckpointCallback | None, loss: float | None,
) -> Path:  # fmt: skip
    ckpt = finish_checkpoint(pending, storage, config, dist)
    step = pending.meta["step"]
    write_s = pending.write.seconds if pending.write is not None else pending.blocking_s
    log.log({"kind": "checkpoint", "step": step, "background": pending.write is not None,
             "blocking_s": pending.blocking_s, "write_s": write_s})  # fmt: skip
    if on_checkpoint is not None:
        on_checkpoint(ckpt, {"step": step, "loss": loss})
    return ckpt


def _restore(
    engine: Any, train_loader: Any, ckpt: Path, meta: dict[str, Any], elastic: bool,
    dist: DistInfo,
) -> tuple[int, int, dict[str, Any]]:  # fmt: skip
    step = int(meta["step"])
    if elastic:
        if meta["zero_stage"] == 0:
            raise ckpt_io.CheckpointError(
                f"{ckpt}: written at zero.stage 0; resume it at zero.stage 0 (any world size)"
            )
        if dist.is_main:
            convert_to_universal(ckpt)
        barrier()
        load_universal_into(engine, ckpt, step)
    else:
        ckpt_io.prefetch(ckpt / ckpt_io.ENGINE_TAG)
        load_path, _ = engine.load_checkpoint(
            str(ckpt), tag=ckpt_io.ENGINE_TAG, load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )  # fmt: skip
        if load_path is None:
            raise ckpt_io.CheckpointError(f"{ckpt}: DeepSpeed found no engine state")
    # The loader's state is the global position in the sample order, so rank 0's
    # saved state is valid for any world size.
    rank_state = ckpt_io.load_rank_state(ckpt, 0 if elastic else dist.rank)
    train_loader.load_state_dict(rank_state["data"])
    return step, int(meta["tokens"]), rank_state
