"""The records of one save: pending (written or being written) and committed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.checkpoint.background import BackgroundWrite, FailedWrite


@dataclass
class SavedCheckpoint:
    """A committed checkpoint, for the metrics log and the callbacks."""

    path: Path
    step: int
    background: bool
    blocking_s: float  # how long training waited for it
    write_s: float  # how long its files took to write


@dataclass
class PendingCheckpoint:
    """A checkpoint whose files are written (or being written) but not yet committed."""

    path: Path
    meta: dict[str, Any]
    write: BackgroundWrite | FailedWrite | None  # None: written synchronously
    blocking_s: float  # time training waited for it so far
    error: str | None = None  # a synchronous write's failure, one line
    expected_bytes: int | None = None  # the previous checkpoint's size
