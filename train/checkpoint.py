"""Checkpoint directories: write, mark complete, find, verify, prune.

Layout of one checkpoint, `RUN_DIR/checkpoints/step_00000100/`:

    deepspeed/        engine state (model, optimizer, scheduler), one shard per rank under ZeRO
    rank_00000.pt     that rank's data-loader state and RNG states (tensors and plain values)
    meta.json         step, counters, world size, ZeRO stage, config, tokenizer hash, W&B run id
    COMPLETE          written last: every file's size, so truncation is detected

A checkpoint counts only when COMPLETE exists and every file it lists has its
recorded size. Resume takes the newest such checkpoint and warns, naming
each newer one it skips.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from data_pipeline.errors import GobigError

CHECKPOINTS = "checkpoints"
ENGINE_TAG = "deepspeed"
UNIVERSAL_TAG = "universal"
META = "meta.json"
MARKER = "COMPLETE"
TRASH = ".trash"


class CheckpointError(GobigError, RuntimeError):
    """A checkpoint that exists but cannot be used."""


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def rank_file(ckpt: Path, rank: int) -> Path:
    return ckpt / f"rank_{rank:05d}.pt"


def fsync_tree(root: Path) -> None:
    """Flush every file under `root` (and the directories) to stable storage."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def prefetch(root: Path) -> None:
    """Ask the kernel to start reading every file under `root` into the page cache.

    Loading reads the files one after another and spends most of its time
    unpickling; with the reads already under way, the disk works while the CPU
    does. Advice only: a no-op where the platform has no posix_fadvise.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_rank_state(ckpt: Path, rank: int, state: dict[str, Any]) -> None:
    """This rank's loader and RNG state; loadable with weights_only=True."""
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save(state, rank_file(ckpt, rank))


def load_rank_state(ckpt: Path, rank: int) -> dict[str, Any]:
    return torch.load(rank_file(ckpt, rank), map_location="cpu", weights_only=True)


def mark_complete(ckpt: Path, meta: dict[str, Any]) -> None:
    """Rank 0, after every rank has written and flushed: meta, then the marker."""
    write_json_atomic(ckpt / META, meta)
    sizes = {
        str(path.relative_to(ckpt)): path.stat().st_size
        for path in sorted(ckpt.rglob("*"))
        if path.is_file() and path.name != MARKER
    }
    write_json_atomic(ckpt / MARKER, {"files": sizes})


def verify(ckpt: Path) -> str | None:
    """None if `ckpt` is complete and intact, else the reason it is not."""
    marker = ckpt / MARKER
    if not marker.is_file():
        return "not marked complete"
    try:
        sizes = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError):
        return f"unreadable {MARKER}"
    for rel, size in sizes.items():
        path = ckpt / rel
        if not path.is_file():
            return f"missing {rel}"
        if path.stat().st_size != size:
            return f"{rel} is {path.stat().st_size} bytes, expected {size} (truncated?)"
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def newest_complete(run_dir: Path, warn: bool = True) -> Path | None:
    """The newest intact checkpoint; each newer broken one is named in a warning."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        reason = verify(ckpt)
        if reason is None:
            return ckpt
        if warn:
            warnings.warn(f"skipping checkpoint {ckpt}: {reason}", stacklevel=2)
    return None


def read_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / META).read_text())


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` complete checkpoints, and broken older ones.

    Removal is a rename into a trash directory (instant) followed by deletion
    in a background thread: deleting hundreds of MB takes longer than writing
    them on some file systems, and training need not wait for it. Trash left
    by a process that exited early is deleted by the next prune.
    """
    complete = [c for c in list_checkpoints(run_dir) if verify(c) is None]
    if not complete:
        return []
    kept = set(complete[-keep:])
    newest = complete[-1]
    trash = Path(run_dir) / CHECKPOINTS / TRASH
    removed = []
    for ckpt in list_checkpoints(run_dir):
        # Anything newer than the newest complete checkpoint may still be in
        # flight on another rank; everything older that is not kept goes.
        if ckpt not in kept and ckpt < newest:
            trash.mkdir(exist_ok=True)
            ckpt.rename(trash / f"{ckpt.name}-{time.time_ns()}")
            removed.append(ckpt)
    if trash.is_dir():
        threading.Thread(target=_empty_trash, args=(trash,), daemon=True).start()
    return removed


def _empty_trash(trash: Path) -> None:
    for item in list(trash.iterdir()):
        shutil.rmtree(item, ignore_errors=True)
