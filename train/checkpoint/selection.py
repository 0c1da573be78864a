"""Choosing the checkpoint to resume from: the newest one every rank finds intact.

Candidates are tried newest first. For each, every rank checks the marker and
every file's size (one stat per file), then hashes its share of the files
(`catalog.share_of`: dealt out by size, so each rank reads about 1/world of
the bytes and together they read every file once), and the ranks agree
(agreement.py): one rank's mismatch rejects the checkpoint for all, so every
rank ends with the same choice. Rank 0 warns about each newer checkpoint it
skipped, naming the file and what was wrong with it.

Hashing reads the files once before DeepSpeed loads them; the read fills the
page cache the load then reads from, so it moves the disk read earlier rather
than adding one, but that read no longer overlaps the load's deserialization.
At start-up the Checkpointer therefore hashes in the background (`ShareCheck`)
while the Trainer builds its loaders and engine, and agrees on the result
before it loads anything (checkpointer.py; BENCHMARKS.md has the figures).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from train.checkpoint.agreement import agree_on_error
from train.checkpoint.catalog import Catalog, Share

if TYPE_CHECKING:
    from train.checkpoint.storage import RunStorage
    from train.distributed import DistInfo

Skipped = list[tuple[str, str]]  # (checkpoint name, why it was skipped)


def newest_intact(
    storage: RunStorage,
    dist: DistInfo,
    before_step: int | None = None,
    checksums: bool = True,
    skipped: Skipped | None = None,
) -> Path | None:
    """Every rank: the local directory of the newest checkpoint all ranks found intact.

    Args:
        storage: the run (a remote checkpoint is downloaded before its checksums
            are checked, on the local copy).
        dist: this rank.
        before_step: consider only checkpoints of steps before this one.
        checksums: compare checksums too (off: sizes only, checked later by a
            `ShareCheck`, or not at all, to measure the cost).
        skipped: newer checkpoints already rejected, warned about with the rest.
    """
    skipped = list(skipped or [])
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


class ShareCheck:
    """This rank's share of one checkpoint's checksums, hashed in a background thread.

    The thread only reads and hashes (reading releases the GIL; hashing holds it
    for about 1/20 of the time the disk takes); the ranks agree on the results
    in the main thread, where collectives belong.

    Args:
        catalog: the local checkpoints (the staging copy of a remote run).
        name: the checkpoint.
        share: (rank, world size).
    """

    def __init__(self, catalog: Catalog, name: str, share: Share):
        self.name = name
        self._reason: str | None = None
        self._thread = threading.Thread(
            target=self._run, args=(catalog, share), name="gobig-checksums", daemon=True
        )
        self._thread.start()

    def _run(self, catalog: Catalog, share: Share) -> None:
        try:
            self._reason = catalog.verify(self.name, share)
        except Exception as exn:  # noqa: BLE001  (a reason like any other: not intact)
            self._reason = f"checksum check failed: {exn}"

    def result(self) -> str | None:
        """Wait for the thread: None if this rank's share is intact, else why not."""
        self._thread.join()
        return self._reason
