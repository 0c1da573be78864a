"""Asynchronous checkpoints: capture what DeepSpeed would write, write it in a child.

A save runs in two parts. In the training process, DeepSpeed's own
`save_checkpoint` runs with a checkpoint engine that records each
(state dict, path) instead of writing it; tensors on an accelerator are
copied to host memory on the way, host tensors are only referenced. Then the
process forks: the child holds a copy-on-write snapshot of that memory as it
was at the fork, writes every file, flushes it to disk and exits. Training
goes on at once; the optimizer's next in-place updates only copy the pages
they touch while the child still runs.

The checkpoint is marked complete (by the Checkpointer, once every rank's
writer has exited cleanly) only after that, so a crash at any moment leaves
at worst an unmarked directory that resume skips. The child dies with its
parent (PR_SET_PDEATHSIG), so no orphan keeps writing into a directory a
restarted run may reuse.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from train.checkpoint.disk import fsync_tree
from train.checkpoint.layout import CheckpointError

Files = list[tuple[str, Any]]  # (path, object for torch.save)


def can_fork() -> bool:
    """Whether this platform has fork() (Linux, macOS); elsewhere saves are synchronous."""
    return hasattr(os, "fork")


def to_host(obj: Any) -> Any:
    """`obj` with accelerator tensors copied to host memory; host tensors stay as they
    are (the fork is what snapshots them)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu() if obj.device.type != "cpu" else obj
    if isinstance(obj, dict):
        moved = {k: to_host(v) for k, v in obj.items()}
        if all(moved[k] is v for k, v in obj.items()):
            return obj  # unchanged (keeps e.g. a state dict's _metadata as it is)
        out = copy.copy(obj)
        out.update(moved)
        return out
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        moved = [to_host(v) for v in obj]
        if all(a is b for a, b in zip(moved, obj, strict=True)):
            return obj
        return type(obj)(moved)
    return obj


class CapturingCheckpointEngine:
    """Stands in for DeepSpeed's checkpoint engine: `save` records instead of writing,
    everything else goes to the engine it replaces."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.captured: Files = []

    def save(self, state_dict: Any, path: str) -> None:
        self.captured.append((path, to_host(state_dict)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextlib.contextmanager
def capture_engine_writes(engine: Any) -> Iterator[Files]:
    """Within the block, what `engine.save_checkpoint` would write lands in the list."""
    current = engine.checkpoint_engine
    capturing = CapturingCheckpointEngine(current)
    optimizer = getattr(engine, "optimizer", None)
    swap_optimizer = getattr(optimizer, "checkpoint_engine", None) is current
    engine.checkpoint_engine = capturing
    if swap_optimizer:
        optimizer.checkpoint_engine = capturing
    try:
        yield capturing.captured
    finally:
        engine.checkpoint_engine = current
        if swap_optimizer:
            optimizer.checkpoint_engine = current


def write_files(files: Files, root: Path) -> None:
    """torch.save every (path, object), then flush the tree under `root` to disk."""
    for path, obj in files:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path)
    fsync_tree(root)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an orphan finishes its write, which is harmless here


class BackgroundWrite:
    """One checkpoint's files being written by a forked child.

    Args:
        files: what to write.
        root: the checkpoint directory (flushed after the files).
    """

    def __init__(self, files: Files, root: Path) -> None:
        self.root = root
        self.started = time.perf_counter()
        self.seconds: float | None = None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        self.fork_s = time.perf_counter() - self.started  # what the fork itself cost
        if pid == 0:  # the child: write, flush, leave without running any cleanup
            code = 1
            try:
                _die_with_parent()
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                write_files(files, root)
                code = 0
            except BaseException as exn:  # noqa: BLE001  (reported through the exit status)
                print(f"gobig: background checkpoint write to {root} failed: {exn}",
                      file=sys.stderr, flush=True)  # fmt: skip
            finally:
                os._exit(code)
        self.pid = pid

    def done(self) -> bool:
        """Whether the child has finished; raises CheckpointError if it failed."""
        if self.seconds is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._finish(status)
        return True

    def wait(self) -> None:
        """Block until the child has finished; raises CheckpointError if it failed."""
        if self.seconds is None:
            _, status = os.waitpid(self.pid, 0)
            self._finish(status)

    def _finish(self, status: int) -> None:
        self.seconds = time.perf_counter() - self.started
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            raise CheckpointError(f"{self.root}: background checkpoint write failed ({how})")
