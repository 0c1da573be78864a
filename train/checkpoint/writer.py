"""Writing one rank's checkpoint files: hashed as written, refused if not finite, never raising.

Every file of a checkpoint a rank writes goes through one `CheckpointWriter`:
DeepSpeed's files (through `WritingCheckpointEngine`, which stands in for
DeepSpeed's checkpoint engine during the save) and the rank's own state file;
in the training process for a synchronous save, in the forked child for a
background one (background.py). For each file the writer

1. calls the `before_write` hook, if set (fault injection: what it raises is
   handled like an error from the disk);
2. refuses the file if a floating-point tensor in it is not finite (finite.py);
3. serializes it with torch.save into a `HashingFile` (checksum.py), so the
   checksum is of the bytes as they went to disk, and fsyncs it.

`finish` then writes the rank's sums (`sums_rank_NNNNN.json`: each file's size
and checksum), which rank 0's mark folds into COMPLETE (catalog.py).

The writer never raises. DeepSpeed's `save_checkpoint` holds collectives, so a
rank raising inside it would leave the others waiting in them forever; instead
the first failure is kept as one line (`error`), later files are skipped,
DeepSpeed returns normally, and the Checkpointer agrees on failures across
ranks (agreement.py) and raises on all of them at the same step.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from train.checkpoint.checksum import HASH, HashingFile
from train.checkpoint.disk import fsync_file, fsync_tree
from train.checkpoint.finite import first_non_finite
from train.checkpoint.layout import sums_file_name
from train.checkpoint.write_errors import describe_write_error

BeforeWrite = Callable[[str], None]


class CheckpointWriter:
    """Writes one rank's files of one checkpoint and records their sizes and checksums.

    Args:
        root: the checkpoint directory.
        rank: the rank whose sums file this writer writes.
        before_write: called with each file's path right before it is written.
        expected_bytes: the previous checkpoint's size (for a full disk's message).
        checksums: hash while writing (off only to measure what hashing costs).
        finite_check: refuse non-finite floating-point tensors (likewise).
    """

    def __init__(
        self,
        root: Path,
        rank: int,
        before_write: BeforeWrite | None = None,
        expected_bytes: int | None = None,
        checksums: bool = True,
        finite_check: bool = True,
    ):
        self.root = Path(root)
        self.rank = rank
        self.before_write = before_write
        self.expected_bytes = expected_bytes
        self.checksums = checksums
        self.finite_check = finite_check
        self.sums: dict[str, dict[str, Any]] = {}
        self.error: str | None = None  # the first failure, one line
        self.written_bytes = 0
        self.finite_s = 0.0  # time spent looking for non-finite values
        self.hash_s = 0.0  # time spent hashing

    def rel(self, path: str | Path) -> str:
        """`path` as messages name it: relative to the checkpoint (named beside it)."""
        try:
            rel = Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)
        return rel if rel != "." else "the checkpoint folder"

    def fail(self, exn: BaseException, path: str | Path) -> None:
        """Record a failure (the first one wins); every later file is skipped."""
        if self.error is None:
            self.error = describe_write_error(
                exn, path, self.expected_bytes, self.written_bytes, shown=self.rel(path)
            )

    def save(self, state: Any, path: str | Path, zipfile: bool = True) -> None:
        """Write `state` to `path` (a file under `root`), unless a file already failed.

        Args:
            state: what torch.save serializes.
            path: the file.
            zipfile: torch's zip format (DeepSpeed's default); False: the legacy one.
        """
        if self.error is not None:
            return  # the checkpoint is lost already: do not fill the disk further
        path = Path(path)
        hashing = None
        try:
            if self.before_write is not None:
                self.before_write(str(path))
            if self.finite_check and self._refuse_non_finite(state, path):
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.checksums:
                with open(path, "wb") as raw:
                    hashing = HashingFile(raw)
                    torch.save(state, hashing, _use_new_zipfile_serialization=zipfile)
                    raw.flush()
                    os.fsync(raw.fileno())
            else:  # torch's own file writer, as before checksums (what the bench compares)
                torch.save(state, str(path), _use_new_zipfile_serialization=zipfile)
                fsync_file(path)
            if hashing is not None:
                self.hash_s += hashing.hash_s
            size = hashing.size if hashing is not None else path.stat().st_size
            record: dict[str, Any] = {"size": size}
            if hashing is not None:
                record[HASH] = hashing.hexdigest()
            self.sums[self.rel(path)] = record
            self.written_bytes += size
        except Exception as exn:  # noqa: BLE001  (kept, agreed on and raised by the Checkpointer)
            self.fail(hashing.error if hashing is not None and hashing.error else exn, path)

    def _refuse_non_finite(self, state: Any, path: Path) -> bool:
        t0 = time.perf_counter()
        key = first_non_finite(state)
        self.finite_s += time.perf_counter() - t0
        if key is None:
            return False
        self.error = f"{self.rel(path)}: non-finite values (inf or NaN) in {key}"
        return True

    def write_all(self, files: list[tuple[str, Any]]) -> str | None:
        """Write every (path, state), then `finish`; the error, if any."""
        for path, state in files:
            self.save(state, path)
        return self.finish()

    def finish(self) -> str | None:
        """After the last file: this rank's sums file, and the directories flushed.

        Returns the failure (one line) if any file failed, else None.
        """
        if self.error is not None:
            return self.error
        sums = self.root / sums_file_name(self.rank)
        try:
            text = json.dumps({"hash": HASH, "files": dict(sorted(self.sums.items()))}, indent=1)
            # Written in place, not renamed: other ranks may be walking the folder to
            # flush it, and nothing reads a sums file before every rank is done.
            with open(sums, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            # The directories (new names must survive a crash too) and the files
            # DeepSpeed wrote itself; our own files are clean already, cheap to fsync.
            fsync_tree(self.root)
        except Exception as exn:  # noqa: BLE001
            self.fail(exn, sums)
        return self.error


class WritingCheckpointEngine:
    """Stands in for DeepSpeed's checkpoint engine during a save: files go through a
    CheckpointWriter, directory creation cannot raise, the rest goes to the engine
    it replaces."""

    def __init__(self, inner: Any, writer: CheckpointWriter) -> None:
        self.inner = inner
        self.writer = writer

    def save(self, state_dict: Any, path: str) -> None:
        zipfile = getattr(self.inner, "zipfile_serialization", True)
        self.writer.save(state_dict, path, zipfile=zipfile)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        try:
            os.makedirs(path, exist_ok=exist_ok)
        except OSError as exn:  # rank 0 creates the folder before a barrier: never raise
            self.writer.fail(exn, path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextlib.contextmanager
def swap_checkpoint_engine(engine: Any, replacement: Any) -> Iterator[Any]:
    """Within the block, `engine` (and its optimizer, which may hold its own reference)
    saves through `replacement`."""
    current = engine.checkpoint_engine
    optimizer = getattr(engine, "optimizer", None)
    swap_optimizer = getattr(optimizer, "checkpoint_engine", None) is current
    engine.checkpoint_engine = replacement
    if swap_optimizer:
        optimizer.checkpoint_engine = replacement
    try:
        yield replacement
    finally:
        engine.checkpoint_engine = current
        if swap_optimizer:
            optimizer.checkpoint_engine = current


@contextlib.contextmanager
def write_engine_files(engine: Any, writer: CheckpointWriter) -> Iterator[Any]:
    """Within the block, every file `engine.save_checkpoint` writes goes through `writer`."""
    with swap_checkpoint_engine(engine, WritingCheckpointEngine(engine.checkpoint_engine, writer)):
        yield writer


def save_engine_state(engine: Any, ckpt: Path, tag: str, writer: CheckpointWriter) -> None:
    """`engine.save_checkpoint`, inside `write_engine_files` (or, for a background save,
    `capture_engine_writes`); whatever fails ends up in `writer.error`, never raised.

    Args:
        engine: the DeepSpeed engine, its checkpoint engine swapped for gobig's.
        ckpt: the checkpoint directory.
        tag: the engine's folder inside it.
        writer: the CheckpointWriter of this save.
    """
    from train.distributed import barrier

    try:
        engine.save_checkpoint(str(ckpt), tag=tag, save_latest=False)
    except Exception as exn:  # noqa: BLE001
        # The checkpoint engine never raises. The one file DeepSpeed writes
        # itself is rank 0's copy of its recovery scripts (zero_to_fp32.py), after
        # its last collective and before its closing barrier: meet that barrier,
        # so the other ranks are not left waiting, and fail like any write.
        writer.fail(exn, getattr(exn, "filename", None) or ckpt / tag)
        barrier()
