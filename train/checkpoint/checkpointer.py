"""A run's checkpoints as the Trainer sees them: find, restore, when, save, commit.

Saving runs in two halves. `save` writes this rank's part (engine state,
loader and RNG state) through a CheckpointWriter (writer.py: checksums taken
while writing, non-finite tensors refused), or captures it and leaves the
writing to a forked child (background.py) that uses the same writer. The
checkpoint is committed (marked complete, pruned, and for a URI run uploaded)
only once every rank's write is done: at once for a synchronous save, or at
the first step at which `agree` finds every rank's background write finished.
Every rank calls `agree` after every step, so ranks act on outside requests
and on finished writes at the same step.

A save that fails anywhere (a full disk, a failing upload, the fault hook, a
non-finite tensor) fails on every rank at the same step: the writers never
raise inside DeepSpeed's collectives, the ranks agree on the failure, rank 0
removes the partial checkpoint (the previous complete one stays: prune has not
run), and every rank raises the same one-line CheckpointError.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from data_pipeline.errors import error_message
from train.checkpoint.agreement import agree_on_error
from train.checkpoint.background import (
    BackgroundWrite,
    FailedWrite,
    can_fork,
    capture_engine_writes,
)
from train.checkpoint.catalog import read_meta
from train.checkpoint.disk import load_rank_state, prefetch
from train.checkpoint.elastic import convert_to_universal, load_universal_into, needs_elastic_load
from train.checkpoint.layout import (
    CHECKPOINTS,
    ENGINE_TAG,
    META,
    CheckpointError,
    rank_file,
    step_dir,
)
from train.checkpoint.pending import PendingCheckpoint, SavedCheckpoint
from train.checkpoint.selection import ShareCheck, newest_intact
from train.checkpoint.storage import RunStorage
from train.checkpoint.write_errors import (
    describe_write_error,
    is_lasting,
    warn_if_low_on_space,
)
from train.checkpoint.writer import (
    BeforeWrite,
    CheckpointWriter,
    save_engine_state,
    write_engine_files,
)
from train.config.schema import ExperimentConfig
from train.control import CONTINUE
from train.distributed import DistInfo, all_reduce_max, barrier
from train.progress import Progress
from train.rng import capture_rng, restore_rng

WRITE_DONE, WRITE_RUNNING, WRITE_FAILED = 0, 1, 2


class Checkpointer:
    """Owns the run's checkpoints for one rank.

    Args:
        storage: the run directory (local, or a URI with a staging copy).
        config: the experiment (cadence, keep, async, ZeRO stage).
        dist: this rank.
        unit: what the run counts, "tokens" or "images" (meta's counter key).
    """

    def __init__(self, storage: RunStorage, config: ExperimentConfig, dist: DistInfo, unit: str):
        self.storage = storage
        self.config = config
        self.dist = dist
        self.unit = unit
        self.resume_from: Path | None = None
        self._share_check: ShareCheck | None = None  # start-up checksums, hashed meanwhile
        self.meta: dict[str, Any] | None = None
        self.elastic = False
        self.pending: PendingCheckpoint | None = None
        self.last: Path | None = None
        # Seconds per part of the latest save (start to commit) or restore.
        self.timings: dict[str, float] = {}
        self.run_id = ""  # the W&B run id every checkpoint records (set once it is known)
        # More state each rank's file carries: name -> an object with state_dict()
        # and load_state_dict() of plain values (the anomaly guard's loss window).
        self.components: dict[str, Any] = {}
        # Called with each file's path right before it is written, in the process
        # that writes it (this one, or the background child); what it raises is
        # handled like a disk error. Set by fault injection (train/faults.py).
        self.before_write: BeforeWrite | None = None
        # Checksums (taken while writing, checked on resume) and the finiteness
        # check; switched off only to measure what they cost (bench/).
        self.checksums = True
        self.finite_check = True

    @contextlib.contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - t0

    # -- resume -------------------------------------------------------------------

    def locate(self, before_step: int | None = None) -> dict[str, Any] | None:
        """Find the newest intact checkpoint (fetching it if remote); its meta or None.

        Every rank checks its share of each candidate's checksums, and all ranks
        agree; a checkpoint any rank finds damaged is skipped (with a warning
        naming it and the file) in favour of the previous one (selection.py).

        At start-up (no `before_step`) the newest complete checkpoint's checksums
        are hashed in the background while the Trainer builds its engine; `restore`
        agrees on them before loading and, on a mismatch, falls back as described
        (`self.meta` is then the one loaded; the W&B id, all the Trainer reads from
        this return, is the same in every checkpoint of a run).

        Args:
            before_step: consider only checkpoints of steps before this one (a
                rollback in a live process: checked fully before returning; then
                `restore` loads the one found).
        """
        self.timings = {}
        self._share_check = None
        if before_step is None:  # at start-up; a rollback keeps the live run's own files
            self.storage.fetch_run_files(self.dist)
        deferred = before_step is None and self.checksums
        with self._timed("verify"):
            found = newest_intact(
                self.storage, self.dist, before_step, not deferred and self.checksums
            )
        if deferred and found is not None:
            share = (self.dist.rank, self.dist.world_size)
            self._share_check = ShareCheck(self.storage.staged, found.name, share)
        return self._use(found)

    def _use(self, found: Path | None) -> dict[str, Any] | None:
        self.resume_from = self.last = found
        self.meta = None
        if self.resume_from is None:
            return None
        self.meta = read_meta(self.resume_from)
        stage, world = self.config.zero.stage, self.dist.world_size
        self.elastic = needs_elastic_load(self.meta, world, stage)
        return self.meta

    def _confirm_checksums(self) -> None:
        """Every rank: agree on the background checksum check; fall back if it failed."""
        check, self._share_check = self._share_check, None
        if check is None:
            return
        with self._timed("verify (waited for)"):
            reason = agree_on_error(check.result(), self.dist)
        if reason is None:
            return
        with self._timed("verify"):
            found = newest_intact(
                self.storage, self.dist, int(self.meta["step"]), skipped=[(check.name, reason)]
            )
        self._use(found)

    def restore(self, engine: Any, loader: Any) -> Progress | None:
        """Load the located checkpoint into `engine` and `loader`; None if there is none.

        An exact resume (same world size and stage) also restores this rank's RNG
        states, so dropout continues as it would have; an elastic one cannot.
        """
        self._confirm_checksums()
        if self.resume_from is None:
            return None
        ckpt, meta, step = self.resume_from, self.meta, int(self.meta["step"])
        if self.elastic:
            self._restore_elastic(engine, ckpt, step)
        else:
            with self._timed("prefetch"):
                prefetch(ckpt / ENGINE_TAG)
            with self._timed("engine.load_checkpoint"):
                load_path, _ = engine.load_checkpoint(
                    str(ckpt), tag=ENGINE_TAG, load_optimizer_states=True,
                    load_lr_scheduler_states=True,
                )  # fmt: skip
            if load_path is None:
                raise CheckpointError(f"{ckpt}: DeepSpeed found no engine state")
        # The loader's state is the global position in the sample order, so rank 0's
        # saved state is valid for any world size.
        with self._timed("load_rank_state"):
            rank_state = load_rank_state(ckpt, 0 if self.elastic else self.dist.rank)
        loader.load_state_dict(rank_state["data"])
        for name, state in rank_state.get("components", {}).items():
            if name in self.components:
                self.components[name].load_state_dict(state)
        if not self.elastic:
            restore_rng(rank_state["rng"])
        units = meta.get(self.unit, meta.get("tokens", 0))  # older checkpoints say "tokens"
        return Progress(step=step, units=int(units))

    def _restore_elastic(self, engine: Any, ckpt: Path, step: int) -> None:
        if self.meta["zero_stage"] == 0:
            raise CheckpointError(
                f"{ckpt}: written at zero.stage 0; resume it at zero.stage 0 (any world size)"
            )
        if self.dist.is_main:
            with self._timed("convert_to_universal"):
                convert_to_universal(ckpt)
        barrier()
        with self._timed("load_universal_into"):
            load_universal_into(engine, ckpt, step)

    def home_of(self, path: Path) -> str:
        return self.storage.home_of(path)

    # -- saving -------------------------------------------------------------------

    def due(self, step: int, request: int, is_last: bool) -> bool:
        """Whether to checkpoint after `step` (every rank gets the same answer)."""
        return step % self.config.train.checkpoint_every == 0 or is_last or request != CONTINUE

    def agree(self, request: int) -> tuple[int, list[SavedCheckpoint]]:
        """(strongest control request over all ranks, checkpoints committed now).

        Every rank must act at the same step: on a stop any rank was asked for,
        and on a background checkpoint only once every rank's write is done (or
        on every rank, with the same CheckpointError, once any rank's failed).
        """
        writing, error = WRITE_DONE, None
        if self.pending is not None and self.pending.write is not None:
            try:
                writing = WRITE_DONE if self.pending.write.done() else WRITE_RUNNING
            except CheckpointError as exn:
                writing, error = WRITE_FAILED, str(exn)
        agreed = all_reduce_max([float(request), float(writing)], self.dist.device)
        if agreed[1] == WRITE_FAILED:
            pending, self.pending = self.pending, None
            self._fail(pending, agree_on_error(error, self.dist))
        done = self.pending is not None and agreed[1] == WRITE_DONE
        return int(agreed[0]), [self.commit()] if done else []

    def save(
        self, engine: Any, loader: Any, progress: Progress, final: bool
    ) -> list[SavedCheckpoint]:
        """Checkpoint the current step; returns the checkpoints committed by the call.

        Args:
            engine: the DeepSpeed engine.
            loader: the training loader (its position is saved).
            progress: step and units seen.
            final: the run ends (or stops) right after: write synchronously.
        """
        saved = [self.commit()] if self.pending is not None else []  # still writing: wait
        ckpt = self.config.checkpoint
        background = (
            ckpt.asynchronous and can_fork() and not final and self.config.zero.nvme_path is None
        )
        self.pending = self.start(engine, loader, progress, background)
        if not background:
            saved.append(self.commit())
        return saved

    def start(
        self, engine: Any, loader: Any, progress: Progress, background: bool
    ) -> PendingCheckpoint:
        """Write this rank's part of the checkpoint of `progress.step`, or (background)
        capture it and leave the writing to a forked child. Never raises for a failed
        write: that is agreed on and raised in `commit` or `agree`."""
        t0 = time.perf_counter()
        self.timings = {}
        ckpt = step_dir(self.storage.local, progress.step)
        # The newest complete checkpoint's size (a URI run: this node's share, what its
        # staging disk must hold): what the new one needs, about.
        expected = self.storage.staged.newest_bytes()
        if self.dist.is_main:
            warn_if_low_on_space(ckpt.parent, expected)
        writer = CheckpointWriter(
            ckpt, self.dist.rank, self.before_write, expected, self.checksums, self.finite_check
        )
        try:
            self.storage.begin_checkpoint(ckpt.name, self.dist)
        except OSError as exn:  # a read-only disk, a failing store: fails like a write
            writer.fail(exn, ckpt)
        rank_state = {
            "data": loader.state_dict(),
            "rng": capture_rng(),
            "components": {name: c.state_dict() for name, c in self.components.items()},
        }
        rank_path = str(rank_file(ckpt, self.dist.rank))
        write, error = None, None
        if background:
            with self._timed("capture"), capture_engine_writes(engine, writer) as files:
                save_engine_state(engine, ckpt, ENGINE_TAG, writer)
            files.append((rank_path, rank_state))
            try:
                if writer.error is None:
                    write = BackgroundWrite(files, ckpt, writer)
                    self.timings["fork"] = write.fork_s
            except OSError as exn:  # fork() itself failed (no memory for the page tables)
                writer.fail(exn, ckpt)
            if writer.error is not None:  # every rank hears of it at the next `agree`
                write = FailedWrite(writer.error)
        else:
            with self._timed("engine.save_checkpoint"), write_engine_files(engine, writer):
                save_engine_state(engine, ckpt, ENGINE_TAG, writer)
            with self._timed("save_rank_state"):
                writer.save(rank_state, rank_path)
            with self._timed("sums and fsync"):
                error = writer.finish()
            self.timings["of which finite check"] = writer.finite_s
            self.timings["of which hashing"] = writer.hash_s
        meta = {
            "step": progress.step,
            self.unit: progress.units,
            "world_size": self.dist.world_size,
            "zero_stage": self.config.zero.stage,
            "config": self.config.to_dict(),
            "tokenizer_hash": getattr(getattr(loader, "tokenizer", None), "hash", None),
            "wandb_run_id": self.run_id,
            "time": time.time(),
        }
        return PendingCheckpoint(ckpt, meta, write, time.perf_counter() - t0, error, expected)

    def commit(self) -> SavedCheckpoint:
        """Every rank: wait for its write; then (rank 0) mark complete and prune.

        For a URI run the local checkpoint is uploaded first (every rank its
        share) and rank 0 marks the remote copy complete, last. A failure at any
        point, on any rank, raises the same CheckpointError on every rank.
        """
        pending, self.pending = self.pending, None
        t0 = time.perf_counter()
        error = pending.error
        if pending.write is not None:
            with self._timed("wait for the writer"):
                try:
                    pending.write.wait()
                except CheckpointError as exn:
                    error = str(exn)
        error = agree_on_error(error, self.dist)  # also the barrier: every rank has written
        if error is None and self.storage.is_remote:
            with self._timed("upload"):
                try:
                    self.storage.upload_share(pending.path, self.dist)
                except Exception as exn:  # noqa: BLE001  (any rank's failure fails all)
                    error = f"upload to {self.home_of(pending.path)} failed: {error_message(exn)}"
            error = agree_on_error(error, self.dist)
        if error is None and self.dist.is_main:
            with self._timed("mark_complete"):
                error = self._mark(pending)
        error = agree_on_error(error, self.dist)  # every rank sees it marked, or fails
        if error is not None:
            self._fail(pending, error)
        if self.dist.is_main:
            with self._timed("prune"):
                self._prune()
        pending.blocking_s += time.perf_counter() - t0
        self.last = pending.path
        write_s = pending.write.seconds if pending.write is not None else pending.blocking_s
        return SavedCheckpoint(
            pending.path,
            pending.meta["step"],
            pending.write is not None,
            pending.blocking_s,
            write_s,
        )

    def _mark(self, pending: PendingCheckpoint) -> str | None:
        try:
            self.storage.mark_checkpoint(pending.path.name, pending.meta, self.dist.world_size)
        except CheckpointError as exn:
            return str(exn)
        except OSError as exn:  # meta.json or COMPLETE on a full disk, a failing store
            where = exn.filename or pending.path / META
            return describe_write_error(exn, where, pending.expected_bytes, 0)
        except Exception as exn:  # noqa: BLE001  (raised alone, it would hang the others)
            return f"marking {self.home_of(pending.path)} complete failed: {error_message(exn)}"
        return None

    def _prune(self) -> None:
        try:
            self.storage.prune(self.config.checkpoint.keep)
        except OSError as exn:  # the new checkpoint is complete: losing the run is worse
            print(f"gobig: warning: could not prune: {error_message(exn)}", file=sys.stderr)

    def _fail(self, pending: PendingCheckpoint, error: str | None) -> NoReturn:
        """Every rank, at the same step: stop writing, drop the partial checkpoint
        (rank 0), raise the agreed one-line error naming the newest complete one."""
        if pending.write is not None:
            pending.write.abort()
        barrier()  # no rank's writer is still filling the folder rank 0 removes
        if self.dist.is_main:
            self.storage.discard_checkpoint(pending.path.name)
        newest = self.storage.newest_complete(warn=False)
        kept = "there is no complete checkpoint yet"
        if newest:
            where = self.storage.home_of_name(f"{CHECKPOINTS}/{newest}")
            kept = f"the newest complete checkpoint is {where}"
        failure = CheckpointError(
            f"checkpoint {self.home_of(pending.path)} (step {pending.meta['step']}) not saved: "
            f"{error or 'a rank failed'}; {kept}"
        )
        # Every rank raises it at this step; a restart would meet a full disk or a
        # diverged model again: `final` tells Ray not to retry (cluster/worker.py).
        failure.final = is_lasting(str(failure))
        raise failure
