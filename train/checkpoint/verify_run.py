"""`gobig verify RUN_DIR`: every checkpoint of a run, and whether the newest can be resumed.

Each checkpoint is one of: intact (marked complete; every file has its recorded
size and checksum), incomplete (never marked complete: a save that did not
finish) or corrupt (a file missing, of the wrong size, or with the wrong
checksum: which one, and how). Every file is read, at the run's home (a path,
or a URI through pyarrow.fs). Imports no torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import error_message
from train.checkpoint.catalog import NOT_MARKED
from train.checkpoint.layout import CheckpointError
from train.checkpoint.storage import RunStorage
from train.checkpoint.write_errors import human_bytes

INTACT, INCOMPLETE, CORRUPT = "intact", "incomplete", "corrupt"


@dataclass
class CheckpointState:
    """One checkpoint as `gobig verify` found it."""

    name: str
    state: str  # INTACT, INCOMPLETE or CORRUPT
    detail: str


def inspect_run(spec: str | Path) -> list[CheckpointState]:
    """The state of every checkpoint of the run at `spec`, oldest first.

    Args:
        spec: the run directory, a path or a URI.
    """
    try:
        storage = RunStorage(spec)
        if not storage.is_remote and not Path(spec).is_dir():
            raise CheckpointError(f"{spec}: no such run directory")
        names = storage.list_checkpoints()
        config = storage.read_text("config.yaml")
    except (ValueError, OSError) as exn:  # a malformed URI, an unreachable store
        raise CheckpointError(f"{spec}: {error_message(exn)}") from exn
    if not names and config is None:
        raise CheckpointError(f"{spec}: not a gobig run directory (no config.yaml, no checkpoints)")
    catalog = storage.checkpoints
    states = []
    for name in names:
        reason = catalog.verify(name, share=(0, 1))
        if reason == NOT_MARKED:
            states.append(CheckpointState(name, INCOMPLETE, "not marked complete"))
        elif reason is not None:
            states.append(CheckpointState(name, CORRUPT, reason))
        else:
            record = catalog.marker(name) or {"files": {}, "checksums": {}}
            files, sums = record["files"], record["checksums"]
            checked = "sizes and checksums match"
            if len(sums) < len(files):  # an older marker: sizes only, where it has no checksum
                checked = f"sizes match; checksums recorded for {len(sums)} of them"
            size = human_bytes(sum(files.values()))
            states.append(CheckpointState(name, INTACT, f"{len(files)} files, {size}, {checked}"))
    return states


def verify_command(spec: str | Path) -> int:
    """Print every checkpoint's state; 0 if the newest is intact, else 1 (and which to use).

    Args:
        spec: the run directory, a path or a URI.
    """
    states = inspect_run(spec)
    print(f"{spec}: {len(states)} checkpoint(s)")
    for s in states:
        print(f"  {s.name}  {s.state:<10}  {s.detail}")
    if not states:
        print("gobig verify: no checkpoint yet: nothing to resume from")
        return 1
    newest = states[-1]
    if newest.state == INTACT:
        print(f"gobig verify: the newest checkpoint, {newest.name}, is intact")
        return 0
    fallback = next((s for s in reversed(states) if s.state == INTACT), None)
    instead = (
        f"resume from {fallback.name} instead (gobig resume falls back to it by itself)"
        if fallback
        else "no checkpoint is intact: the run can only start over"
    )
    print(f"gobig verify: the newest checkpoint, {newest.name}, is {newest.state}: {instead}")
    sys.stdout.flush()
    return 1
