"""Choosing the checkpoint to resume from: the newest one every rank finds intact.

Candidates are tried newest first. For each, every rank checks the marker and
every file's size (one stat per file), then hashes its share of the files
(`catalog.share_of`: dealt out by size, so each rank reads about 1/world of
the bytes and together they read every file once), and the ranks agree
(agreement.py): one rank's mismatch rejects the checkpoint for all, so every
rank ends with the same choice. Rank 0 warns about each newer checkpoint it
skipped, naming the file and what was wrong with it.

Hashing reads the files once before DeepSpeed loads them; the read fills the
page cache the load then reads from, so on a cold cache the check mostly moves
the disk read earlier rather than adding one (BENCHMARKS.md).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from train.checkpoint.agreement import agree_on_error

if TYPE_CHECKING:
    from train.checkpoint.storage import RunStorage
    from train.distributed import DistInfo


def newest_intact(
    storage: RunStorage, dist: DistInfo, before_step: int | None = None, checksums: bool = True
) -> Path | None:
    """Every rank: the local directory of the newest checkpoint all ranks found intact.

    Args:
        storage: the run (a remote checkpoint is downloaded before its checksums
            are checked, on the local copy).
        dist: this rank.
        before_step: consider only checkpoints of steps before this one.
        checksums: compare checksums too (off: sizes only, to measure the cost).
    """
    skipped: list[tuple[str, str]] = []
    chosen: Path | None = None
    for name in storage.candidates(before_step):
        reason = storage.verify(name)  # the marker and every size, at home
        local = None
        if reason is None:
            local = storage.fetch_checkpoint(name)
            if checksums:
                reason = storage.staged.verify(name, (dist.rank, dist.world_size))
        reason = agree_on_error(reason, dist)
        if reason is None:
            chosen = local
            break
        skipped.append((name, reason))
    if dist.is_main and skipped:
        instead = f"falling back to {chosen.name}" if chosen else "no intact checkpoint left"
        for name, reason in skipped:
            where = storage.checkpoints.files.describe(name)
            warnings.warn(f"skipping checkpoint {where}: {reason}; {instead}", stacklevel=3)
    return chosen
