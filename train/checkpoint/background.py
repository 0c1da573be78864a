"""Asynchronous checkpoints: capture what DeepSpeed would write, write it in a child.

A save runs in two parts. In the training process, DeepSpeed's own
`save_checkpoint` runs with a checkpoint engine that records each
(state dict, path) instead of writing it; tensors on an accelerator are
copied to host memory on the way, host tensors are only referenced. Then the
process forks: the child holds a copy-on-write snapshot of that memory as it
was at the fork, writes every file, flushes it to disk and exits. Training
goes on at once; the optimizer's next in-place updates only copy the pages
they touch while the child still runs.

The child writes through the same CheckpointWriter as a synchronous save
(writer.py): it checks that tensors are finite, hashes each file as it writes
it and leaves the rank's sums file, so the checksums in COMPLETE are the
child's own. A failure reaches the parent as the writer's one line, through a
pipe (the disk may be too full for a file), and ends the run with the same
message a synchronous save would give.

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

from train.checkpoint.layout import CheckpointError
from train.checkpoint.writer import (
    CheckpointWriter,
    WritingCheckpointEngine,
    swap_checkpoint_engine,
)

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


class CapturingCheckpointEngine(WritingCheckpointEngine):
    """Stands in for DeepSpeed's checkpoint engine: `save` records instead of writing;
    directory creation and everything else as WritingCheckpointEngine does."""

    def __init__(self, inner: Any, writer: CheckpointWriter) -> None:
        super().__init__(inner, writer)
        self.captured: Files = []

    def save(self, state_dict: Any, path: str) -> None:
        self.captured.append((path, to_host(state_dict)))


@contextlib.contextmanager
def capture_engine_writes(engine: Any, writer: CheckpointWriter) -> Iterator[Files]:
    """Within the block, what `engine.save_checkpoint` would write lands in the list.

    Args:
        engine: the DeepSpeed engine.
        writer: the writer the child will use; a failure while capturing goes to it.
    """
    capturing = CapturingCheckpointEngine(engine.checkpoint_engine, writer)
    with swap_checkpoint_engine(engine, capturing):
        yield capturing.captured


def write_files(files: Files, root: Path) -> None:
    """Write every (path, object) through a CheckpointWriter (rank 0's sums file
    included) and flush the tree under `root`; CheckpointError if anything failed."""
    error = CheckpointWriter(root, rank=0).write_all(files)
    if error is not None:
        raise CheckpointError(error)


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
        writer: how (default: a plain CheckpointWriter for rank 0).
    """

    def __init__(self, files: Files, root: Path, writer: CheckpointWriter | None = None) -> None:
        self.root = root
        writer = writer or CheckpointWriter(root, rank=0)
        self.started = time.perf_counter()
        self.seconds: float | None = None
        sys.stdout.flush()
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        pid = os.fork()
        self.fork_s = time.perf_counter() - self.started  # what the fork itself cost
        if pid == 0:  # the child: write, flush, leave without running any cleanup
            code = 1
            try:
                os.close(read_end)
                _die_with_parent()
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                error = writer.write_all(files)
                if error is None:
                    code = 0
                else:
                    os.write(write_end, error.encode()[:16384])
            except BaseException as exn:  # noqa: BLE001  (reported through the pipe)
                os.write(write_end, f"{root}: background checkpoint write failed: {exn}".encode())
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid = pid
        self._reason = read_end  # the child's failure, one line; EOF when it exits

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

    def abort(self) -> None:
        """Stop the child now (another rank's write failed: this one is lost too)."""
        if self.seconds is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.seconds = time.perf_counter() - self.started
            os.close(self._reason)

    def _finish(self, status: int) -> None:
        self.seconds = time.perf_counter() - self.started
        chunks = []
        while chunk := os.read(self._reason, 65536):
            chunks.append(chunk)
        os.close(self._reason)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            reason = b"".join(chunks).decode(errors="replace").strip()
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            raise CheckpointError(
                reason or f"{self.root}: the background checkpoint writer died ({how})"
            )


class FailedWrite:
    """A background write that never started (capturing DeepSpeed's save failed):
    reported at the next agreement, like a child that failed, so that every rank
    learns of it at the same step.

    Args:
        error: the failure, one line.
    """

    def __init__(self, error: str) -> None:
        self.error = error
        self.seconds: float | None = None
        self.fork_s = 0.0

    def done(self) -> bool:
        raise CheckpointError(self.error)

    def wait(self) -> None:
        raise CheckpointError(self.error)

    def abort(self) -> None:
        pass
