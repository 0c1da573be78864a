"""A rank's own checkpoint files on local disk: its state file, flushing, read-ahead."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from train.checkpoint.layout import rank_file


def save_rank_state(ckpt: Path, rank: int, state: dict[str, Any]) -> None:
    """This rank's loader and RNG state; loadable with weights_only=True."""
    import torch

    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save(state, rank_file(ckpt, rank))


def load_rank_state(ckpt: Path, rank: int) -> dict[str, Any]:
    import torch

    return torch.load(rank_file(ckpt, rank), map_location="cpu", weights_only=True)


def fsync_file(path: str | Path) -> None:
    """Flush one file (or directory) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root` (and the directories) to stable storage."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_file(os.path.join(dirpath, name))
        fsync_file(dirpath)


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
