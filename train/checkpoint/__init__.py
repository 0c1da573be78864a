"""A checkpoint's whole life, in one package.

    layout.py        what a checkpoint directory holds; names; CheckpointError
    files.py         the filesystem interface: LocalFiles and RemoteFiles (pyarrow.fs)
    checksum.py      xxh3_128 checksums: a file object that hashes what it writes
    catalog.py       list, verify (sizes, checksums), mark complete, newest, prune
    location.py      run directories by path or URI; a URI run's staging directory
    storage.py       RunStorage: a run's home and its local working copy
    disk.py          a rank's state file, flushing, read-ahead
    finite.py        finding inf/NaN in a state dict before it is written
    writer.py        CheckpointWriter: every file of a save, hashed, never raising
    write_errors.py  a failed write (a full disk above all) as one line; low-space warning
    agreement.py     ranks agreeing on a failure and its message
    background.py    asynchronous saves: capture DeepSpeed's writes, write in a fork
    selection.py     the checkpoint to resume from: the newest every rank finds intact
    pending.py       the records of a save: pending, committed
    verify_run.py    `gobig verify`: every checkpoint of a run and its state
    elastic.py       resume at another world size or ZeRO stage (universal checkpoints)
    weights.py       weights-only loading for every checkpoint file
    checkpointer.py  the Trainer's view: locate, restore, when to save, save, commit

The names below are the local-path conveniences the rest of gobig (and its
tests) use; they import no torch.
"""

from train.checkpoint.catalog import (
    list_checkpoints,
    mark_complete,
    newest_complete,
    prune,
    read_meta,
    verify,
)
from train.checkpoint.disk import fsync_tree, load_rank_state, save_rank_state
from train.checkpoint.layout import (
    CHECKPOINTS,
    ENGINE_TAG,
    MARKER,
    META,
    UNIVERSAL_TAG,
    CheckpointError,
    rank_file,
    step_dir,
)

__all__ = [
    "CHECKPOINTS",
    "ENGINE_TAG",
    "MARKER",
    "META",
    "UNIVERSAL_TAG",
    "CheckpointError",
    "fsync_tree",
    "list_checkpoints",
    "load_rank_state",
    "mark_complete",
    "newest_complete",
    "prune",
    "rank_file",
    "read_meta",
    "save_rank_state",
    "step_dir",
    "verify",
]
