"""Failures caused on purpose: how gobig's tests, and users rehearsing on their own
cluster, prove that a run survives them.

Faults are listed in the config (`faults:`), so a rehearsal is an ordinary run
with one extra key, e.g.

    gobig train faults='[{kind: kill, step: 7, rank: 1}, {kind: hang, step: 15}]'

Each fault fires once per run: a marker under RUN_DIR/faults/ is written (and
flushed) before it acts, so a restarted worker that replays the step does not
fail again. With no faults listed every hook returns at once.

    kill                SIGKILL the rank after step N
    kill_during_save    SIGKILL the rank after it wrote the first file of the
                        checkpoint of step N (or the first checkpoint after N)
    hang                block inside step N (before its first batch): for
                        `seconds`, or for good; the process stays alive
    stop                SIGSTOP the rank inside step N (only SIGCONT/SIGKILL help)
    nan_loss            the rank's loss at step N becomes NaN before backward
    loss_spike          the rank's loss at step N is `factor` times larger
    corrupt_checkpoint  after the checkpoint of step N (or the first after it)
                        is committed, flip bytes in its `file` (model, optim or
                        rank state; same size), then SIGKILL the rank
    fill_disk           the checkpoint write at (or after) step N fails with
                        ENOSPC, as from a full disk (raised at the write call)
    slow                from step N on, every batch of the rank is `seconds` late
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path

from train.config.schema import FaultConfig

FAULTS_DIR = "faults"


class Faults:
    """The faults of one run, for one rank.

    Args:
        faults: the config's `faults` list.
        run_dir: where the fired markers live (this rank's local run directory).
        rank: this rank.
    """

    def __init__(self, faults: list[FaultConfig], run_dir: Path, rank: int):
        self.folder = Path(run_dir) / FAULTS_DIR
        self.mine = [(i, f) for i, f in enumerate(faults) if f.rank == rank]
        self.rank = rank
        self.rank_pid = os.getpid()
        self.saving_step: int | None = None  # the step of the checkpoint being written
        self._files_written = 0

    def __bool__(self) -> bool:
        return bool(self.mine)

    # -- bookkeeping ----------------------------------------------------------------

    def _fired(self, index: int) -> bool:
        return (self.folder / f"fault_{index:03d}").exists()

    def _fire(self, index: int, fault: FaultConfig, step: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.folder / f"fault_{index:03d}"
        with open(marker, "w") as fh:
            fh.write(f"{fault.kind} rank {self.rank} step {step} pid {os.getpid()}\n")
            fh.flush()
            os.fsync(fh.fileno())
        print(f"gobig: fault injected: {fault.kind} on rank {self.rank} at step {step}",
              file=sys.stderr, flush=True)  # fmt: skip

    def _due(self, kind: str, step: int, exact: bool = True) -> FaultConfig | None:
        for index, fault in self.mine:
            hit = fault.step == step if exact else step >= fault.step
            if fault.kind == kind and hit and not self._fired(index):
                self._fire(index, fault, step)
                return fault
        return None

    # -- hooks ------------------------------------------------------------------------

    def before_batch(self, step: int) -> None:
        """Inside step `step`, before a micro-batch is drawn: hang, stop, slow."""
        if not self.mine:
            return
        for _, fault in self.mine:
            if fault.kind == "slow" and step >= fault.step and fault.seconds > 0:
                time.sleep(fault.seconds)
        fault = self._due("hang", step)
        if fault is not None:
            deadline = time.monotonic() + fault.seconds if fault.seconds else float("inf")
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        if self._due("stop", step) is not None:
            os.kill(os.getpid(), signal.SIGSTOP)

    def poison_loss(self, step: int, loss):
        """The loss to backpropagate: NaN at a `nan_loss` step, scaled at a `loss_spike`."""
        if not self.mine:
            return loss
        if self._due("nan_loss", step) is not None:
            return loss * float("nan")
        spike = self._due("loss_spike", step)
        return loss * spike.factor if spike is not None else loss

    def after_step(self, step: int) -> None:
        if self.mine and self._due("kill", step) is not None:
            os.kill(os.getpid(), signal.SIGKILL)

    def begin_save(self, step: int) -> None:
        """A checkpoint of `step` is about to be written."""
        self.saving_step, self._files_written = step, 0

    def before_checkpoint_file(self, path: str) -> None:
        """Called before each checkpoint file is written, by whichever process writes it
        (the rank, or its forked background writer)."""
        step = self.saving_step
        if not self.mine or step is None:
            return
        if self._due("fill_disk", step, exact=False) is not None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        self._files_written += 1
        if self._files_written > 1 and self._due("kill_during_save", step, exact=False):
            # One file went through: the crash leaves a half-written checkpoint. The
            # rank dies (a background writer kills its parent, then dies with it).
            os.kill(self.rank_pid, signal.SIGKILL)

    def after_checkpoint(self, ckpt: Path, step: int) -> None:
        """After checkpoint `ckpt` of `step` is committed: corrupt it (then crash)."""
        fault = self.mine and self._due("corrupt_checkpoint", step, exact=False)
        if not fault:
            return
        target = pick_file(ckpt, fault.file, self.rank)
        flip_bytes(target)
        print(f"gobig: fault injected: flipped bytes in {target}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def pick_file(ckpt: Path, kind: str, rank: int) -> Path:
    """The checkpoint file of `kind` ("model", "optim", "rank") that `rank` owns."""
    from train.checkpoint.layout import rank_file

    if kind == "rank":
        return rank_file(ckpt, rank)
    files = sorted(p for p in Path(ckpt).rglob("*.pt") if p.is_file())
    if kind == "optim":
        mine = [p for p in files if "optim" in p.name and f"rank_{rank}_" in p.name]
        found = mine or [p for p in files if "optim" in p.name]
    else:
        found = [p for p in files if "model_states" in p.name]
    if not found:
        raise FileNotFoundError(f"{ckpt}: no {kind} file to corrupt")
    return found[0]


def flip_bytes(path: Path, count: int = 64) -> None:
    """Invert `count` bytes in the middle of `path` (its size stays the same)."""
    size = path.stat().st_size
    offset = max(size // 2 - count // 2, 0)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        chunk = fh.read(count)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in chunk))
        fh.flush()
        os.fsync(fh.fileno())
